//! Helpers shared by the benches (each includes this file as a module, and
//! uses what it needs of it).
#![allow(dead_code)]

/// A fresh data dir on the same disk as the project (not a tmpfs), under
/// `target/bench-data`.
pub fn data_dir(name: &str) -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .expect("temp dir")
}

/// The multi-threaded tokio runtime the benches run on (2 workers, as the
/// machine has 2 cores).
pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
