//! The seam between the cgroup logic and the host: every read, write,
//! mkdir and rmdir goes through [`CgroupFs`], so tests can run the whole
//! placement against a fake tree without root.

use std::io::Write;
use std::path::Path;

pub trait CgroupFs {
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// Write to an existing file (never creates one: a missing cgroup file
    /// is a feature the host lacks).
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
    /// Create one directory; an existing one is fine.
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;
    fn rmdir(&self, path: &Path) -> std::io::Result<()>;
}

/// The real filesystem.
pub struct HostFs;

impl CgroupFs for HostFs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        // One write(2): cgroup files take a value per write.
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(value.as_bytes())
    }

    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
}
