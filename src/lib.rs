//! switchyard: an event-triggered workflow orchestrator in one binary.
//!
//! # Layout
//!
//! - [`spec`]: file formats (workflow, config): raw serde types, then
//!   validated, compiled types; every error with file and JSON path.
//! - [`expr`]: CEL conditions and `${…}` templates, parsed at load time.
//! - [`log`]: the sled log; the only code that touches sled.
//! - [`engine`]: the run state machine: pure, no I/O, no clock.
//! - [`runtime`]: the engine's I/O shell: the engine thread, group commit,
//!   attempts, recovery, offline changes.
//! - [`executors`]: one file per task kind.
//! - [`reactor`]: events against bindings: filter, params, dedup, submit.
//! - [`triggers`]: the adapters (amqp, file, webhook, cron).
//! - [`registry`]: the workflows and bindings being served, and their reload.
//! - [`daemon`]: `serve`: wiring, file watching, shutdown.
//! - [`metrics`]: the counters and gauges behind `/metrics`.
//! - [`api`]: the HTTP API; the only code that knows HTTP.
//! - [`cli`]: the command line.

pub mod amqp;
pub mod api;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod executors;
pub mod expr;
#[doc(hidden)]
pub mod fuzzing;
pub mod log;
pub mod metrics;
pub mod reactor;
pub mod registry;
pub mod remote;
pub mod runtime;
pub mod spec;
pub mod time;
pub mod tls;
pub mod triggers;
