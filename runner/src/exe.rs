//! The helper binary is executed from a sealed in-memory copy.
//!
//! This is the defence against CVE-2019-5736 (runc): a process in the
//! container that opens `/proc/<helper pid>/exe` gets the memfd, which is
//! sealed against writes, so it cannot overwrite the kiln binary on the host.
//! (The helper is also made non-dumpable before any container process can see
//! it, so `/proc/<pid>/exe` is not even openable without CAP_SYS_PTRACE.)
//! The copy is made once per helper path and process and reused.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::RunError;

/// A sealed executable copy of a helper binary.
#[derive(Debug)]
pub struct SealedExe {
    fd: OwnedFd,
}

impl SealedExe {
    /// The path to `execve`: `/proc/self/fd/<n>`. The fd is close-on-exec,
    /// which `execve` of an ELF binary through this path tolerates.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

type Key = (PathBuf, u64, u64, i64, i64);
static CACHE: Mutex<Vec<(Key, Arc<SealedExe>)>> = Mutex::new(Vec::new());

/// The sealed copy of `path`, made on first use and again when the file
/// changes (inode, size or mtime).
pub fn sealed(path: &Path) -> Result<Arc<SealedExe>, RunError> {
    let ctx = || format!("helper binary {}", path.display());
    let mut src = File::open(path).map_err(|e| RunError::io(ctx(), e))?;
    let md = src.metadata().map_err(|e| RunError::io(ctx(), e))?;
    let key: Key = (
        path.to_path_buf(),
        md.dev(),
        md.ino(),
        md.mtime(),
        md.mtime_nsec(),
    );
    let mut cache = CACHE
        .lock()
        .map_err(|_| RunError::Helper("sealed-exe cache poisoned".into()))?;
    if let Some((_, e)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(e.clone());
    }
    // MFD_EXEC keeps the copy executable where vm.memfd_noexec=1 would
    // otherwise make it noexec; kernels before 6.3 reject the flag.
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let memfd = rustix::fs::memfd_create("kiln-runner", base | MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create("kiln-runner", base))
        .map_err(|e| RunError::io("memfd_create", e.into()))?;
    let mut dst = File::from(memfd);
    std::io::copy(&mut src, &mut dst).map_err(|e| RunError::io(ctx(), e))?;
    rustix::fs::fcntl_add_seals(
        &dst,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
    .map_err(|e| RunError::io("sealing the helper copy", e.into()))?;
    // Keep it away from 0..=9: the spawn code dup2()s onto 3.
    let fd = rustix::io::fcntl_dupfd_cloexec(dst.as_fd(), 10)
        .map_err(|e| RunError::io("dup of the helper copy", e.into()))?;
    let e = Arc::new(SealedExe { fd });
    cache.retain(|(k, _)| k.0 != key.0);
    cache.push((key, e.clone()));
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_copy_is_sealed_against_writes_and_cached() {
        let me = std::env::current_exe().unwrap();
        let a = sealed(&me).unwrap();
        let b = sealed(&me).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one copy per binary");
        let orig = std::fs::read(&me).unwrap();
        assert_eq!(std::fs::read(a.exec_path()).unwrap(), orig);
        // Reopening the memfd for writing works, writing does not.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(a.exec_path())
            .unwrap();
        let e = f.write_all(b"pwned").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        assert!(f.set_len(1).is_err());
        assert_eq!(std::fs::read(a.exec_path()).unwrap(), orig);
    }
}
