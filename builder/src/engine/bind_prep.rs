//! The host side of `RUN --mount=type=bind`: a context path resolved
//! inside the scanned context, what `.dockerignore` hides kept hidden, a
//! stage's files materialised, a read-write mount given a scratch copy.

use std::path::PathBuf;

use anyhow::Result;
use kiln_store::Store;

use super::source::Source;
use crate::context::BuildContext;
use crate::fsutil::{self, RootView};

/// What a `RUN --mount=type=bind` shows, prepared when the step runs.
pub(super) enum BindPrep {
    /// A path of the build context (relative).
    Context(String),
    /// A path of another stage's or image's filesystem.
    View(RootView, Vec<String>),
}

/// What preparing binds reads: the store (scratch copies), the context
/// and its scan, the Dockerfile (for errors).
pub(super) struct Binds<'a> {
    pub store: &'a Store,
    pub ctx: &'a BuildContext,
    pub src: &'a Source,
}

impl<'a> Binds<'a> {
    pub(super) fn of(b: &'a super::Builder) -> Binds<'a> {
        Binds {
            store: &b.store,
            ctx: &b.ctx,
            src: &b.src,
        }
    }

    /// A bind mount's `source=` resolved in the scanned context, as
    /// BuildKit resolves it in the context it was sent: symlinks followed
    /// but kept inside the context's root, so what is mounted is an entry
    /// of the `.dockerignore`-filtered context (a directory or a file,
    /// never a symlink), never a path of the host.
    pub(super) fn source_in_context(&self, source: &str, line: usize) -> Result<String> {
        let shown = fsutil::clean_abs(source);
        match self.ctx.resolve(source, true) {
            Ok(Some(rel)) => Ok(rel),
            Ok(None) => Err(self.src.located(
                line,
                &format!(
                    "RUN --mount=type=bind: {shown:?}: not found in the build context \
                     (symlinks resolve inside the context; is the file excluded by .dockerignore?)"
                ),
            )),
            Err(e) => Err(self
                .src
                .located(line, &format!("RUN --mount=type=bind: {e}"))),
        }
    }

    /// The host path to bind for a mount: the context path itself when
    /// `.dockerignore` excludes nothing below it, else a copy (hard links
    /// where possible) of just what the context holds, so an ignored file
    /// is never visible to RUN; another stage's files are materialised; a
    /// read-write mount gets a scratch copy whose writes are dropped.
    pub(super) fn prepare(
        &self,
        prep: BindPrep,
        rw: bool,
        scratch: &mut Vec<tempfile::TempDir>,
    ) -> Result<PathBuf> {
        let tmp = || self.store.tempdir("bind");
        match prep {
            BindPrep::Context(rel) => {
                let real = self.ctx.root.join(&rel);
                self.still_scanned(&rel, &real)?;
                let entries = self.ctx.subtree(&rel);
                if !rw && !has_excluded(&real, entries.len())? {
                    return Ok(real);
                }
                let t = tmp()?;
                let is_dir = self
                    .ctx
                    .get(&rel)
                    .map(|e| e.kind == crate::context::Kind::Dir);
                let dest_root = if is_dir == Some(true) {
                    t.path().to_path_buf()
                } else {
                    t.path().join("file")
                };
                for (k, e) in entries {
                    let sub = if *k == rel {
                        String::new()
                    } else if rel.is_empty() {
                        k.clone()
                    } else {
                        k[rel.len() + 1..].to_string()
                    };
                    let dst = if sub.is_empty() {
                        dest_root.clone()
                    } else {
                        dest_root.join(&sub)
                    };
                    let src = self.ctx.root.join(k);
                    match e.kind {
                        crate::context::Kind::Dir => {
                            std::fs::create_dir_all(&dst)?;
                        }
                        crate::context::Kind::Symlink => {
                            std::os::unix::fs::symlink(
                                e.link_target.clone().unwrap_or_default(),
                                &dst,
                            )?;
                        }
                        crate::context::Kind::File => {
                            // A hard link shares the inode: fine for a
                            // read-only mount; a read-write one gets bytes.
                            if rw || std::fs::hard_link(&src, &dst).is_err() {
                                std::fs::copy(&src, &dst)?;
                            }
                        }
                        crate::context::Kind::Other => {}
                    }
                }
                scratch.push(t);
                Ok(dest_root)
            }
            BindPrep::View(view, comps) => {
                let t = tmp()?;
                materialize(&view, &comps, t.path())?;
                let p = if view
                    .stat(&format!("/{}", comps.join("/")))?
                    .is_some_and(|f| f.meta.is_dir())
                {
                    t.path().to_path_buf()
                } else {
                    t.path()
                        .join(comps.last().cloned().unwrap_or_else(|| "file".into()))
                };
                scratch.push(t);
                // Already a private copy: writes to it are dropped with it.
                Ok(p)
            }
        }
    }

    /// `rel` (resolved, symlink-free in the scan) is still the entry the
    /// scan saw: a path swapped for a symlink since would be followed on
    /// the host when mounted.
    fn still_scanned(&self, rel: &str, real: &std::path::Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let e = self.ctx.get(rel);
        let same = std::fs::symlink_metadata(real)
            .ok()
            .zip(e)
            .is_some_and(|(m, e)| {
                !m.file_type().is_symlink() && m.dev() == e.dev && m.ino() == e.ino
            });
        if !same {
            anyhow::bail!(
                "build context path \"/{rel}\" changed while the build ran ({}); build again",
                real.display()
            );
        }
        Ok(())
    }
}

/// Whether the real tree at `path` holds more entries than the context
/// kept of it (then `.dockerignore` excluded something below it).
fn has_excluded(path: &std::path::Path, kept: usize) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(false);
    }
    // The directory itself counts (1), as it does in `kept`.
    for (i, e) in walkdir::WalkDir::new(path)
        .min_depth(1)
        .into_iter()
        .enumerate()
    {
        e?;
        if i + 2 > kept {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Copies the tree at `comps` of a view into `dest` (for bind mounts from
/// another stage).
pub(super) fn materialize(view: &RootView, comps: &[String], dest: &std::path::Path) -> Result<()> {
    // Modes, owners and mtimes kept, as a bind mount of the tree shows them.
    fsutil::materialize(view, comps, dest)
}
