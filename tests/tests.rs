//! The one integration-test binary (one link on a 2-core machine).

mod util;

mod cli;
mod engine;
mod runtime;
mod validation;
