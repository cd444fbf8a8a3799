//! `ADD <git repository> <dest>`: BuildKit's git source. The reference
//! (`#branch`, `#tag`, `#commit`, optionally `:subdir`) is resolved to a
//! commit with `git ls-remote` on every build, and the commit is what the
//! cache key holds: a branch that moved is a miss, one that did not is a
//! hit without fetching anything. On a miss the commit is fetched shallowly
//! into a scratch directory and its tree copied to `dest`; `.git` is left
//! out unless `--keep-git-dir`. The `git` binary does the talking, with
//! only network transports allowed (no `file://`, no `ext::`) and no
//! prompts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};

use super::copy::{Item, ItemSource};

/// A git source of ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// What `git` is given (the fragment removed).
    pub url: String,
    /// Branch, tag or commit; `None` is the remote's HEAD.
    pub reference: Option<String>,
    /// A directory of the repository to add instead of its root.
    pub subdir: Option<String>,
}

/// Whether `s` names a git repository the way BuildKit recognises one:
/// `git@host:path`, `git://`, `ssh://`, or an http(s) URL whose path ends
/// in `.git`; a `#ref[:subdir]` fragment may follow.
pub fn parse(s: &str) -> Option<GitSource> {
    let (url, fragment) = match s.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (s, None),
    };
    let is_git = url.starts_with("git@")
        || url.starts_with("git://")
        || url.starts_with("ssh://")
        || ((url.starts_with("https://") || url.starts_with("http://"))
            && url.trim_end_matches('/').ends_with(".git"));
    if !is_git {
        return None;
    }
    let (reference, subdir) = match fragment {
        None | Some("") => (None, None),
        Some(f) => match f.split_once(':') {
            Some((r, d)) => (
                (!r.is_empty()).then(|| r.to_string()),
                (!d.is_empty()).then(|| d.trim_matches('/').to_string()),
            ),
            None => (Some(f.to_string()), None),
        },
    };
    Some(GitSource {
        url: url.to_string(),
        reference,
        subdir,
    })
}

fn git() -> Command {
    let mut c = Command::new("git");
    // Network transports only; nothing may ask for a password on a
    // terminal; the user's and the system's git config are not read (they
    // could name helpers, hooks or rewrites).
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "/bin/false")
        .args([
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
            "-c",
            "protocol.http.allow=always",
            "-c",
            "protocol.ssh.allow=always",
            "-c",
            "protocol.git.allow=always",
            "-c",
            "core.hooksPath=/dev/null",
        ]);
    c
}

fn run(mut c: Command, what: &str) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| anyhow!("{what}: cannot run git ({e}); install git"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{what}: {}", last.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_commit(r: &str) -> bool {
    r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit())
}

impl GitSource {
    /// The commit the reference names now.
    pub fn resolve(&self) -> Result<String> {
        if let Some(r) = &self.reference {
            if is_commit(r) {
                return Ok(r.to_ascii_lowercase());
            }
        }
        let want = self.reference.as_deref().unwrap_or("HEAD");
        let mut c = git();
        c.args(["ls-remote", "--", &self.url, want]);
        if want != "HEAD" {
            // A tag's peeled commit is listed as `refs/tags/X^{}`.
            c.arg(format!("{want}^{{}}"));
        }
        let out = run(c, &format!("ADD {}: resolving {want}", self.url))?;
        let mut found: Option<(u8, String)> = None;
        for line in out.lines() {
            let Some((sha, name)) = line.split_once('\t') else {
                continue;
            };
            // Peeled tags first, then branches, then the rest.
            let rank = if name.ends_with("^{}") {
                0
            } else if name == format!("refs/heads/{want}") || name == "HEAD" {
                1
            } else {
                2
            };
            let better = match &found {
                None => true,
                Some((r, _)) => rank < *r,
            };
            if better {
                found = Some((rank, sha.to_string()));
            }
        }
        found
            .map(|(_, s)| s)
            .ok_or_else(|| anyhow!("ADD {}: no branch or tag {want:?} there", self.url))
    }

    /// Fetches `commit` into `dir` (a fresh directory) and returns the
    /// directory to add (the subdir when one was named).
    pub fn checkout(&self, commit: &str, dir: &Path) -> Result<PathBuf> {
        let what = format!("ADD {}", self.url);
        let mut c = git();
        c.args(["init", "-q"]).arg(dir);
        run(c, &what)?;
        // The commit itself when the server allows it, else the reference
        // (then checked to be that commit); shallow when the transport can.
        let mut wants = vec![commit.to_string()];
        if let Some(r) = &self.reference {
            if !is_commit(r) {
                wants.push(r.clone());
            }
        } else {
            wants.push("HEAD".into());
        }
        let mut fetched = false;
        let mut last_err = None;
        'outer: for want in &wants {
            for shallow in [true, false] {
                let mut c = git();
                c.arg("-C").arg(dir).args(["fetch", "-q", "--no-tags"]);
                if shallow {
                    c.arg("--depth=1");
                }
                c.args(["--", &self.url, want]);
                match run(c, &what) {
                    Ok(_) => {
                        fetched = true;
                        break 'outer;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        if !fetched {
            return Err(last_err.unwrap_or_else(|| anyhow!("{what}: fetch failed")));
        }
        let mut c = git();
        c.arg("-C")
            .arg(dir)
            .args(["-c", "advice.detachedHead=false", "checkout", "-q", commit]);
        run(
            c,
            &format!("{what}: {commit} is not what the reference fetched"),
        )?;
        match &self.subdir {
            None => Ok(dir.to_path_buf()),
            Some(sub) => {
                let comps = crate::fsutil::clean_components(sub);
                let p = comps.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
                let m = std::fs::symlink_metadata(&p)
                    .map_err(|_| anyhow!("{what}: no directory {sub:?} at {commit}"))?;
                if !m.is_dir() {
                    bail!("{what}: {sub:?} is not a directory at {commit}");
                }
                Ok(p)
            }
        }
    }

    /// The commit's time, as nanoseconds: the mtime of everything added,
    /// so the same commit gives the same layer.
    pub fn commit_time_ns(dir: &Path, commit: &str) -> Result<i64> {
        let mut c = git();
        c.arg("-C")
            .arg(dir)
            .args(["log", "-1", "--format=%ct", commit]);
        let s = run(c, "reading the commit time")?;
        let secs: i64 = s.trim().parse().context("git log --format=%ct")?;
        Ok(secs * 1_000_000_000)
    }
}

/// What a checkout adds at `target`: its tree (owned by root, modes as git
/// wrote them, every mtime the commit's), `.git` only when kept.
pub fn tree_items(
    root: &Path,
    target: &str,
    keep_git_dir: bool,
    mtime_ns: i64,
) -> Result<Vec<(String, Item)>> {
    let mut out = vec![(
        target.to_string(),
        Item {
            rel: String::new(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns,
            src: ItemSource::Dir,
        },
    )];
    let mut todo = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name == ".git" && !keep_git_dir {
                continue;
            }
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(e.path())?;
            let src = if m.is_dir() {
                todo.push((e.path(), r.clone()));
                ItemSource::Dir
            } else if m.file_type().is_symlink() {
                ItemSource::Link(std::fs::read_link(e.path())?.to_string_lossy().into_owned())
            } else if m.is_file() {
                ItemSource::File(e.path())
            } else {
                continue;
            };
            let mode = if m.is_dir() {
                0o755
            } else {
                m.permissions().mode() & 0o777
            };
            out.push((
                format!("{}/{r}", target.trim_end_matches('/')),
                Item {
                    rel: r,
                    mode,
                    uid: 0,
                    gid: 0,
                    mtime_ns,
                    src,
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_git_sources_like_buildkit() {
        let g = parse("https://github.com/moby/buildkit.git#v0.10.1:docs").unwrap();
        assert_eq!(g.url, "https://github.com/moby/buildkit.git");
        assert_eq!(g.reference.as_deref(), Some("v0.10.1"));
        assert_eq!(g.subdir.as_deref(), Some("docs"));
        let g = parse("git@github.com:moby/buildkit.git").unwrap();
        assert_eq!((g.reference, g.subdir), (None, None));
        assert!(parse("git://127.0.0.1:9418/repo.git#main").is_some());
        assert!(parse("ssh://git@host/repo#:sub").is_some());
        assert!(parse("https://example.com/file.tar.gz").is_none());
        assert!(parse("https://example.com/archive").is_none());
        assert!(parse("./local.git").is_none());
    }
}
