//! The one integration-test binary (one link on a 2-core machine).

#![allow(clippy::unwrap_used)]

mod util;

mod amqp;
mod amqps;
mod api;
mod bindings;
mod checks;
mod cli;
mod cloudevents;
mod daemon;
mod dashboard;
mod engine;
mod examples;
mod fuzz_corpora;
mod golden;
mod http;
mod observability;
mod properties;
mod runtime;
mod sql;
mod subworkflows;
mod triggers;
mod validation;
mod workers;
