//! The private Docker config a run writes for crane (the cache's credentials under the IP
//! literal copies reach it by), and what becomes of it when the run dies.
//!
//! crane reads credentials from a directory (`$DOCKER_CONFIG/config.json`), so the file
//! lives in a per-run directory `$TMPDIR/image-sync-auth-XXXXXX` (mode 0700, the file
//! 0600). The run holds an exclusive `flock` on `owner.lock` in it for as long as it lives;
//! the kernel releases it when the process dies, however it dies. The directory is removed:
//! - when the run ends normally (the guard drops);
//! - on a second SIGTERM/SIGINT, just before the process exits ([`remove_all_now`]);
//! - after SIGKILL (or a crash), by the next run's start ([`remove_stale`]): a directory
//!   whose lock nobody holds (and that is older than [`SETTLE`]) belongs to a dead run.
//!
//! So after a SIGKILL the file remains until the next run starts on the same `$TMPDIR`
//! (in a Kubernetes Job, a new pod has a fresh `/tmp`: it goes with the old pod).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Name prefix of the per-run directories.
pub const PREFIX: &str = "image-sync-auth-";

/// The lock file a live run holds.
const LOCK: &str = "owner.lock";

/// A directory younger than this is left alone even when unlocked: its run may be
/// between creating the lock file and locking it.
const SETTLE: Duration = Duration::from_secs(2);

/// A directory without a lock file (an older image-sync, or one killed while creating
/// it) is removed once it is this old.
const UNLOCKED_AGE: Duration = Duration::from_secs(60);

/// The directories this process created and has not removed yet.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A per-run directory holding `config.json`; removed when dropped.
pub struct PrivateConfig {
    dir: tempfile::TempDir,
    /// Held (locked) for the life of the run; closed after the directory is removed.
    _lock: File,
}

impl PrivateConfig {
    /// Writes `document` as `config.json` in a fresh directory under `parent`.
    pub fn write(parent: &Path, document: &[u8]) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(parent)?;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join(LOCK))?;
        lock.try_lock().map_err(std::io::Error::other)?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(dir.path().to_owned());
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("config.json"))?;
        file.write_all(document)?;
        Ok(Self { dir, _lock: lock })
    }

    /// The directory (`DOCKER_CONFIG` for crane).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateConfig {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|path| path != self.dir.path());
        }
    }
}

/// Removes every private config this process still has (the process exits at once, so
/// no guard will drop).
pub fn remove_all_now() {
    let live = LIVE.lock().map(|live| live.clone()).unwrap_or_default();
    for path in live {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Removes the directories under `parent` that dead runs left behind (see the module
/// documentation). Returns how many were removed. Directories of live runs, of other
/// users (unreadable) and anything else are left alone.
pub fn remove_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let now = SystemTime::now();
    let age = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .unwrap_or_default()
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX)
            || !entry.file_type().is_ok_and(|kind| kind.is_dir())
        {
            continue;
        }
        let path = entry.path();
        let dead = match File::open(path.join(LOCK)) {
            // Whoever held it is gone: the lock is free.
            Ok(lock) => age(&path) >= SETTLE && lock.try_lock().is_ok(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => age(&path) >= UNLOCKED_AGE,
            Err(_) => false,
        };
        if dead && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed the private credentials directory a killed run left");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backdate(path: &Path, by: Duration) {
        let when = SystemTime::now() - by;
        File::open(path)
            .and_then(|dir| dir.set_modified(when))
            .expect("set mtime");
    }

    #[test]
    fn a_live_run_keeps_its_directory_and_a_dead_one_loses_it() {
        let parent = tempfile::tempdir().expect("dir");
        let live = PrivateConfig::write(parent.path(), b"{}").expect("written");
        backdate(live.path(), Duration::from_secs(600));
        // A run killed with SIGKILL: its directory and lock file remain, the lock is free.
        let dead = parent.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&dead).expect("dir");
        std::fs::write(dead.join(LOCK), b"").expect("lock");
        std::fs::write(dead.join("config.json"), b"{}").expect("config");
        backdate(&dead, Duration::from_secs(600));
        // One that is just being created, not yet locked.
        let young = parent.path().join(format!("{PREFIX}young"));
        std::fs::create_dir(&young).expect("dir");
        std::fs::write(young.join(LOCK), b"").expect("lock");
        // Someone else's file with the prefix.
        let file = parent.path().join(format!("{PREFIX}file"));
        std::fs::write(&file, b"").expect("file");

        assert_eq!(remove_stale(parent.path()), 1);
        assert!(!dead.exists());
        assert!(live.path().join("config.json").exists(), "still locked");
        assert!(young.exists() && file.exists());

        let kept = live.path().to_owned();
        drop(live);
        assert!(!kept.exists(), "removed with the guard");
    }
}
