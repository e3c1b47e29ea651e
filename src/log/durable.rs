//! Making a flush survive power loss, not only a crash of the process.
//!
//! sled 0.34's `flush` writes its log buffer and waits with
//! `sync_file_range`, which neither flushes the drive's write cache nor the
//! file's metadata (a grown file's size), and values too large for a log
//! segment go to files under `blobs/` that it never syncs at all. After
//! every flush we therefore `fdatasync` the log file (cache flush, size),
//! and when `blobs/` changed since the last flush, `syncfs` its filesystem
//! (the new blob files' data and their directory entries).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A directory's modification time this recent may hide a later change in
/// the same timestamp tick (1 s on ext3, ext4 with small inodes and some
/// NFS mounts; 2 s on FAT): it is not taken as seen, so flushes keep syncing
/// the filesystem until it is this old.
const TICK: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub(super) struct Durability {
    log_file: File,
    blobs: PathBuf,
    /// `blobs/`'s modification time at the last sync that covered it.
    blobs_synced: Mutex<Option<SystemTime>>,
    /// Filesystem syncs done for new blobs.
    blob_syncs: std::sync::atomic::AtomicU64,
}

impl Durability {
    /// For the sled database at `dir`; syncs the filesystem once, so the
    /// files sled created on open are durable too.
    pub(super) fn open(dir: &Path) -> std::io::Result<Self> {
        let log_file = File::open(dir.join("db"))?;
        let durability = Self {
            log_file,
            blobs: dir.join("blobs"),
            blobs_synced: Mutex::new(None),
            blob_syncs: std::sync::atomic::AtomicU64::new(0),
        };
        syncfs(&durability.log_file)?;
        Ok(durability)
    }

    /// After sled's flush: what it left to the kernel goes to the disk.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.log_file.sync_data()?;
        let modified = std::fs::metadata(&self.blobs)?.modified()?;
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced == Some(modified) {
            return Ok(());
        }
        syncfs(&File::open(&self.blobs)?)?;
        self.blob_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let settled = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age > TICK);
        *synced = settled.then_some(modified);
        Ok(())
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn syncfs(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `syncfs` only reads the descriptor, which `file` keeps open.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere: the file's own sync, which on most systems flushes the
/// filesystem's journal with it.
#[cfg(not(target_os = "linux"))]
fn syncfs(file: &File) -> std::io::Result<()> {
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::log::{Log, RecordBody};

    #[test]
    fn a_value_stored_as_a_blob_is_synced_with_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let synced = || {
            log.durability
                .blob_syncs
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let run = uuid::Uuid::now_v7();
        log.append(run, 1, RecordBody::RunStarted {}).unwrap();
        log.flush().unwrap();
        std::thread::sleep(super::TICK + std::time::Duration::from_millis(200));
        log.flush().unwrap();
        let before = synced();
        log.flush().unwrap();
        assert_eq!(
            synced(),
            before,
            "nothing new under blobs/: no filesystem sync"
        );
        // Larger than a sled segment can hold: written under blobs/.
        let big = "x".repeat(600 * 1024);
        log.append(run, 2, RecordBody::RunCancelRequested { reason: big })
            .unwrap();
        log.flush().unwrap();
        assert!(
            std::fs::read_dir(dir.path().join("log/blobs"))
                .unwrap()
                .count()
                > 0,
            "the value went to a blob"
        );
        assert!(synced() > before, "the new blob was synced");
        assert_eq!(log.run_history(run).unwrap().len(), 2);
    }
}
