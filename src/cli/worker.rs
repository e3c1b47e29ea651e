//! `switchyard worker`: runs remote tasks' jobs (`remote::worker`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// A task queue to take jobs from (a task's `queue`); repeat for several.
    #[arg(long = "queue", required = true, value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Jobs run at once (and held from the broker at most).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: usize,
    /// Broker URL (default: the config's `amqp.url`, else env `AMQP_URL`,
    /// else amqp://guest:guest@127.0.0.1:5672/%2f); `amqp.tls` applies.
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// Where attempts' process records and scratch files go (one
    /// subdirectory per worker; what a dead worker left running is killed
    /// by the next worker started here).
    #[arg(long, default_value = ".switchyard-worker", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// On SIGTERM, how long running attempts may take to finish before they
    /// are stopped and handed back to the daemon (humantime).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub grace: String,
}

pub fn main(config_path: &Path, args: &WorkerArgs) -> ExitCode {
    let grace: Duration = match crate::spec::parse_duration(&args.grace, false) {
        Ok(grace) => grace,
        Err(e) => return super::fail(format!("--grace: {e}")),
    };
    // The project's config is optional here: a worker machine may have none.
    let config = if config_path.exists() {
        match super::load_config(config_path) {
            Ok(config) => Some(config),
            Err(e) => return super::fail(e),
        }
    } else {
        None
    };
    let endpoint = match (&args.amqp, &config) {
        (Some(url), Some(config)) => {
            let mut config = config.clone();
            config.amqp.get_or_insert_with(Default::default).url = Some(url.clone());
            crate::amqp::Endpoint::from_config(&config)
        }
        (Some(url), None) => crate::amqp::Endpoint::new(url),
        (None, Some(config)) => crate::amqp::Endpoint::from_config(config),
        (None, None) => crate::amqp::Endpoint::new(
            &std::env::var("AMQP_URL").unwrap_or_else(|_| crate::amqp::DEFAULT_URL.into()),
        ),
    };
    let endpoint = match endpoint {
        Ok(endpoint) => endpoint,
        Err(e) => return super::fail(format!("--amqp: {e}")),
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(t) => t,
        Err(e) => return super::fail(format!("cannot start the async runtime: {e}")),
    };
    let options = crate::remote::worker::WorkerOptions {
        endpoint,
        queues: args.queues.clone(),
        concurrency: args.concurrency,
        data_dir: args.data_dir.clone(),
        grace,
    };
    tokio.block_on(async move {
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            crate::daemon::shutdown_signal().await;
            tracing::info!("Stopping: no new jobs; running attempts may finish.");
            signal.cancel();
        });
        match crate::remote::worker::run(options, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => super::fail(e),
        }
    })
}
