//! COPY and ADD: source selection (context or another stage/image),
//! the inputs that make their cache key, and writing the selected files
//! into a fresh snapshot with BuildKit's destination rules.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_parser::dockerignore::PatternMatcher;
use serde_json::{json, Value};

use crate::context::{BuildContext, Kind};
use crate::fsutil::{self, RootView};

/// One thing to write: a path relative to the copy's destination root.
#[derive(Debug, Clone)]
pub struct Item {
    /// Relative to the destination directory ("" = the destination itself).
    pub rel: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub src: ItemSource,
}

#[derive(Debug, Clone)]
pub enum ItemSource {
    File(PathBuf),
    Bytes(Vec<u8>),
    Link(String),
    Dir,
    /// ADD of a local archive: extracted at `rel`.
    Archive(PathBuf),
    /// ADD of a git repository: fetched only when the copy runs.
    Git(Box<GitItem>),
    /// A fifo or device node of another stage or image (`rdev` for a
    /// device), made again at the destination as BuildKit does.
    Node {
        format: u32,
        rdev: u64,
    },
}

#[derive(Debug, Clone)]
pub struct GitItem {
    pub source: super::git::GitSource,
    pub commit: String,
    pub keep_git_dir: bool,
    /// A fresh directory to fetch into.
    pub scratch: PathBuf,
}

/// Everything the copy needs once its key missed.
pub struct CopyPlan {
    /// Destination (absolute, cleaned) and the items, each with its
    /// destination path relative to "/".
    pub items: Vec<(String, Item)>,
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<u32>,
}

pub struct CopyRequest {
    pub add: bool,
    pub sources: Vec<String>,
    pub dest: String,
    pub dest_is_dir_hint: bool,
    pub heredoc_bodies: Vec<(String, Vec<u8>)>,
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<u32>,
    pub exclude: Vec<String>,
    pub parents: bool,
    pub unpack: bool,
    pub checksum: Option<String>,
    /// Where downloads of `ADD <url>` go (kept until the copy is done).
    pub download_dir: Option<PathBuf>,
    /// ADD --keep-git-dir: a git source keeps its `.git`.
    pub keep_git_dir: bool,
}

pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Go's `filepath.Match`, which BuildKit uses for COPY sources: `*` never
/// crosses a `/`, and `**` is no more than `*` (the glob crate would make
/// it cross directories).
fn glob_match(pattern: &str, path: &str) -> bool {
    let mut go = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if !(c == '*' && go.ends_with('*')) {
            go.push(c);
        }
    }
    match glob::Pattern::new(&go) {
        Ok(p) => p.matches_with(
            path,
            glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: true,
                require_literal_leading_dot: false,
            },
        ),
        Err(_) => pattern == path,
    }
}

pub fn parse_chmod(s: &str) -> Result<u32> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| anyhow!("invalid --chmod={s}: kiln accepts octal modes (e.g. 755)"))
}

/// Whether a 512-byte block is a tar header: the ustar magic, or a v7
/// header whose checksum adds up.
fn is_tar_header(h: &[u8]) -> bool {
    if h.len() < 512 {
        return false;
    }
    if &h[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&h[148..156]);
    let Ok(want) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == want && h[0] != 0
}

fn read_head(mut r: impl Read) -> Vec<u8> {
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    head.truncate(n);
    head
}

/// Opens a source file without following a symlink in its last
/// component: what was scanned or resolved as a file is read only if it is
/// still one (a file swapped for a link to the host is refused).
fn open_source(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow!(
                "{} is now a symlink (it was a file when the build began); refusing to follow it",
                path.display()
            ),
            _ => anyhow!("reading {}: {e}", path.display()),
        })
}

/// The kind of archive ADD extracts: a tar, plain or compressed, decided by
/// looking at the (decompressed) first block, as BuildKit does. A gzip file
/// that is not a tar is copied as it is.
pub fn archive_kind(path: &Path) -> Result<Option<&'static str>> {
    let f = open_source(path)?;
    let h = read_head(&f);
    let open = || open_source(path);
    let (kind, inner): (&'static str, Vec<u8>) = if h.starts_with(&[0x1f, 0x8b]) {
        (
            "gzip",
            read_head(flate2::read::MultiGzDecoder::new(open()?)),
        )
    } else if h.starts_with(b"BZh") {
        (
            "bzip2",
            read_head(bzip2::read::MultiBzDecoder::new(open()?)),
        )
    } else if h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        (
            "xz",
            read_head(xz2::read::XzDecoder::new_multi_decoder(open()?)),
        )
    } else if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        match zstd::stream::read::Decoder::new(open()?) {
            Ok(d) => ("zstd", read_head(d)),
            Err(_) => return Ok(None),
        }
    } else {
        ("tar", h)
    };
    Ok(is_tar_header(&inner).then_some(kind))
}

/// A context source, cleaned relative to the context root; `../x` that
/// leaves the context is an error, as in BuildKit.
fn context_rel(src: &str) -> Result<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in src.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    bail!("forbidden path outside the build context: {src}");
                }
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

/// A context source resolved in the scanned context: its symlinks
/// followed but kept inside the context's root (BuildKit's behaviour), so
/// neither a host path nor a `.dockerignore`d file is ever selected.
fn resolve_in_context(ctx: &BuildContext, rel: &str) -> Result<String> {
    ctx.resolve(rel, true)?.ok_or_else(|| {
        anyhow!("\"/{rel}\": not found in the build context (is it excluded by .dockerignore?)")
    })
}

/// A selected source: its path (context-relative or absolute in an image)
/// and whether it is a directory (then its contents are copied).
pub struct Selected {
    pub path: String,
    pub is_dir: bool,
    /// The name the source was given by (a symlink's own name: BuildKit
    /// copies the target's content under it).
    pub name: String,
}

fn last_component(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string()
}

/// Expands the sources against the context.
pub fn select_in_context(ctx: &BuildContext, sources: &[String]) -> Result<Vec<Selected>> {
    let mut out = Vec::new();
    let mut unmatched = None;
    for s in sources {
        let rel = context_rel(s)?;
        if has_wildcard(&rel) {
            let mut any = false;
            for (k, _) in ctx.iter() {
                if !k.is_empty() && glob_match(&rel, k) {
                    let real = resolve_in_context(ctx, k)?;
                    let is_dir = ctx.get(&real).map(|e| e.kind == Kind::Dir).unwrap_or(false);
                    let name = last_component(k);
                    out.push(Selected {
                        path: real,
                        is_dir,
                        name,
                    });
                    any = true;
                }
            }
            if !any {
                unmatched.get_or_insert(s);
            }
        } else {
            let real = resolve_in_context(ctx, &rel)?;
            let is_dir = ctx.get(&real).map(|e| e.kind == Kind::Dir).unwrap_or(false);
            let name = last_component(&rel);
            out.push(Selected {
                path: real,
                is_dir,
                name,
            });
        }
    }
    // As in BuildKit, a wildcard may match nothing when another source of
    // the same COPY gives something.
    match unmatched {
        Some(s) if out.is_empty() => bail!(
            "lstat {s}: no source files were specified (the pattern matched nothing in the build context)"
        ),
        _ => Ok(out),
    }
}

/// Expands the sources against another stage's or image's filesystem.
pub fn select_in_view(view: &RootView, sources: &[String]) -> Result<Vec<Selected>> {
    let mut out = Vec::new();
    let mut unmatched = None;
    for s in sources {
        let abs = fsutil::clean_abs(s);
        if has_wildcard(&abs) {
            // Any component may be a pattern, as in BuildKit: expanded one
            // component at a time, in name order.
            let mut any = false;
            for path in expand_in_view(view, &abs)? {
                let Some(f) = view.resolve(&path, true)?.1 else {
                    continue;
                };
                // A matched symlink is followed inside the image, as a
                // named one is: a link to a directory copies its contents.
                let name = last_component(&path);
                out.push(Selected {
                    is_dir: f.meta.is_dir(),
                    path,
                    name,
                });
                any = true;
            }
            if !any {
                unmatched.get_or_insert(s);
            }
        } else {
            let (comps, found) = view.resolve(&abs, true)?;
            let Some(f) = found else {
                bail!("\"{abs}\": not found");
            };
            out.push(Selected {
                path: format!("/{}", comps.join("/")),
                is_dir: f.meta.is_dir(),
                name: last_component(&abs),
            });
        }
    }
    match unmatched {
        Some(s) if out.is_empty() => bail!("\"{s}\": no source files matched"),
        _ => Ok(out),
    }
}

/// The paths of `view` that the absolute pattern `abs` names.
fn expand_in_view(view: &RootView, abs: &str) -> Result<Vec<String>> {
    let mut found = vec![String::new()];
    for comp in abs.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &found {
            if !has_wildcard(comp) {
                next.push(format!("{dir}/{comp}"));
                continue;
            }
            let (comps, f) = view.resolve(if dir.is_empty() { "/" } else { dir }, true)?;
            if !f.is_some_and(|f| f.meta.is_dir()) {
                continue;
            }
            for (name, _) in view.read_dir(&comps)? {
                if glob_match(comp, &name) {
                    next.push(format!("{dir}/{name}"));
                }
            }
        }
        found = next;
    }
    Ok(found)
}

/// Where each selected source lands, relative to "/": BuildKit's rules.
fn dest_for(sel: &Selected, req: &CopyRequest, dest_is_dir: bool) -> String {
    let dest = fsutil::clean_abs(&req.dest);
    let base = sel.name.clone();
    if req.parents {
        let parent = sel.path.trim_start_matches('/');
        let parent = parent.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let d = if parent.is_empty() {
            dest.clone()
        } else {
            format!("{}/{}", dest.trim_end_matches('/'), parent)
        };
        return format!("{}/{}", d.trim_end_matches('/'), base);
    }
    if sel.is_dir {
        dest
    } else if dest_is_dir {
        format!("{}/{}", dest.trim_end_matches('/'), base)
    } else {
        dest
    }
}

fn items_from_context(
    ctx: &BuildContext,
    sel: &Selected,
    target: &str,
    exclude: Option<&PatternMatcher>,
    add: bool,
    unpack: bool,
    archive_dir: &str,
) -> Result<Vec<(String, Item)>> {
    let mut out = Vec::new();
    for (k, e) in ctx.subtree(&sel.path) {
        let rel = if k == &sel.path {
            String::new()
        } else if sel.path.is_empty() {
            k.clone()
        } else {
            k[sel.path.len() + 1..].to_string()
        };
        // --exclude patterns are relative to each source.
        if let Some(m) = exclude {
            if !rel.is_empty() && m.matches(&rel) {
                continue;
            }
        }
        let dest = if rel.is_empty() {
            target.to_string()
        } else {
            format!("{}/{}", target.trim_end_matches('/'), rel)
        };
        let real = ctx.root.join(k);
        let src = match e.kind {
            Kind::File => {
                if add && unpack && rel.is_empty() && !sel.is_dir && archive_kind(&real)?.is_some()
                {
                    // Extracted into the destination, which is a directory
                    // whether or not it ends with a slash.
                    let dir = archive_dir.to_string();
                    out.push((
                        dir,
                        Item {
                            rel: String::new(),
                            mode: 0,
                            uid: 0,
                            gid: 0,
                            mtime_ns: e.mtime_ns,
                            src: ItemSource::Archive(real),
                        },
                    ));
                    continue;
                }
                ItemSource::File(real)
            }
            Kind::Dir => ItemSource::Dir,
            Kind::Symlink => ItemSource::Link(e.link_target.clone().unwrap_or_default()),
            Kind::Other => continue,
        };
        out.push((
            dest,
            Item {
                rel,
                mode: e.mode,
                uid: 0,
                gid: 0,
                mtime_ns: e.mtime_ns,
                src,
            },
        ));
    }
    Ok(out)
}

fn items_from_view(
    view: &RootView,
    sel: &Selected,
    target: &str,
    exclude: Option<&PatternMatcher>,
) -> Result<Vec<(String, Item)>> {
    let mut out = Vec::new();
    let (comps, found) = view.resolve(&sel.path, true)?;
    let Some(found) = found else {
        bail!("\"{}\": not found", sel.path);
    };
    fn push(
        view: &RootView,
        comps: &mut Vec<String>,
        real: &Path,
        rel: String,
        target: &str,
        exclude: Option<&PatternMatcher>,
        out: &mut Vec<(String, Item)>,
    ) -> Result<()> {
        let m = fs::symlink_metadata(real)?;
        let ft = m.file_type();
        if let Some(x) = exclude {
            if !rel.is_empty() && x.matches(&rel) {
                return Ok(());
            }
        }
        let (kind, src) = if ft.is_dir() {
            (Kind::Dir, ItemSource::Dir)
        } else if ft.is_file() {
            (Kind::File, ItemSource::File(real.to_path_buf()))
        } else if ft.is_symlink() {
            (
                Kind::Symlink,
                ItemSource::Link(fs::read_link(real)?.to_string_lossy().into_owned()),
            )
        } else {
            use std::os::unix::fs::FileTypeExt;
            if !(ft.is_fifo() || ft.is_char_device() || ft.is_block_device()) {
                return Ok(()); // sockets are not copied
            }
            let format = m.mode() & libc::S_IFMT;
            (
                Kind::Other,
                ItemSource::Node {
                    format,
                    rdev: m.rdev(),
                },
            )
        };
        let dest = if rel.is_empty() {
            target.to_string()
        } else {
            format!("{}/{}", target.trim_end_matches('/'), rel)
        };
        out.push((
            dest,
            Item {
                rel: rel.clone(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: fsutil::mtime_ns(&m),
                src,
            },
        ));
        if kind == Kind::Dir {
            for (name, child) in view.read_dir(comps)? {
                comps.push(name.clone());
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                push(view, comps, &child, r, target, exclude, out)?;
                comps.pop();
            }
        }
        Ok(())
    }
    let mut comps = comps;
    push(
        view,
        &mut comps,
        &found.real,
        String::new(),
        target,
        exclude,
        &mut out,
    )?;
    Ok(out)
}

pub enum Source<'a> {
    Context(&'a BuildContext),
    View(&'a RootView),
}

/// Plans the copy and returns (inputs for the cache key, plan).
pub fn plan_copy(
    source: Source,
    source_id: Value,
    req: &CopyRequest,
    dest_view: &super::lazy_view::LazyView,
) -> Result<(Value, CopyPlan)> {
    let exclude = if req.exclude.is_empty() {
        None
    } else {
        Some(
            PatternMatcher::new(&req.exclude)
                .map_err(|e| anyhow!("invalid --exclude pattern: {e}"))?,
        )
    };
    let (file_sources, urls, gits) = split_sources(req)?;
    let selected = match &source {
        Source::Context(ctx) => select_in_context(ctx, &file_sources)?,
        Source::View(v) => select_in_view(v, &file_sources)?,
    };
    let count = selected.len() + req.heredoc_bodies.len() + urls.len() + gits.len();
    let dest_is_dir = dest_is_dir(req, dest_view, count)?;
    let mut p = Planned {
        req,
        dest_is_dir,
        items: Vec::new(),
        described: BTreeMap::new(),
    };
    for sel in &selected {
        p.selected(&source, sel, exclude.as_ref())?;
    }
    for (i, url) in urls.iter().enumerate() {
        p.url(i, url)?;
    }
    for (i, g) in gits.into_iter().enumerate() {
        p.git(i, g)?;
    }
    for (name, body) in &req.heredoc_bodies {
        p.heredoc(name, body);
    }
    let inputs = json!({
        "source": source_id,
        "files": p.described,
        "dest": fsutil::clean_abs(&req.dest),
        "chown": req.chown.map(|(u, g)| format!("{u}:{g}")),
        "chmod": req.chmod.map(|m| format!("{m:o}")),
        "exclude": req.exclude,
        "parents": req.parents,
        "unpack": req.add && req.unpack,
    });
    Ok((
        inputs,
        CopyPlan {
            items: p.items,
            chown: req.chown,
            chmod: req.chmod,
        },
    ))
}

/// Local sources, http(s) URLs and git repositories (the last two ADD
/// only).
fn split_sources(
    req: &CopyRequest,
) -> Result<(Vec<String>, Vec<String>, Vec<super::git::GitSource>)> {
    let mut file_sources = Vec::new();
    let mut urls = Vec::new();
    let mut gits = Vec::new();
    for s in &req.sources {
        if let Some(g) = super::git::parse(s) {
            if !req.add {
                bail!("COPY does not fetch git repositories ({s}); use ADD");
            }
            gits.push(g);
        } else if s.starts_with("http://") || s.starts_with("https://") {
            if !req.add {
                bail!("COPY does not fetch URLs ({s}); use ADD");
            }
            urls.push(s.clone());
        } else {
            file_sources.push(s.clone());
        }
    }
    if req.checksum.is_some() && (!file_sources.is_empty() || urls.len() != 1) {
        bail!("ADD --checksum applies to exactly one http(s) source");
    }
    Ok((file_sources, urls, gits))
}

/// Whether the destination is a directory: it says so (`/` at the end),
/// it is one, or there are several sources (which needs one of the first
/// two, as in BuildKit). A destination ending in `/` is a directory
/// whatever the root holds: the root is not looked into (nor, when
/// remote, fetched) for the key.
fn dest_is_dir(
    req: &CopyRequest,
    dest_view: &super::lazy_view::LazyView,
    count: usize,
) -> Result<bool> {
    let dest_exists_dir = !req.dest_is_dir_hint
        && dest_view
            .get()?
            .stat(&req.dest)
            .ok()
            .flatten()
            .map(|f| f.meta.is_dir())
            .unwrap_or(false);
    let multi = count > 1;
    if multi && !req.dest_is_dir_hint && !dest_exists_dir {
        bail!(
            "When using {} with more than one source file, the destination must be a directory and end with a /",
            if req.add { "ADD" } else { "COPY" }
        );
    }
    Ok(req.dest_is_dir_hint || dest_exists_dir || multi)
}

/// The items of a COPY/ADD as they are planned, and what each source
/// contributes to the step's cache inputs.
struct Planned<'a> {
    req: &'a CopyRequest,
    dest_is_dir: bool,
    items: Vec<(String, Item)>,
    described: BTreeMap<String, Value>,
}

impl Planned<'_> {
    /// Where a single file called `name` goes.
    fn named_target(&self, name: &str) -> String {
        let dest = fsutil::clean_abs(&self.req.dest);
        if self.dest_is_dir {
            format!("{}/{}", dest.trim_end_matches('/'), name)
        } else {
            dest
        }
    }

    fn push(&mut self, target: String, mode: u32, mtime_ns: i64, src: ItemSource) {
        self.items.push((
            target,
            Item {
                rel: String::new(),
                mode,
                uid: 0,
                gid: 0,
                mtime_ns,
                src,
            },
        ));
    }

    fn selected(
        &mut self,
        source: &Source,
        sel: &Selected,
        exclude: Option<&PatternMatcher>,
    ) -> Result<()> {
        let req = self.req;
        let target = dest_for(sel, req, self.dest_is_dir);
        match source {
            Source::Context(ctx) => {
                self.items.extend(items_from_context(
                    ctx,
                    sel,
                    &target,
                    exclude,
                    req.add,
                    req.unpack,
                    &fsutil::clean_abs(&req.dest),
                )?);
                // The listing, or past MAX_LISTED entries its digest.
                let summary =
                    ctx.summarise_subtree(&sel.path, exclude, crate::context::MAX_LISTED)?;
                self.described
                    .insert(format!("{} -> {}", sel.path, target), summary);
            }
            Source::View(v) => {
                self.items
                    .extend(items_from_view(v, sel, &target, exclude)?);
                self.described
                    .insert(format!("{} -> {}", sel.path, target), Value::Null);
            }
        }
        Ok(())
    }

    /// The content is part of the key: fetched now, as BuildKit does; with
    /// --checksum, a mismatch fails before anything is written.
    fn url(&mut self, i: usize, url: &str) -> Result<()> {
        let Some(base) = &self.req.download_dir else {
            bail!("ADD {url}: no download directory");
        };
        let dir = base.join(i.to_string());
        fs::create_dir_all(&dir)?;
        let f = fetch_url(url, &dir, self.req.checksum.as_deref())?;
        let target = self.named_target(&f.name);
        self.described.insert(
            format!("{url} -> {target}"),
            Value::String(format!("sha256:{}", f.sha256)),
        );
        self.push(target, 0o600, f.mtime_ns, ItemSource::File(f.path));
        Ok(())
    }

    /// The commit the reference names now is the key; the repository is
    /// fetched only if the step runs.
    fn git(&mut self, i: usize, g: super::git::GitSource) -> Result<()> {
        let req = self.req;
        let Some(base) = &req.download_dir else {
            bail!("ADD {}: no download directory", g.url);
        };
        let commit = g.resolve()?;
        let target = fsutil::clean_abs(&req.dest);
        self.described.insert(
            format!("git {} -> {target}", g.url),
            json!({
                "commit": commit,
                "subdir": g.subdir,
                "keep-git-dir": req.keep_git_dir,
            }),
        );
        let scratch = base.join(format!("git-{i}"));
        let item = GitItem {
            source: g,
            commit,
            keep_git_dir: req.keep_git_dir,
            scratch,
        };
        self.push(target, 0o755, 0, ItemSource::Git(Box::new(item)));
        Ok(())
    }

    fn heredoc(&mut self, name: &str, body: &[u8]) {
        let target = self.named_target(name);
        self.described.insert(
            format!("<<{name} -> {target}"),
            Value::String(blake3::hash(body).to_hex().to_string()),
        );
        self.push(target, 0o644, 0, ItemSource::Bytes(body.to_vec()));
    }
}

/// Writes the planned items into `upper`, the new snapshot of the step.
pub fn execute(
    plan: &CopyPlan,
    upper: &Path,
    view: &RootView,
    limits: &kiln_store::layer::Limits,
) -> Result<()> {
    let mut dir_fixups: Vec<(PathBuf, i64)> = Vec::new();
    let mut links = HardLinks::default();
    // The upper directory of the previous item's parent. Items come sorted,
    // so a directory's files follow each other: its resolution (a statx in
    // every layer and in the upper per component) is done once for them
    // all. An item changes nothing but its own path and what is below it,
    // so its parent is still the same directory for the next item.
    let mut last_parent: Option<(&str, PathBuf)> = None;
    // Regular files are copied in batches (in parallel), each made of
    // consecutive files of one source: anything else comes after the files
    // before it, as it did when each was copied in turn.
    let mut files: Vec<FileJob<'_>> = Vec::new();
    for (dest, item) in &plan.items {
        if item.rel.is_empty() || !matches!(item.src, ItemSource::File(_)) {
            copy_batch(&mut files, &mut links)?;
        }
        if item.rel.is_empty() {
            // Each source is its own copy: links between two sources are not kept.
            links = HardLinks::default();
        }
        // Resolve the parent inside the image (symlinks such as /bin ->
        // usr/bin are followed as the container would see them).
        let (parent, name) = match dest.rsplit_once('/') {
            Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
            None => ("/", dest.as_str()),
        };
        if let ItemSource::Git(g) = &item.src {
            execute_git(g, dest, plan, upper, view, limits)?;
            continue;
        }
        let owner = plan.chown;
        if let ItemSource::Archive(path) = &item.src {
            last_parent = None;
            let (mut comps, _) = view.resolve(parent, true)?;
            comps.extend(fsutil::clean_components(name));
            let dir = fsutil::ensure_dirs(upper, view, &comps, owner)?;
            extract_keeping_dest(path, &dir, limits)?;
            continue;
        }
        let parent_dir = match &last_parent {
            Some((p, dir)) if *p == parent => dir.clone(),
            _ => {
                let (comps, _) = view.resolve(parent, true)?;
                let dir = fsutil::ensure_dirs(upper, view, &comps, owner)?;
                last_parent = Some((parent, dir.clone()));
                dir
            }
        };
        if name.is_empty() {
            // dest is "/": the root directory itself.
            continue;
        }
        let path = parent_dir.join(name);
        let (uid, gid) = owner.unwrap_or((item.uid, item.gid));
        // The top directory of a copy is made 0755, as BuildKit makes a
        // destination directory; --chmod applies to everything below it,
        // directories too (BuildKit 0.13).
        let mode = match item.src {
            ItemSource::Dir if item.rel.is_empty() => 0o755,
            _ => plan.chmod.unwrap_or(item.mode),
        };
        match &item.src {
            ItemSource::Dir
                if item.rel.is_empty() && view.stat(dest)?.is_some_and(|f| f.meta.is_dir()) =>
            {
                // Copying a directory's contents into one the image already
                // has: that directory keeps its mode and owner, and takes the
                // source directory's mtime (BuildKit 0.13). A symlink to it
                // is followed, as BuildKit writes through it.
                let (comps, _) = view.resolve(dest, true)?;
                let dir = fsutil::ensure_dirs(upper, view, &comps, None)?;
                dir_fixups.push((dir, item.mtime_ns));
            }
            ItemSource::Dir
                if item.rel.is_empty()
                    && view
                        .stat(dest)?
                        .is_some_and(|f| !f.meta.is_dir() && !f.meta.file_type().is_symlink()) =>
            {
                bail!("cannot copy a directory to {dest}: the image has a file there (not a directory)");
            }
            ItemSource::Dir => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&path)?;
                        fs::create_dir(&path)?;
                    }
                    Err(_) => {
                        // A directory that exists below keeps its place;
                        // we only need it in the upper to hold children.
                        fs::create_dir(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                    }
                }
                fsutil::lchown(&path, uid, gid)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                dir_fixups.push((path, item.mtime_ns));
            }
            ItemSource::File(src) => files.push(FileJob {
                src,
                path,
                owner: (uid, gid),
                mode,
                mtime_ns: item.mtime_ns,
            }),
            ItemSource::Bytes(b) => {
                remove_any(&path)?;
                fs::write(&path, b)?;
                fsutil::lchown(&path, uid, gid)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                if item.mtime_ns != 0 {
                    fsutil::set_mtime(&path, item.mtime_ns)?;
                }
            }
            ItemSource::Link(target) => {
                remove_any(&path)?;
                std::os::unix::fs::symlink(target, &path)?;
                fsutil::lchown(&path, uid, gid)?;
                fsutil::set_mtime(&path, item.mtime_ns)?;
            }
            ItemSource::Node { format, rdev } => {
                remove_any(&path)?;
                use rustix::fs::{mknodat, FileType, Mode, CWD};
                mknodat(
                    CWD,
                    &path,
                    FileType::from_raw_mode(*format as _),
                    Mode::from_raw_mode(mode as _),
                    *rdev as _,
                )
                .with_context(|| format!("making {}", path.display()))?;
                fsutil::lchown(&path, uid, gid)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                fsutil::set_mtime(&path, item.mtime_ns)?;
            }
            ItemSource::Archive(_) | ItemSource::Git(_) => unreachable!("handled above"),
        }
    }
    copy_batch(&mut files, &mut links)?;
    fsutil::restore_dir_mtimes(&dir_fixups)?;
    Ok(())
}

/// ADD of a git repository: fetched now, its tree copied to `dest`.
fn execute_git(
    g: &GitItem,
    dest: &str,
    plan: &CopyPlan,
    upper: &Path,
    view: &RootView,
    limits: &kiln_store::layer::Limits,
) -> Result<()> {
    let root = g.source.checkout(&g.commit, &g.scratch)?;
    let mtime = super::git::GitSource::commit_time_ns(&g.scratch, &g.commit)?;
    let tree = CopyPlan {
        items: super::git::tree_items(&root, dest, g.keep_git_dir, mtime)?,
        chown: plan.chown,
        chmod: plan.chmod,
    };
    execute(&tree, upper, view, limits)
}

/// Hard links inside one copied source stay hard links, as BuildKit keeps
/// them: the first copy of an inode is remembered, later names link to it.
#[derive(Default)]
struct HardLinks {
    seen: std::collections::HashMap<(u64, u64), PathBuf>,
}

impl HardLinks {
    /// The earlier copy of the source whose metadata is `m`, if any; else
    /// `dest` is remembered as its copy.
    fn earlier_copy(&mut self, m: &fs::Metadata, dest: &Path) -> Option<PathBuf> {
        if m.nlink() < 2 {
            return None;
        }
        match self.seen.entry((m.dev(), m.ino())) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.get().clone()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(dest.to_path_buf());
                None
            }
        }
    }
}

/// A regular file to copy, its owner, mode and mtime decided.
struct FileJob<'a> {
    src: &'a Path,
    path: PathBuf,
    owner: (u32, u32),
    mode: u32,
    mtime_ns: i64,
}

/// Batches of at least this many files are copied in parallel.
const PARALLEL_FILES: usize = 16;

/// Copies the files of `batch` (all of one source, at distinct paths): in
/// parallel when there are enough of them. The copy is the kernel's
/// (copy_file_range into new page-cache pages) and a core copies ~1 GB/s,
/// so on 2 cores this halves the copy of a 200 MB context. Files with more
/// than one link are copied afterwards, in order, so that a hard link
/// always finds the copy it links to.
fn copy_batch(batch: &mut Vec<FileJob<'_>>, links: &mut HardLinks) -> Result<()> {
    use rayon::prelude::*;
    let jobs = std::mem::take(batch);
    if jobs.len() < PARALLEL_FILES {
        return jobs
            .iter()
            .try_for_each(|j| copy_file(j, Some(links)).map(drop));
    }
    let linked: Vec<Option<usize>> = jobs
        .par_iter()
        .enumerate()
        .map(|(i, j)| Ok((!copy_file(j, None)?).then_some(i)))
        .collect::<Result<_>>()?;
    for i in linked.into_iter().flatten() {
        copy_file(&jobs[i], Some(links))?;
    }
    Ok(())
}

/// Copies one regular file to `path` through open descriptors: the source
/// opened once (never through a symlink) and its size and link count read
/// from that descriptor; the destination created exclusively (what an
/// earlier source left at that name is removed only when there is
/// something), filled up to the size, then given owner, mode and mtime on
/// its descriptor. Ten system calls where paths took sixteen. Without
/// `links`, a file with more than one link is left alone: false.
fn copy_file(j: &FileJob<'_>, links: Option<&mut HardLinks>) -> Result<bool> {
    let (src, path) = (j.src, j.path.as_path());
    let from = open_source(src)?;
    let meta = from
        .metadata()
        .with_context(|| format!("reading {}", src.display()))?;
    match links {
        None if meta.nlink() > 1 => return Ok(false),
        None => {}
        Some(links) => {
            if let Some(first) = links.earlier_copy(&meta, path) {
                replacing(path, |p| fs::hard_link(&first, p)).with_context(|| {
                    format!("linking {} to {}", path.display(), first.display())
                })?;
                return Ok(true);
            }
        }
    }
    let to = replacing(path, |p| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    })
    .with_context(|| format!("creating {}", path.display()))?;
    copy_contents(&from, &to, meta.len())
        .with_context(|| format!("copying {} to {}", src.display(), path.display()))?;
    std::os::unix::fs::fchown(&to, Some(j.owner.0), Some(j.owner.1))?;
    to.set_permissions(fs::Permissions::from_mode(j.mode))?;
    let ts = rustix::fs::Timespec {
        tv_sec: j.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: j.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::futimens(
        &to,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
    )?;
    Ok(true)
}

/// Runs `make` on `path`; if something is in the way, removes it and runs
/// `make` once more.
fn replacing<T>(path: &Path, make: impl Fn(&Path) -> std::io::Result<T>) -> Result<T> {
    match make(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_any(path)?;
            Ok(make(path)?)
        }
        r => Ok(r?),
    }
}

/// Copies `size` bytes (or up to the end, if the file shrank) from the
/// start of `from` to `to`: `copy_file_range` in the kernel, one call for
/// most files; a plain read/write copy where the filesystems cannot.
fn copy_contents(from: &fs::File, mut to: &fs::File, size: u64) -> std::io::Result<()> {
    let mut left = size;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(from, None, to, None, want) {
            Ok(0) => return Ok(()),
            Ok(n) => left -= n as u64,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => {
                // The offsets moved with what was copied: go on from there.
                std::io::copy(&mut from.take(left), &mut to)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    Ok(())
}

/// Extracts into `dir` as BuildKit does: an entry for the archive's root
/// (`./`) does not change the destination directory's mode or owner, and
/// the destination's mtime is that of a directory just written into.
fn extract_keeping_dest(path: &Path, dir: &Path, limits: &kiln_store::layer::Limits) -> Result<()> {
    let before = fs::symlink_metadata(dir)?;
    extract_archive(path, dir, limits)?;
    fsutil::lchown(dir, before.uid(), before.gid())?;
    fs::set_permissions(dir, fs::Permissions::from_mode(before.mode() & 0o7777))?;
    let wrote = fs::read_dir(dir)?.next().is_some();
    let mtime = if wrote {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        now.as_nanos() as i64
    } else {
        fsutil::mtime_ns(&before)
    };
    fsutil::set_mtime(dir, mtime)?;
    Ok(())
}

/// ADD's archive extraction: tar, optionally gzip/bzip2/xz/zstd
/// compressed, through the store's safe applier (every path resolved
/// inside `dir`).
fn extract_archive(path: &Path, dir: &Path, limits: &kiln_store::layer::Limits) -> Result<()> {
    let kind = archive_kind(path)?;
    let mut f = open_source(path)?;
    f.seek(SeekFrom::Start(0))?;
    let mut reader: Box<dyn Read> = match kind {
        Some("bzip2") => Box::new(bzip2::read::MultiBzDecoder::new(f)),
        Some("xz") => Box::new(xz2::read::XzDecoder::new_multi_decoder(f)),
        // plain, gzip and zstd are recognised by the applier itself
        _ => Box::new(f),
    };
    kiln_store::layer::apply_layer(
        &mut reader,
        dir,
        kiln_store::layer::WhiteoutMode::Apply,
        limits,
    )
    .with_context(|| format!("extracting {}", path.display()))?;
    Ok(())
}

/// Largest file `ADD <url>` accepts, and how long a download may take.
pub const URL_MAX_BYTES: u64 = 8 << 30;
pub const URL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A file fetched for `ADD <url>`: where it is, its sha256 and mtime.
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub mtime_ns: i64,
    pub name: String,
}

/// The file name ADD gives a URL's content: the last path segment.
pub fn url_file_name(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = no_query
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(no_query);
    let path = after_scheme.split_once('/').map(|(_, p)| p).unwrap_or("");
    let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    if name.is_empty() {
        "index.html".into()
    } else {
        name.to_string()
    }
}

/// Downloads `url` into `dir`, hashing as it streams, with a size and a
/// time limit; with `checksum` ("sha256:<hex>") the content must match.
pub fn fetch_url(url: &str, dir: &Path, checksum: Option<&str>) -> Result<Fetched> {
    use sha2::Digest as _;
    use std::io::Write as _;
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(URL_TIMEOUT))
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| anyhow!("ADD {url}: {e}"))?;
    let mtime_ns = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
        .map(|t| t.timestamp() * 1_000_000_000)
        .unwrap_or(0);
    let name = url_file_name(url);
    let path = dir.join("download");
    let mut out = fs::File::create(&path)?;
    let mut reader = resp.into_body().into_reader().take(URL_MAX_BYTES + 1);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| anyhow!("ADD {url}: reading the response: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > URL_MAX_BYTES {
            bail!("ADD {url}: larger than kiln's limit of {URL_MAX_BYTES} bytes");
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    let sha256 = hex::encode(hasher.finalize());
    if let Some(want) = checksum {
        let want = want.strip_prefix("sha256:").ok_or_else(|| {
            anyhow!("ADD --checksum={want}: kiln verifies sha256 checksums (sha256:<hex>)")
        })?;
        if !want.eq_ignore_ascii_case(&sha256) {
            bail!("ADD {url}: checksum mismatch: expected sha256:{want}, got sha256:{sha256}");
        }
    }
    Ok(Fetched {
        path,
        sha256,
        mtime_ns,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_paths_cannot_leave_the_context() {
        assert_eq!(context_rel("./a/../b").unwrap(), "b");
        assert_eq!(context_rel("/abs/x").unwrap(), "abs/x");
        assert!(context_rel("../x").is_err());
        assert!(context_rel("a/../../x").is_err());
    }

    #[test]
    fn a_source_that_became_a_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        fs::write(&host, "host file").unwrap();
        let src = d.path().join("src");
        std::os::unix::fs::symlink(&host, &src).unwrap();
        let e = open_source(&src).unwrap_err().to_string();
        assert!(e.contains("src is now a symlink"), "{e}");
        assert!(archive_kind(&src).is_err());
        let mut s = String::new();
        open_source(&host).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "host file");
    }

    #[test]
    fn glob_does_not_cross_directories() {
        assert!(glob_match("*.py", "app.py"));
        assert!(!glob_match("*.py", "sub/app.py"));
        assert!(glob_match("sub/*.py", "sub/app.py"));
    }

    fn file_item(rel: &str, src: &Path, mode: u32, mtime_ns: i64) -> Item {
        Item {
            rel: rel.into(),
            mode,
            uid: 0,
            gid: 0,
            mtime_ns,
            src: ItemSource::File(src.to_path_buf()),
        }
    }

    #[test]
    fn a_large_copy_is_the_same_as_one_file_at_a_time() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        let mut items = vec![(
            "/data".to_string(),
            Item {
                rel: String::new(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: 7_000_000_000,
                src: ItemSource::Dir,
            },
        )];
        // Enough files for the parallel batch, two of them one inode.
        for i in 0..40 {
            let src = ctx.join(format!("f{i:02}"));
            if i == 21 {
                fs::hard_link(ctx.join("f20"), &src).unwrap();
            } else {
                fs::write(&src, format!("file {i}").repeat(i + 1)).unwrap();
            }
            let rel = format!("f{i:02}");
            let mode = if i % 2 == 0 { 0o640 } else { 0o4755 };
            let mtime = 1_000_000_000 * (i as i64 + 1) + 5;
            items.push((format!("/data/{rel}"), file_item(&rel, &src, mode, mtime)));
        }
        // A second source whose file takes the place of the first's.
        items.push((
            "/data/f03".to_string(),
            file_item("", &ctx.join("f39"), 0o600, 42),
        ));
        let plan = CopyPlan {
            items,
            chown: None,
            chmod: None,
        };
        let upper = d.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let view = RootView::new(vec![]);
        execute(&plan, &upper, &view, &kiln_store::layer::Limits::default()).unwrap();
        for i in 0..40 {
            let got = upper.join(format!("data/f{i:02}"));
            let m = fs::symlink_metadata(&got).unwrap();
            let (want_src, mode, mtime) = match i {
                3 => (39, 0o600, 42),
                // A link to f20's copy: one inode, f20's metadata.
                21 => (20, 0o640, 21_000_000_005),
                _ if i % 2 == 0 => (i, 0o640, 1_000_000_000 * (i as i64 + 1) + 5),
                _ => (i, 0o4755, 1_000_000_000 * (i as i64 + 1) + 5),
            };
            let want = fs::read(ctx.join(format!("f{want_src:02}"))).unwrap();
            assert_eq!(fs::read(&got).unwrap(), want, "f{i:02}");
            assert_eq!(m.mode() & 0o7777, mode, "f{i:02}");
            assert_eq!(m.mtime() * 1_000_000_000 + m.mtime_nsec(), mtime, "f{i:02}");
        }
        let a = fs::metadata(upper.join("data/f20")).unwrap();
        let b = fs::metadata(upper.join("data/f21")).unwrap();
        assert_eq!(a.ino(), b.ino(), "a hard link stays one");
        let dir = fs::metadata(upper.join("data")).unwrap();
        assert_eq!(dir.mtime(), 7, "the directory keeps its source's mtime");
    }

    #[test]
    fn a_file_copies_from_another_filesystem() {
        use std::io::{Seek, Write};
        // A memfd lives on tmpfs: copy_file_range to ext4 or any other
        // filesystem refuses (EXDEV) and the plain copy takes over.
        let fd = rustix::fs::memfd_create("kiln-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut from = fs::File::from(fd);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        from.write_all(&data).unwrap();
        from.rewind().unwrap();
        let d = tempfile::tempdir().unwrap();
        let to = fs::File::create(d.path().join("copy")).unwrap();
        copy_contents(&from, &to, data.len() as u64).unwrap();
        assert_eq!(fs::read(d.path().join("copy")).unwrap(), data);
    }

    #[test]
    fn chmod_is_octal() {
        assert_eq!(parse_chmod("755").unwrap(), 0o755);
        assert!(parse_chmod("u+x").is_err());
        assert!(parse_chmod("99999").is_err());
    }
}
