//! The container's filesystem: scratch layout on the host, the overlay
//! rootfs, the system mounts, and mount targets resolved inside the root.
//!
//! Every mount is made with the new mount API (`fsopen`/`fsmount`/
//! `open_tree` + `move_mount`) onto an `O_PATH` fd of the target opened with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink in the image can never send a
//! mount onto the host. Targets of the kernel filesystems (`/proc`, `/sys`,
//! `/dev`) that are symlinks in the image are refused, like runc does.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};

use crate::proto::Job;
use crate::{MountKind, NetworkMode};

/// Where things live in a container's scratch dir. Everything but a
/// scratch upper/work sits under `ns`, on a tmpfs mounted in the
/// container's mount namespace only: nothing of it touches the disk or has
/// to be deleted afterwards.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Mount point of the private tmpfs.
    pub ns: PathBuf,
    /// Bottom-most lower holding empty mount points the image lacks.
    pub stub: PathBuf,
    /// Top-most lower (moby's "init layer") for the mount points an opaque
    /// directory or a whiteout in the image hides from `stub`.
    pub over: PathBuf,
    /// Generated hosts, hostname, resolv.conf.
    pub etc: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Mount point of the overlay (in the container's mount namespace only).
    pub rootfs: PathBuf,
}

fn err(what: impl std::fmt::Display, e: impl Into<io::Error>) -> String {
    format!("{what}: {}", e.into())
}

/// Relative, `..`-free form of an absolute container path, or an error.
pub(crate) fn clean_target(target: &str) -> Result<PathBuf, String> {
    if !target.starts_with('/') {
        return Err(format!("mount target {target:?} is not an absolute path"));
    }
    if target.contains('\0') {
        return Err(format!("mount target {target:?} contains NUL"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(target).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(format!("mount target {target:?} contains '..'"));
            }
            Component::Prefix(_) => return Err(format!("bad mount target {target:?}")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("cannot mount over the container root".into());
    }
    Ok(out)
}

/// Mount targets we may need stubs for: (relative path, is a file).
pub(crate) fn wanted_targets(job: &Job) -> Result<Vec<(PathBuf, bool)>, String> {
    let mut t = vec![
        (PathBuf::from("proc"), false),
        (PathBuf::from("sys"), false),
        (PathBuf::from("dev"), false),
        (PathBuf::from("etc/hosts"), true),
        (PathBuf::from("etc/hostname"), true),
        (PathBuf::from("etc/resolv.conf"), true),
    ];
    for m in &job.spec.mounts {
        let is_file = match &m.kind {
            // Anything but a directory (a file, a socket) is mounted on
            // a file.
            MountKind::Bind { source, .. } => !fs::symlink_metadata(source)
                .map_err(|e| err(format!("bind source {}", source.display()), e))?
                .is_dir(),
            MountKind::Tmpfs { .. } | MountKind::Volume { .. } => false,
        };
        t.push((clean_target(&m.target)?, is_file));
    }
    Ok(t)
}

fn create_stub(stub: &Path, rel: &Path, is_file: bool) -> Result<(), String> {
    let p = stub.join(rel);
    if is_file {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| err(parent.display(), e))?;
        }
        if fs::symlink_metadata(&p).is_err() {
            fs::write(&p, b"").map_err(|e| err(p.display(), e))?;
        }
    } else {
        fs::create_dir_all(&p).map_err(|e| err(p.display(), e))?;
    }
    Ok(())
}

/// Docker's default /etc/hosts for a container with its own network.
fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// The host's resolv.conf; for a container with its own network, nameservers
/// on the host's loopback are useless and dropped (Docker's rule), with
/// Google DNS as the fallback. `forwarder`: the network stack's own DNS
/// forwarder, which replaces every nameserver (slirp4netns).
pub(crate) fn resolv_conf(host: &str, network: NetworkMode, forwarder: Option<&str>) -> String {
    if network == NetworkMode::Host {
        return host.to_string();
    }
    let mut out = String::new();
    let mut servers = 0;
    if let Some(f) = forwarder {
        out.push_str(&format!("nameserver {f}\n"));
        servers += 1;
    }
    for line in host.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("nameserver") {
            let ip = f.next().unwrap_or("");
            if forwarder.is_some() || ip.starts_with("127.") || ip == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// Where a job's scratch things are (pure).
pub(crate) fn layout_of(job: &Job) -> Layout {
    let s = &job.scratch;
    Layout {
        ns: s.join("ns"),
        stub: s.join("ns/stub"),
        over: s.join("ns/over"),
        etc: s.join("ns/etc"),
        upper: job
            .spec
            .rootfs
            .upper
            .as_ref()
            .map(|u| u.0.clone())
            .unwrap_or_else(|| s.join("upper")),
        work: job
            .spec
            .rootfs
            .upper
            .as_ref()
            .map(|u| u.1.clone())
            .unwrap_or_else(|| s.join("work")),
        rootfs: s.join("ns/rootfs"),
    }
}

/// Make the scratch layout on the host side (before any namespace exists).
/// On the host side: the tmpfs mount point, and the scratch upper/work
/// when the spec has none.
pub(crate) fn prepare_host(job: &Job) -> Result<Layout, String> {
    let layout = layout_of(job);
    for d in [&layout.ns, &layout.upper, &layout.work] {
        fs::create_dir_all(d).map_err(|e| err(d.display(), e))?;
    }
    Ok(layout)
}

/// In the new mount namespace (after `/` was made rslave): a small tmpfs
/// over `layout.ns`.
pub(crate) fn mount_scratch_tmpfs(layout: &Layout) -> Result<(), String> {
    let t = new_fs(
        "tmpfs",
        &[("mode", "0700"), ("size", "16m")],
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    move_mount(
        &t,
        "",
        CWD,
        &layout.ns,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| err(format!("mounting a tmpfs at {}", layout.ns.display()), e))
}

/// Stubs, generated /etc files and the rootfs mount point, under `ns`.
pub(crate) fn prepare(job: &Job, layout: &Layout) -> Result<(), String> {
    for d in [&layout.stub, &layout.etc, &layout.rootfs] {
        fs::create_dir_all(d).map_err(|e| err(d.display(), e))?;
    }
    for (rel, is_file) in wanted_targets(job)? {
        create_stub(&layout.stub, &rel, is_file)?;
    }
    let host_hosts = if job.spec.network == NetworkMode::Host {
        fs::read_to_string("/etc/hosts").ok()
    } else {
        None
    };
    let files = [
        (
            "hosts",
            host_hosts.unwrap_or_else(|| hosts_file(&job.hostname)),
        ),
        ("hostname", format!("{}\n", job.hostname)),
        (
            "resolv.conf",
            resolv_conf(
                &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                job.spec.network,
                job.net.stack.as_ref().and_then(|s| s.kind.dns()),
            ),
        ),
    ];
    for (name, content) in files {
        let p = layout.etc.join(name);
        fs::write(&p, content).map_err(|e| err(p.display(), e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
            .map_err(|e| err(p.display(), e))?;
    }
    Ok(())
}

/// Resolve `path` inside `root` the way the container will see it (absolute
/// symlinks and `..` stay inside `root`), touching only `root`'s tree.
/// Returns the symlink-free relative path and whether it exists.
pub(crate) fn secure_join(root: &Path, path: &Path) -> io::Result<(PathBuf, bool)> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<PathBuf> = path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        let comp = c.as_os_str();
        if comp == "/" || comp == "." || comp.is_empty() {
            continue;
        }
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let cand = resolved.join(comp);
        match fs::symlink_metadata(root.join(&cand)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                resolved = cand;
                for rest in pending {
                    let r = rest.as_os_str();
                    if r == ".." {
                        resolved.pop();
                    } else if r != "." && r != "/" && !r.is_empty() {
                        resolved.push(r);
                    }
                }
                return Ok((resolved, false));
            }
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(root.join(&cand))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    pending.push_front(PathBuf::from(c.as_os_str()));
                }
            }
            Ok(_) => resolved = cand,
        }
    }
    Ok((resolved, true))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` (not wrapped by rustix yet).
fn mount_setattr(fd: BorrowedFd<'_>, path: &str, flags: u32, set: u64) -> io::Result<()> {
    let p = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid fd, NUL-terminated path, attr outlives the call, size matches.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            p.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const AT_RECURSIVE: u32 = 0x8000;

/// Make a detached mount (e.g. from `open_tree`) read-only, nosuid, nodev.
pub(crate) fn set_readonly(mnt: BorrowedFd<'_>) -> io::Result<()> {
    mount_setattr(
        mnt,
        "",
        libc::AT_EMPTY_PATH as u32,
        (MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV)
            .bits() as u64,
    )
}

/// A new /proc refused: in a container whose /proc has masked paths (the
/// default of Docker and Kubernetes), the kernel refuses a fresh procfs to
/// anything but the real root; say which option lifts the masks.
fn proc_refused(e: String) -> String {
    if !e.contains("Operation not permitted") {
        return e;
    }
    format!(
        "{e}: the kernel refuses a new /proc where the one above has masked paths, as \
         in a container by default: run that container with --security-opt \
         systempaths=unconfined (Kubernetes: securityContext.procMount: Unmasked)"
    )
}

/// Set (in PID 1, single-threaded) when the kernel refused the overlay
/// mount itself, rather than something around it: the caller may retry
/// with a copied root.
static OVERLAY_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn overlay_was_refused() -> bool {
    OVERLAY_REFUSED.load(std::sync::atomic::Ordering::SeqCst)
}

fn refused(e: String) -> String {
    OVERLAY_REFUSED.store(true, std::sync::atomic::Ordering::SeqCst);
    crate::rootless_fs::overlay_refused(e)
}

/// An upper dir on overlayfs (kiln's store inside a container's own root)
/// is refused by the kernel: say where the store must be.
fn upper_refused(e: String, upper: &Path) -> String {
    OVERLAY_REFUSED.store(true, std::sync::atomic::Ordering::SeqCst);
    const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
    let on_overlay = rustix::fs::statfs(upper).is_ok_and(|s| s.f_type == OVERLAYFS_MAGIC);
    if !on_overlay {
        return e;
    }
    format!(
        "{e}: kiln's store is on an overlay filesystem (a container's own root), which \
         cannot hold an overlay's upper dir: put the store on a volume or tmpfs \
         (docker run -v kiln-data:$HOME/.local/share/kiln, or --root DIR on one)"
    )
}

fn new_fs(fstype: &str, opts: &[(&str, &str)], attrs: MountAttrFlags) -> Result<OwnedFd, String> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| err(format!("fsopen {fstype}"), e))?;
    for (k, v) in opts {
        fsconfig_set_string(&fs, *k, *v).map_err(|e| err(format!("{fstype} option {k}={v}"), e))?;
    }
    fsconfig_create(&fs).map_err(|e| err(format!("creating {fstype}"), e))?;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| err(format!("fsmount {fstype}"), e))
}

/// `O_PATH` fd of `rel` inside `root`, resolved in the root. With
/// `follow == false` the last component must not be a symlink.
fn open_in_root(root: BorrowedFd<'_>, rel: &Path, follow: bool) -> Result<OwnedFd, String> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::openat2(
        root,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| err(format!("mount target /{}", rel.display()), e))?;
    if !follow {
        let st = rustix::fs::fstat(&fd).map_err(|e| err(format!("/{}", rel.display()), e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(format!(
                "/{} is a symlink in the image; refusing to mount over it",
                rel.display()
            ));
        }
    }
    Ok(fd)
}

fn attach(mnt: &OwnedFd, target: &OwnedFd, what: &str) -> Result<(), String> {
    move_mount(
        mnt,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| err(format!("mounting {what}"), e))
}

fn mount_at(root: BorrowedFd<'_>, rel: &str, follow: bool, mnt: &OwnedFd) -> Result<(), String> {
    let t = open_in_root(root, Path::new(rel), follow)?;
    attach(mnt, &t, &format!("/{rel}"))
}

/// Mount the overlay rootfs at `layout.rootfs`; with `over`, the
/// `layout.over` stubs sit above the image's layers.
fn mount_overlay(job: &Job, layout: &Layout, over: bool) -> Result<OwnedFd, String> {
    let mut lowers: Vec<&Path> = Vec::new();
    if over {
        lowers.push(&layout.over);
    }
    lowers.extend(job.spec.rootfs.lowers.iter().map(PathBuf::as_path));
    lowers.push(&layout.stub);
    drop_repeated_lowers(&mut lowers);
    if job.legacy_overlay {
        return mount_overlay_legacy(job, layout, &lowers);
    }
    let fs = match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        // Before Linux 5.2.
        Err(rustix::io::Errno::NOSYS) => return mount_overlay_legacy(job, layout, &lowers),
        Err(e) => return Err(refused(err("fsopen overlay", e))),
    };
    // `lowerdir+` arrived in Linux 6.8; older kernels reject the key.
    if let Some(first) = lowers.first() {
        if first.as_os_str().len() < 250 {
            match fsconfig_set_string(&fs, "lowerdir+", *first) {
                Err(rustix::io::Errno::INVAL) => return mount_overlay_legacy(job, layout, &lowers),
                Err(e) => return Err(err(format!("overlay lowerdir+ {}", first.display()), e)),
                Ok(()) => {}
            }
        }
    }
    let set = |k: &str, v: &str| {
        fsconfig_set_string(&fs, k, v).map_err(|e| err(format!("overlay option {k}={v}"), e))
    };
    // One option per layer: no limit on the number of layers, no escaping
    // of ':' or ','. fsconfig strings are limited to 256 bytes, so longer
    // paths go through an O_PATH fd as /proc/self/fd/N.
    let mut held = Vec::new();
    let mut set_dir = |key: &str, p: &Path| -> Result<(), String> {
        let ctx = || format!("overlay {key} {}", p.display());
        if p.as_os_str().len() < 250 {
            return fsconfig_set_string(&fs, key, p).map_err(|e| err(ctx(), e));
        }
        let fd = rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(ctx(), e))?;
        let short = format!("/proc/self/fd/{}", fd.as_raw_fd());
        held.push(fd);
        fsconfig_set_string(&fs, key, short.as_str()).map_err(|e| err(ctx(), e))
    };
    for (i, l) in lowers.iter().enumerate() {
        if i == 0 && l.as_os_str().len() < 250 {
            continue; // set above
        }
        set_dir("lowerdir+", l)?;
    }
    set_dir("upperdir", &layout.upper).map_err(|e| upper_refused(e, &layout.upper))?;
    set_dir("workdir", &layout.work)?;
    // The upper dir must stay a plain diff (and, rootless, `userxattr`).
    for (k, v) in crate::rootless_fs::overlay_options() {
        if v.is_empty() {
            rustix::mount::fsconfig_set_flag(&fs, *k)
                .map_err(|e| err(format!("overlay option {k}"), e))?;
        } else {
            set(k, v)?;
        }
    }
    fsconfig_create(&fs).map_err(|e| refused(err("creating the overlay", e)))?;
    drop(held);
    let attrs = if job.spec.readonly_rootfs {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| err("fsmount overlay", e))?;
    attach_root(&mnt, layout)?;
    Ok(mnt)
}

/// A detached mount, attached as the container's root.
fn attach_root(mnt: &OwnedFd, layout: &Layout) -> Result<(), String> {
    move_mount(
        mnt,
        "",
        CWD,
        &layout.rootfs,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| {
        err(
            format!("mounting the rootfs at {}", layout.rootfs.display()),
            e,
        )
    })
}

/// overlayfs refuses a lower dir named twice ("overlapping layers",
/// ELOOP), and an image may hold one layer twice (two steps that each left
/// an empty diff, or wrote the same bytes). Only the top-most copy shows in
/// the merged tree, so the lower copies are dropped.
fn drop_repeated_lowers(lowers: &mut Vec<&Path>) {
    let mut seen = std::collections::HashSet::new();
    lowers.retain(|p| seen.insert(*p));
}

/// mount(2) for kernels without `fsopen` or `lowerdir+`. Every dir is named
/// `/proc/self/fd/N`: no ':' or ',' to escape, and the option string stays
/// below the one-page limit for a couple of hundred layers.
fn mount_overlay_legacy(job: &Job, layout: &Layout, lowers: &[&Path]) -> Result<OwnedFd, String> {
    let mut held = Vec::new();
    let mut name = |p: &Path| -> Result<String, String> {
        let fd = rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(format!("overlay dir {}", p.display()), e))?;
        let n = format!("/proc/self/fd/{}", fd.as_raw_fd());
        held.push(fd);
        Ok(n)
    };
    let lower = lowers
        .iter()
        .map(|l| name(l))
        .collect::<Result<Vec<_>, _>>()?
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={},{}",
        name(&layout.upper)?,
        name(&layout.work)?,
        crate::rootless_fs::overlay_options_legacy()
    );
    // The kernel copies at most one page of options.
    if data.len() >= 4096 {
        return Err(format!(
            "{} layers are too many for this kernel's overlay mount options (Linux 6.8 has no limit)",
            lowers.len()
        ));
    }
    let data = CString::new(data).map_err(|_| "NUL in overlay options".to_string())?;
    let flags = if job.spec.readonly_rootfs {
        rustix::mount::MountFlags::RDONLY
    } else {
        rustix::mount::MountFlags::empty()
    };
    rustix::mount::mount("overlay", &layout.rootfs, "overlay", flags, data.as_c_str())
        .map_err(|e| {
            err(
                format!("mounting the overlay at {}", layout.rootfs.display()),
                e,
            )
        })
        .map_err(refused)?;
    drop(held);
    rustix::fs::open(
        &layout.rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(layout.rootfs.display(), e))
}

/// A detached copy of the bind source's mount tree. The source is opened
/// `O_PATH | O_NOFOLLOW` and the copy made from that descriptor, so a
/// source that is a symlink is refused rather than followed by the kernel
/// to wherever it points on the host.
pub(crate) fn clone_bind_source(source: &Path) -> Result<OwnedFd, String> {
    let what = || format!("bind source {}", source.display());
    let fd = rustix::fs::open(
        source,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(what(), e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| err(what(), e))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(format!(
            "{} is a symlink; refusing to follow it on the host",
            what()
        ));
    }
    clone_tree(&fd).map_err(|e| err(what(), e))
}

/// A detached recursive copy of the mount tree at `fd`.
fn clone_tree(fd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    open_tree(
        fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
}

/// Mount the overlay so that every mount target exists in it. Targets the
/// image lacks (often behind a symlink, e.g. /etc/resolv.conf ->
/// ../run/resolv.conf) get a stub in the bottom lower; those that a layer
/// still hides (an opaque /etc, a whiteout) get one in a lower above the
/// image, as Docker's init layer does. Each round mounts the overlay again;
/// the upper dir is never written.
fn mount_rootfs_with_targets(job: &Job, layout: &Layout) -> Result<OwnedFd, String> {
    if let Some(copy) = &job.copied_root {
        return mount_copied_root(job, layout, copy);
    }
    let targets = wanted_targets(job)?;
    let mut root = mount_overlay(job, layout, false)?;
    let mut missing = missing_targets(&layout.rootfs, &targets)?;
    for over in [false, true] {
        if missing.is_empty() {
            break;
        }
        if over {
            // Taken from the mounted view, before it goes: the stubs' parent
            // directories must look (and be copied up) like the image's own.
            let attrs = parent_attrs(&layout.rootfs, &missing);
            for (rel, is_file) in &missing {
                create_stub(&layout.over, rel, *is_file)?;
            }
            apply_attrs(&layout.over, &attrs)?;
        } else {
            for (rel, is_file) in &missing {
                create_stub(&layout.stub, rel, *is_file)?;
            }
        }
        drop(root);
        rustix::mount::unmount(&layout.rootfs, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| err("unmounting the rootfs", e))?;
        root = mount_overlay(job, layout, over)?;
        let mut still = Vec::new();
        for (rel, is_file) in missing {
            let (_, exists) = secure_join(&layout.rootfs, &rel)
                .map_err(|e| err(format!("/{}", rel.display()), e))?;
            if !exists {
                still.push((rel, is_file));
            }
        }
        missing = still;
    }
    if let Some((rel, _)) = missing.first() {
        return Err(format!(
            "cannot create mount point /{}: a file in the image is in its way",
            rel.display()
        ));
    }
    Ok(root)
}

/// The `targets` (from [`wanted_targets`]) that `root` lacks, resolved
/// inside it, with whether each is a file. `/proc`, `/sys` and `/dev`
/// must not be symlinks in the image (runc's rule).
pub(crate) fn missing_targets(
    root: &Path,
    targets: &[(PathBuf, bool)],
) -> Result<Vec<(PathBuf, bool)>, String> {
    let mut missing = Vec::new();
    for (i, (rel, is_file)) in targets.iter().enumerate() {
        let (resolved, exists) = secure_join(root, rel)
            .map_err(|e| err(format!("resolving /{} in the image", rel.display()), e))?;
        if i < 3 && resolved != *rel {
            return Err(format!(
                "/{} is a symlink in the image; refusing to mount over it",
                rel.display()
            ));
        }
        if !exists {
            missing.push((resolved, *is_file));
        }
    }
    Ok(missing)
}

/// A copied root (the native snapshotter), bound at `layout.rootfs`. The
/// caller made every mount point in it; they are checked, not made.
fn mount_copied_root(job: &Job, layout: &Layout, copy: &Path) -> Result<OwnedFd, String> {
    let tree = open_tree(
        CWD,
        copy,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| err(format!("binding the copied root {}", copy.display()), e))?;
    if job.spec.readonly_rootfs {
        set_readonly(tree.as_fd()).map_err(|e| err("making the copied root read-only", e))?;
    }
    attach_root(&tree, layout)?;
    if let Some((rel, _)) = missing_targets(&layout.rootfs, &wanted_targets(job)?)?.first() {
        return Err(format!(
            "mount point /{} is missing from the copied root",
            rel.display()
        ));
    }
    rustix::fs::open(
        &layout.rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(layout.rootfs.display(), e))
}

/// Mode, owner and times of a directory as the container sees it (None:
/// the image has no such directory, it is made root's, 0755).
struct DirAttrs {
    rel: PathBuf,
    meta: Option<fs::Metadata>,
}

/// The attributes of every parent directory of `targets` in the mounted
/// rootfs, deepest first.
fn parent_attrs(rootfs: &Path, targets: &[(PathBuf, bool)]) -> Vec<DirAttrs> {
    let mut out: Vec<DirAttrs> = Vec::new();
    for (rel, _) in targets {
        for dir in rel.ancestors().skip(1) {
            if dir.as_os_str().is_empty() || out.iter().any(|a| a.rel == dir) {
                continue;
            }
            out.push(DirAttrs {
                rel: dir.to_path_buf(),
                meta: fs::symlink_metadata(rootfs.join(dir))
                    .ok()
                    .filter(|m| m.is_dir()),
            });
        }
    }
    out.sort_by_key(|a| std::cmp::Reverse(a.rel.components().count()));
    out
}

fn apply_attrs(base: &Path, attrs: &[DirAttrs]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for a in attrs {
        let p = base.join(&a.rel);
        let Some(m) = &a.meta else {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                .map_err(|e| err(format!("chmod {}", p.display()), e))?;
            continue;
        };
        std::os::unix::fs::lchown(&p, Some(m.uid()), Some(m.gid()))
            .map_err(|e| err(format!("chown {}", p.display()), e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| err(format!("chmod {}", p.display()), e))?;
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: m.atime(),
                tv_nsec: m.atime_nsec() as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: m.mtime(),
                tv_nsec: m.mtime_nsec() as _,
            },
        };
        rustix::fs::utimensat(CWD, &p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err(format!("setting the times of {}", p.display()), e))?;
    }
    Ok(())
}

/// Mount the rootfs and everything in it, then `pivot_root` into it and
/// detach the old root. Runs in the container's PID 1, in its new mount
/// namespace, before any user code.
pub(crate) fn setup_rootfs(job: &Job, layout: &Layout) -> Result<(), String> {
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::DOWNSTREAM
            | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| err("making / rslave", e))?;

    let root = mount_rootfs_with_targets(job, layout)?;
    let r = root.as_fd();

    let nosuid_nodev_noexec = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let proc_ = new_fs("proc", &[], nosuid_nodev_noexec).map_err(proc_refused)?;
    mount_at(r, "proc", false, &proc_)?;

    let dev = new_fs(
        "tmpfs",
        &[("mode", "755"), ("size", "65536k")],
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_STRICTATIME,
    )?;
    populate_dev(&dev)?;
    // gid 5 (tty) is not mapped in a single-ID user namespace.
    let tty_gid: &[(&str, &str)] = if crate::userns::gid_is_mapped(5) {
        &[("gid", "5")]
    } else {
        &[]
    };
    let pts_opts = [("ptmxmode", "0666"), ("mode", "0620")];
    let pts = new_fs(
        "devpts",
        &[&[("newinstance", "")][..], &pts_opts, tty_gid].concat(),
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .or_else(|_| {
        new_fs(
            "devpts",
            &[&pts_opts[..], tty_gid].concat(),
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )
    })?;
    mount_at(dev.as_fd(), "pts", false, &pts)?;
    let shm = new_fs(
        "tmpfs",
        &[("mode", "1777"), ("size", "65536k")],
        nosuid_nodev_noexec,
    )?;
    mount_at(dev.as_fd(), "shm", false, &shm)?;
    let mq = new_fs("mqueue", &[], nosuid_nodev_noexec)?;
    mount_at(dev.as_fd(), "mqueue", false, &mq)?;
    mount_at(r, "dev", false, &dev)?;

    let sys = sys_mount(job, nosuid_nodev_noexec)?;
    mount_at(r, "sys", false, &sys)?;

    for name in ["hosts", "hostname", "resolv.conf"] {
        let src = open_tree(
            CWD,
            layout.etc.join(name),
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| {
            err(
                format!("bind source {}", layout.etc.join(name).display()),
                e,
            )
        })?;
        mount_at(r, &format!("etc/{name}"), true, &src)?;
    }

    for m in &job.spec.mounts {
        let rel = clean_target(&m.target)?;
        let rel_s = rel.to_string_lossy();
        let mnt = match &m.kind {
            MountKind::Bind { source, readonly } => bind_tree(source, *readonly, &m.target)?,
            MountKind::Volume {
                source,
                readonly,
                copy_up,
            } => {
                if *copy_up {
                    seed_volume(layout, &rel, source)?;
                }
                bind_tree(source, *readonly, &m.target)?
            }
            MountKind::Tmpfs { size } => {
                let size = size.map(|s| s.to_string());
                // Docker's and BuildKit's tmpfs default: world-writable, sticky.
                let mut opts = vec![("mode", "1777")];
                if let Some(s) = size.as_deref() {
                    opts.push(("size", s));
                }
                new_fs(
                    "tmpfs",
                    &opts,
                    MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
                )?
            }
        };
        // A target under /dev lives on the container's fresh /dev tmpfs,
        // which hides the stub layer: make the mount point there (this is
        // where BuildKit puts heredoc scripts, /dev/pipes/NAME).
        if let Ok(under) = rel.strip_prefix("dev") {
            if !under.as_os_str().is_empty() {
                let is_file = match &m.kind {
                    MountKind::Bind { source, .. } => fs::symlink_metadata(source)
                        .map(|m| m.is_file())
                        .unwrap_or(false),
                    MountKind::Tmpfs { .. } | MountKind::Volume { .. } => false,
                };
                make_target_in(&dev, under, is_file)?;
            }
        }
        mount_at(r, &rel_s, true, &mnt)?;
    }

    mask_paths(r, &dev)?;

    // pivot_root(".", ".") stacks the old root under the new one; detaching
    // "." then drops it. No directory of the host stays reachable.
    rustix::process::chdir(&layout.rootfs).map_err(|e| err("chdir into the rootfs", e))?;
    rustix::process::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| err("detaching the old root", e))?;
    rustix::process::chdir("/").map_err(|e| err("chdir /", e))?;
    Ok(())
}

/// A detached copy of a bind source, read-only (recursively) if asked.
fn bind_tree(source: &Path, readonly: bool, target: &str) -> Result<OwnedFd, String> {
    let t = clone_bind_source(source)?;
    if readonly {
        mount_setattr(
            t.as_fd(),
            "",
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            MountAttrFlags::MOUNT_ATTR_RDONLY.bits() as u64,
        )
        .map_err(|e| err(format!("making {target} read-only"), e))?;
    }
    Ok(t)
}

/// Docker's copy-up into a fresh volume from the image's directory at the
/// target, resolved inside the rootfs (a symlink there stays in the root).
fn seed_volume(layout: &Layout, rel: &Path, source: &Path) -> Result<(), String> {
    let (resolved, exists) = secure_join(&layout.rootfs, rel)
        .map_err(|e| err(format!("resolving /{} in the image", rel.display()), e))?;
    if !exists {
        return Ok(());
    }
    crate::copyup::seed(&layout.rootfs.join(&resolved), source).map_err(|e| {
        err(
            format!(
                "copying the image's /{} into the volume {}",
                rel.display(),
                source.display()
            ),
            e,
        )
    })
}

/// sysfs, read-only; rootless with the host's network, the host's /sys.
fn sys_mount(job: &Job, nosuid_nodev_noexec: MountAttrFlags) -> Result<OwnedFd, String> {
    if crate::rootless_fs::nested() && job.spec.network == NetworkMode::Host {
        let sys = crate::rootless_fs::host_sys()?;
        mount_setattr(
            sys.as_fd(),
            "",
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            MountAttrFlags::MOUNT_ATTR_RDONLY.bits() as u64,
        )
        .map_err(|e| err("making the host's /sys read-only", e))?;
        Ok(sys)
    } else {
        new_fs(
            "sysfs",
            &[],
            nosuid_nodev_noexec | MountAttrFlags::MOUNT_ATTR_RDONLY,
        )
    }
}

/// Docker's default masked and read-only paths.
const MASKED: &[&str] = &[
    "proc/asound",
    "proc/acpi",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn mask_paths(root: BorrowedFd<'_>, dev: &OwnedFd) -> Result<(), String> {
    for p in MASKED {
        let fd = match open_in_root(root, Path::new(p), false) {
            Ok(fd) => fd,
            Err(_) => continue, // absent on this kernel
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| err(p, e))?;
        let mnt = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            new_fs("tmpfs", &[("size", "0")], MountAttrFlags::MOUNT_ATTR_RDONLY)?
        } else {
            open_tree(
                dev,
                "null",
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map_err(|e| err("/dev/null", e))?
        };
        attach(&mnt, &fd, p)?;
    }
    for p in READONLY {
        let fd = match open_in_root(root, Path::new(p), false) {
            Ok(fd) => fd,
            Err(_) => continue,
        };
        let mnt = clone_tree(&fd).map_err(|e| err(p, e))?;
        mount_setattr(
            mnt.as_fd(),
            "",
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            (MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC)
                .bits() as u64,
        )
        .map_err(|e| err(format!("making /{p} read-only"), e))?;
        attach(&mnt, &fd, p)?;
    }
    Ok(())
}

/// Creates `rel` (directories, then a file or a directory) under `dir`,
/// a directory fd, never following a symlink.
fn make_target_in(dir: &OwnedFd, rel: &Path, is_file: bool) -> Result<(), String> {
    let comps: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = comps.split_last() else {
        return Ok(());
    };
    let mut cur: OwnedFd = rustix::fs::openat(
        dir,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("/dev", e))?;
    for c in parents {
        match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err(format!("mkdir /dev/{}", rel.display()), e)),
        }
        cur = rustix::fs::openat(
            &cur,
            *c,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(format!("/dev/{}", rel.display()), e))?;
    }
    let made = if is_file {
        rustix::fs::openat(
            &cur,
            *last,
            OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    } else {
        rustix::fs::mkdirat(&cur, *last, Mode::from_raw_mode(0o755))
    };
    match made {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(err(format!("/dev/{}", rel.display()), e)),
    }
}

/// Device nodes and links of Docker's /dev, made in the fresh tmpfs.
fn populate_dev(dev: &OwnedFd) -> Result<(), String> {
    let chr = |name: &str, major: u32, minor: u32| -> Result<(), String> {
        rustix::fs::mknodat(
            dev,
            name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| err(format!("mknod /dev/{name}"), e))?;
        // mknod is subject to the umask; the mode must be exact.
        rustix::fs::chmodat(
            dev,
            name,
            Mode::from_raw_mode(0o666),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| err(format!("chmod /dev/{name}"), e))
    };
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        if crate::rootless_fs::nested() {
            crate::rootless_fs::bind_host_device(dev, name)?;
        } else {
            chr(name, major, minor)?;
        }
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        rustix::fs::symlinkat(target, dev, name).map_err(|e| err(format!("/dev/{name}"), e))?;
    }
    for (name, mode) in [("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o755)] {
        rustix::fs::mkdirat(dev, name, Mode::from_raw_mode(mode))
            .map_err(|e| err(format!("/dev/{name}"), e))?;
    }
    Ok(())
}

/// Bring `lo` up in the current network namespace.
pub(crate) fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl calls on a zeroed, NUL-terminated ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(err("socket", io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        let e = io::Error::last_os_error();
        libc::close(s);
        if r != 0 {
            return Err(err("bringing lo up", e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_layer_named_twice_is_mounted_once_at_its_top_most_place() {
        let (a, b, c) = (Path::new("/s/a"), Path::new("/s/b"), Path::new("/s/c"));
        let mut lowers = vec![a, b, a, c, b, a];
        drop_repeated_lowers(&mut lowers);
        assert_eq!(lowers, vec![a, b, c]);
    }

    #[test]
    fn clean_target_rules() {
        assert_eq!(
            clean_target("/run/secrets/x").unwrap(),
            PathBuf::from("run/secrets/x")
        );
        assert_eq!(clean_target("/a/./b/").unwrap(), PathBuf::from("a/b"));
        assert!(clean_target("relative").is_err());
        assert!(clean_target("/a/../b").is_err());
        assert!(clean_target("/").is_err());
    }

    #[test]
    fn a_bind_source_that_is_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host-file");
        fs::write(&host, "host").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&host, &link).unwrap();
        let e = clone_bind_source(&link).unwrap_err();
        assert!(
            e.contains("link is a symlink; refusing to follow it"),
            "{e}"
        );
        assert!(!e.contains("host-file"), "{e}");
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink("/nonexistent-kiln-target", &dangling).unwrap();
        assert!(clone_bind_source(&dangling)
            .unwrap_err()
            .contains("is a symlink"));
        // Cloning a real file's mount needs CAP_SYS_ADMIN; as root it works.
        if rustix::process::geteuid().is_root() {
            clone_bind_source(&host).unwrap();
            clone_bind_source(d.path()).unwrap();
        }
    }

    #[test]
    fn secure_join_keeps_symlinks_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("run")).unwrap();
        fs::write(root.join("run/real"), "x").unwrap();
        symlink("/host/file", root.join("etc/resolv.conf")).unwrap();
        symlink("../run/real", root.join("etc/hosts")).unwrap();
        symlink("/", root.join("proc")).unwrap();
        symlink("../../../..", root.join("up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        assert_eq!(
            secure_join(root, Path::new("etc/resolv.conf")).unwrap(),
            (PathBuf::from("host/file"), false)
        );
        assert_eq!(
            secure_join(root, Path::new("etc/hosts")).unwrap(),
            (PathBuf::from("run/real"), true)
        );
        assert_eq!(
            secure_join(root, Path::new("proc")).unwrap(),
            (PathBuf::new(), true)
        );
        assert_eq!(
            secure_join(root, Path::new("up/etc")).unwrap(),
            (PathBuf::from("etc"), true)
        );
        assert_eq!(
            secure_join(root, Path::new("new/../dir")).unwrap(),
            (PathBuf::from("dir"), false)
        );
        assert_eq!(
            secure_join(root, Path::new("loop1"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn prepare_makes_stubs_and_etc_files_outside_the_upper() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, "s").unwrap();
        let job = Job {
            spec: crate::ContainerSpec {
                args: vec!["true".into()],
                cwd: "/".into(),
                mounts: vec![
                    crate::MountSpec {
                        target: "/run/secrets/token".into(),
                        kind: MountKind::Bind {
                            source: secret,
                            readonly: true,
                        },
                    },
                    crate::MountSpec {
                        target: "/cache/dir".into(),
                        kind: MountKind::Tmpfs { size: None },
                    },
                ],
                ..Default::default()
            },
            scratch: t.path().join("scratch"),
            hostname: "box".into(),
            tty: false,
            supervisor: 1,
            legacy_overlay: false,
            copied_root: None,
            net: Default::default(),
            cgroups: vec![],
        };
        let l = prepare_host(&job).unwrap();
        prepare(&job, &l).unwrap();
        for f in [
            "etc/hosts",
            "etc/hostname",
            "etc/resolv.conf",
            "run/secrets/token",
        ] {
            assert!(l.stub.join(f).is_file(), "{f}");
        }
        for d in ["proc", "sys", "dev", "cache/dir"] {
            assert!(l.stub.join(d).is_dir(), "{d}");
        }
        assert_eq!(fs::read_to_string(l.etc.join("hostname")).unwrap(), "box\n");
        assert!(fs::read_to_string(l.etc.join("hosts"))
            .unwrap()
            .contains("127.0.1.1\tbox\n"));
        assert!(l.upper.is_dir() && l.work.is_dir() && l.rootfs.is_dir());
        assert_eq!(fs::read_dir(&l.upper).unwrap().count(), 0);
    }

    #[test]
    fn resolv_conf_drops_loopback_servers_unless_host() {
        let host = "search example.org\nnameserver 127.0.0.53\noptions edns0\n";
        let r = resolv_conf(host, NetworkMode::Private, None);
        assert!(!r.contains("127.0.0.53"));
        assert!(r.contains("nameserver 8.8.8.8"));
        assert!(r.contains("search example.org"));
        assert_eq!(resolv_conf(host, NetworkMode::Host, None), host);
        let r = resolv_conf("nameserver 10.0.0.2\n", NetworkMode::None, None);
        assert_eq!(r, "nameserver 10.0.0.2\n");
    }

    #[test]
    fn resolv_conf_points_at_the_stack_forwarder_when_it_has_one() {
        let host = "search example.org\nnameserver 10.0.0.2\nnameserver 127.0.0.53\n";
        let r = resolv_conf(host, NetworkMode::Private, Some("10.0.2.3"));
        assert_eq!(r, "nameserver 10.0.2.3\nsearch example.org\n");
    }
}
