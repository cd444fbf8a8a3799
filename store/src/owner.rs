//! Process ownership of temporary state.
//!
//! Each open [`crate::Store`] holds an exclusive `flock` on `tmp/<owner>.lock`
//! for its lifetime, and names everything it creates in `ingest/` and `tmp/`
//! `<owner>.<...>`. The kernel drops the lock when the process dies (also on
//! SIGKILL), so a sweeper can tell leftovers of dead processes from work in
//! progress without guessing from pids or timestamps.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

pub(crate) const LOCK_SUFFIX: &str = ".lock";

pub(crate) struct Owner {
    pub id: String,
    _lock: File,
    counter: AtomicU64,
}

fn new_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    crate::digest::sha256_digest(seed.as_bytes()).hex()[..16].to_string()
}

impl Owner {
    /// Creates and locks `tmp_dir/<id>.lock`. The file appears under its
    /// final name already locked (O_TMPFILE + linkat), so a sweeper never
    /// sees an unlocked lock file of a live owner.
    pub fn acquire(tmp_dir: &Path) -> io::Result<Owner> {
        loop {
            let id = new_id();
            let path = tmp_dir.join(format!("{id}{LOCK_SUFFIX}"));
            let file = match rustix::fs::open(
                tmp_dir,
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    rustix::fs::flock(fd.as_fd(), FlockOperation::LockExclusive)?;
                    let proc_path =
                        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                    match rustix::fs::linkat(
                        rustix::fs::CWD,
                        proc_path.as_str(),
                        rustix::fs::CWD,
                        &path,
                        rustix::fs::AtFlags::SYMLINK_FOLLOW,
                    ) {
                        Ok(()) => File::from(fd),
                        Err(Errno::EXIST) => continue,
                        // No /proc or a filesystem without O_TMPFILE support
                        // for linkat: fall back to a plain create below.
                        Err(_) => Owner::create_plain(&path)?,
                    }
                }
                Err(_) => Owner::create_plain(&path)?,
            };
            return Ok(Owner {
                id,
                _lock: file,
                counter: AtomicU64::new(0),
            });
        }
    }

    fn create_plain(path: &Path) -> io::Result<File> {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        rustix::fs::flock(f.as_fd(), FlockOperation::LockExclusive)?;
        Ok(f)
    }

    /// A fresh name `<owner>.<kind>-<n>` for a temporary entry.
    pub fn temp_name(&self, kind: &str) -> String {
        format!(
            "{}.{}-{}",
            self.id,
            kind,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Liveness of owners, memoised for one sweep.
#[derive(Default)]
pub(crate) struct Liveness {
    seen: HashMap<String, bool>,
    /// Locks taken on dead owners' files, held until their entries are gone.
    held: Vec<(PathBuf, File)>,
}

impl Liveness {
    /// Whether the owner `id` (lock files in `tmp_dir`) is alive.
    pub fn alive(&mut self, tmp_dir: &Path, id: &str) -> bool {
        if let Some(&a) = self.seen.get(id) {
            return a;
        }
        let path = tmp_dir.join(format!("{id}{LOCK_SUFFIX}"));
        let alive = match File::open(&path) {
            Err(_) => false,
            Ok(f) => match rustix::fs::flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive) {
                Err(_) => true,
                Ok(()) => {
                    self.held.push((path, f));
                    false
                }
            },
        };
        self.seen.insert(id.to_string(), alive);
        alive
    }

    /// Removes the lock files of the dead owners found (after their entries).
    pub fn remove_dead_locks(self) -> usize {
        let n = self.held.len();
        for (p, _f) in self.held {
            let _ = fs::remove_file(p);
        }
        n
    }
}

/// The owner id of a temporary entry name (`<owner>.<...>`).
pub(crate) fn owner_of(name: &str) -> Option<&str> {
    let (id, _) = name.split_once('.')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}
