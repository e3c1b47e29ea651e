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

/// Runs a Celery side-by-side script of `benches/` (it prints one JSON line
/// last); `None` when no python with celery is found (`CELERY_PYTHON`,
/// else `python3`) or the script fails.
pub async fn celery(script: &str) -> Option<serde_json::Value> {
    let python = std::env::var("CELERY_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_celery = tokio::process::Command::new(&python)
        .args(["-c", "import celery"])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !has_celery {
        return None;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(script);
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "  Celery bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last()?).ok()
}
