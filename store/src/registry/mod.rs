//! The OCI Distribution client: pull into and push from a [`Store`].
//!
//! - Manifests: OCI image index / Docker manifest list (platform selection),
//!   OCI and Docker schema 2 image manifests. Schema 1 and documents that
//!   are both an index and a manifest are refused. Manifests are capped at
//!   4 MiB and configs at 8 MiB, enforced while reading.
//! - Blobs stream into the blob store and are committed only after their
//!   digest and size were verified; a failed download leaves nothing (no
//!   partial data is kept or resumed). Layers are fetched three at a time.
//! - Layers whose descriptor lists foreign `urls` are fetched from the
//!   registry itself like any other layer; the foreign URLs are never
//!   contacted.
//! - Auth: anonymous, Basic, and Bearer tokens from the `WWW-Authenticate`
//!   challenge, cached per scope. Credentials come from Docker's
//!   `config.json` ([`credentials`]), are never logged, and never follow a
//!   redirect to another host (redirects are followed by hand).
//! - `http://` only for loopback and registries listed as insecure.

mod error;
mod http;
mod manage;
mod push;
mod push_index;

pub mod credentials;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use rusqlite::params;
use serde_json::Value;

use crate::digest::{sha256_digest, Digest};
use crate::error::StoreError;
use crate::image::{self, ImageConfig, Manifest};
use crate::layer;
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};

pub use credentials::Credentials;
pub use error::RegistryError;
pub use push::{BlobOutcome, Compression, PushOptions, PushReport};

use http::{Http, Req, Scope};

/// Largest manifest or index accepted (declared or actual).
pub const MANIFEST_MAX: u64 = 4 << 20;
/// Largest image config accepted.
pub const CONFIG_MAX: u64 = 8 << 20;
/// Layers downloaded / uploaded at once.
const PARALLEL: usize = 3;

/// Docker schema 1 media types (refused).
const MEDIA_TYPE_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const MEDIA_TYPE_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What `pull` asks for.
pub const ACCEPT_ALL: &[&str] = &[
    image::MEDIA_TYPE_INDEX,
    image::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    image::MEDIA_TYPE_MANIFEST,
    image::MEDIA_TYPE_DOCKER_MANIFEST,
];

/// How the client reaches registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// `host[:port]` that may be spoken to over plain http (and over TLS
    /// without verification when it speaks https). Loopback hosts may
    /// always use http.
    pub insecure: Vec<String>,
    /// Extra PEM roots, added to the system roots
    /// (`$SSL_CERT_FILE` or `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_files: Vec<PathBuf>,
    /// Default: `$DOCKER_CONFIG`, else `$HOME/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Retries (with backoff, honouring `Retry-After`) for 429, 5xx and
    /// broken connections.
    pub retries: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            docker_config_dir: None,
            retries: 4,
        }
    }
}

/// An image platform (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The machine kiln runs on (`linux/amd64` here).
    pub fn host() -> Platform {
        let architecture = image::host_architecture().to_string();
        let variant = match architecture.as_str() {
            "arm64" => Some("v8".to_string()),
            "arm" => Some("v7".to_string()),
            _ => None,
        };
        Platform {
            os: "linux".into(),
            architecture,
            variant,
        }
    }

    /// Parses `os/arch[/variant]`, normalising as containerd does
    /// (`x86_64` = `amd64`, `aarch64` = `arm64`, arm64's default variant
    /// `v8`, arm's `v7`).
    pub fn parse(s: &str) -> Result<Platform, RegistryError> {
        let bad = || RegistryError::InvalidPlatform(s.to_string());
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let os = parts[0].to_ascii_lowercase();
        let mut arch = parts[1].to_ascii_lowercase();
        let mut variant = parts.get(2).map(|v| v.to_ascii_lowercase());
        match arch.as_str() {
            "x86_64" | "x86-64" => arch = "amd64".into(),
            "aarch64" => arch = "arm64".into(),
            "armhf" => {
                arch = "arm".into();
                variant.get_or_insert_with(|| "v7".into());
            }
            "armel" => {
                arch = "arm".into();
                variant.get_or_insert_with(|| "v6".into());
            }
            "i386" | "i686" => arch = "386".into(),
            _ => {}
        }
        if arch == "arm64" && variant.is_none() {
            variant = Some("v8".into());
        }
        if arch == "arm" && variant.is_none() {
            variant = Some("v7".into());
        }
        if !os
            .bytes()
            .chain(arch.bytes())
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad());
        }
        Ok(Platform {
            os,
            architecture: arch,
            variant,
        })
    }

    /// How well an index entry's `platform` matches: `None` if not at all,
    /// higher is better.
    fn score(&self, p: &Value) -> Option<u8> {
        let os = p.get("os").and_then(Value::as_str)?;
        let arch = p.get("architecture").and_then(Value::as_str)?;
        let cand = Platform::parse(&format!("{os}/{arch}")).ok()?;
        if cand.os != self.os || cand.architecture != self.architecture {
            return None;
        }
        let variant = p
            .get("variant")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .or(cand.variant);
        match (&self.variant, &variant) {
            (a, b) if a == b => Some(2),
            (None, Some(_)) | (Some(_), None) => Some(1),
            _ => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Progress of a pull or push.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Resolved {
        reference: &'a str,
        digest: &'a Digest,
    },
    BlobStart {
        digest: &'a Digest,
        size: u64,
    },
    BlobProgress {
        digest: &'a Digest,
        done: u64,
        size: u64,
    },
    /// `outcome`: `downloaded`, `exists`, `mounted` or `uploaded`.
    BlobDone {
        digest: &'a Digest,
        outcome: &'a str,
    },
}

/// A registry client. `Send + Sync`: one per process, shared by threads.
pub struct Client {
    http: Http,
}

/// The repository path of a reference (`library/alpine`).
fn repo_of(r: &Reference) -> &str {
    r.path()
}

fn name_of(r: &Reference) -> String {
    format!("{}/{}", r.domain(), r.path())
}

/// What error messages call a reference (`localhost:5000/foo:1.0`).
fn display_ref(r: &Reference) -> String {
    let mut s = name_of(r);
    if let Some(t) = r.tag() {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = r.digest() {
        s.push('@');
        s.push_str(d.as_str());
    }
    s
}

/// Reads at most `max` bytes of `r`; more is an error (`Err(None)`), as is a
/// read failure (`Err(Some(e))`).
fn read_capped(r: &mut dyn Read, max: u64) -> Result<Vec<u8>, Option<io::Error>> {
    let mut buf = Vec::new();
    r.take(max + 1).read_to_end(&mut buf).map_err(Some)?;
    if buf.len() as u64 > max {
        return Err(None);
    }
    Ok(buf)
}

/// Counts bytes read, reports progress, and remembers whether the error
/// came from the network (as opposed to the disk on the write side).
struct Progress<'a, R> {
    inner: R,
    done: u64,
    size: u64,
    digest: &'a Digest,
    events: &'a (dyn Fn(Event) + Sync),
    last: u64,
    failed: Option<io::ErrorKind>,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.done += n as u64;
                // About every 1 MiB, and at the end.
                if self.done - self.last >= (1 << 20) || (n > 0 && self.done == self.size) {
                    self.last = self.done;
                    (self.events)(Event::BlobProgress {
                        digest: self.digest,
                        done: self.done,
                        size: self.size,
                    });
                }
                Ok(n)
            }
            Err(e) => {
                self.failed = Some(e.kind());
                Err(e)
            }
        }
    }
}

/// Runs `f` over `items`, `PARALLEL` at a time; the first error stops the
/// others from starting new items and is returned.
fn parallel<T: Sync, R: Send>(
    items: &[T],
    f: &(dyn Fn(&T) -> Result<R, RegistryError> + Sync),
) -> Result<Vec<R>, RegistryError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let first_err: Mutex<Option<(usize, RegistryError)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(items.len()) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                match f(item) {
                    Ok(r) => results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        let mut fe = first_err.lock().unwrap_or_else(|p| p.into_inner());
                        // Report the earliest item's error, deterministically.
                        if fe.as_ref().is_none_or(|(j, _)| i < *j) {
                            *fe = Some((i, e));
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| {
                RegistryError::Config("internal: a parallel task did not finish".into())
            })
        })
        .collect()
}

/// What kind of document a manifest response is.
#[derive(Debug)]
enum Doc {
    Index(Vec<image::Descriptor>),
    Manifest(Manifest),
}

/// Classifies a manifest document, refusing schema 1 and ambiguous ones.
fn classify(bytes: &[u8], media_type: &str, what: &str) -> Result<Doc, RegistryError> {
    let unsupported = |m: String| RegistryError::Unsupported {
        reference: what.to_string(),
        message: m,
    };
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| unsupported(format!("manifest is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| unsupported("manifest is not a JSON object".into()))?;
    let body_mt = obj.get("mediaType").and_then(Value::as_str).unwrap_or("");
    let schema = obj.get("schemaVersion").and_then(Value::as_u64);
    if schema == Some(1)
        || [media_type, body_mt]
            .iter()
            .any(|m| *m == MEDIA_TYPE_SCHEMA1 || *m == MEDIA_TYPE_SCHEMA1_SIGNED)
    {
        return Err(unsupported(
            "Docker schema 1 manifests are not supported (deprecated since 2017; push the image again with a current client)".into(),
        ));
    }
    if schema != Some(2) {
        return Err(unsupported(format!(
            "unsupported manifest schemaVersion {}",
            obj.get("schemaVersion")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(missing)".into())
        )));
    }
    let is_index = obj.contains_key("manifests");
    let is_manifest = obj.contains_key("layers") || obj.contains_key("config");
    if is_index && is_manifest {
        return Err(unsupported(
            "document is both an index (\"manifests\") and a manifest (\"config\"/\"layers\"); refusing an ambiguous document".into(),
        ));
    }
    // A media type in the body must agree with the response's.
    let index_types = [
        image::MEDIA_TYPE_INDEX,
        image::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    ];
    let manifest_types = [
        image::MEDIA_TYPE_MANIFEST,
        image::MEDIA_TYPE_DOCKER_MANIFEST,
    ];
    for mt in [media_type, body_mt] {
        if (is_index && manifest_types.contains(&mt)) || (is_manifest && index_types.contains(&mt))
        {
            return Err(unsupported(format!(
                "media type {mt} does not match the document's content"
            )));
        }
    }
    if is_index {
        let idx: image::Index =
            serde_json::from_value(v).map_err(|e| unsupported(format!("invalid index: {e}")))?;
        return Ok(Doc::Index(idx.manifests));
    }
    if is_manifest {
        let m: Manifest =
            serde_json::from_value(v).map_err(|e| unsupported(format!("invalid manifest: {e}")))?;
        return Ok(Doc::Manifest(m));
    }
    Err(unsupported(format!(
        "neither an image index nor an image manifest (media type {media_type:?})"
    )))
}

fn is_layer_type(mt: &str) -> bool {
    matches!(
        mt,
        layer::MEDIA_TYPE_TAR
            | layer::MEDIA_TYPE_TAR_GZIP
            | layer::MEDIA_TYPE_TAR_ZSTD
            | layer::MEDIA_TYPE_DOCKER_TAR_GZIP
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
    )
}

impl Store {
    /// Remembers that `digest` is in `registry/repo` (for cross-repository
    /// mounts).
    pub(crate) fn registry_blob_known(
        &self,
        digest: &Digest,
        registry: &str,
        repo: &str,
    ) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT INTO registry_blobs (digest, registry, repo, used_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(digest, registry, repo) DO UPDATE SET used_ms = excluded.used_ms",
            )?
            .execute(params![digest.as_str(), registry, repo, crate::store::now_ms()])?;
        Ok(())
    }

    /// Other repositories of `registry` where `digest` is known, most
    /// recently used first.
    pub(crate) fn registry_blob_repos(
        &self,
        digest: &Digest,
        registry: &str,
        except: &str,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT repo FROM registry_blobs WHERE digest = ?1 AND registry = ?2 AND repo != ?3 ORDER BY used_ms DESC LIMIT 4",
        )?;
        let rows = stmt.query_map(params![digest.as_str(), registry, except], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Client {
    pub fn new(cfg: RegistryConfig) -> Result<Client, RegistryError> {
        Ok(Client {
            http: Http::new(cfg)?,
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        self.http.config()
    }

    /// `GET /v2/` with these credentials. `Ok(())` if accepted.
    pub fn check_login(&self, registry: &str, creds: &Credentials) -> Result<(), RegistryError> {
        // `https://index.docker.io/v1/`, `https://host:5000/`, `host:5000`.
        let bare = registry
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let bare = bare.split('/').next().unwrap_or(bare);
        let registry = match bare {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "" => {
                crate::reference::DEFAULT_DOMAIN
            }
            other => other,
        };
        let scope = Scope {
            domain: registry.to_string(),
            scopes: Vec::new(),
            action: "login",
            name: registry.to_string(),
            creds: Some(creds.clone()),
        };
        let resp = self.http.send(&scope, &Req::new("GET", "/v2/"))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            _ => Err(self
                .http
                .status_error(&scope, "GET", &format!("{registry}/v2/"), resp)),
        }
    }

    /// The manifest or index `r` names (tag or digest): its bytes (at most
    /// 4 MiB, declared or actual), media type and digest (verified when `r`
    /// names one, and against `Docker-Content-Digest` when sent).
    pub fn get_manifest(
        &self,
        r: &Reference,
        accept: &[&str],
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let scope = Scope::pull(r.domain(), repo_of(r));
        self.get_manifest_scoped(&scope, r, accept)
    }

    fn get_manifest_scoped(
        &self,
        scope: &Scope,
        r: &Reference,
        accept: &[&str],
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let what = display_ref(r);
        let reference = match (r.digest(), r.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let path = format!("/v2/{}/manifests/{reference}", repo_of(r));
        let accept = if accept.is_empty() {
            ACCEPT_ALL
        } else {
            accept
        };
        let resp = self.http.send(
            scope,
            &Req::new("GET", path).header("Accept", accept.join(", ")),
        )?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::ManifestUnknown { reference: what }),
            _ => return Err(self.http.status_error(scope, "GET", &what, resp)),
        }
        let declared = resp.body().content_length();
        if let Some(n) = declared.filter(|n| *n > MANIFEST_MAX) {
            return Err(RegistryError::TooLarge {
                what: format!("manifest {what}"),
                size: n,
                limit: MANIFEST_MAX,
            });
        }
        let content_type = http::header_string(&resp, "content-type").unwrap_or_default();
        let header_digest = http::header_string(&resp, "docker-content-digest");
        let mut reader = resp.into_body().into_reader();
        let bytes = read_capped(&mut reader, MANIFEST_MAX).map_err(|e| match e {
            None => RegistryError::TooLarge {
                what: format!("manifest {what}"),
                size: MANIFEST_MAX + 1,
                limit: MANIFEST_MAX,
            },
            Some(e) => RegistryError::Transport {
                registry: r.domain().to_string(),
                message: format!("reading manifest {what}: {e}"),
            },
        })?;
        let digest = sha256_digest(&bytes);
        if let Some(want) = r.digest() {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {what}"),
                    actual: digest,
                });
            }
        } else if let Some(h) = header_digest
            .as_deref()
            .and_then(|h| h.trim().parse::<Digest>().ok())
        {
            if h != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {what} (registry says {h})"),
                    actual: digest,
                });
            }
        }
        let body_mt = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
            v.get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let header_mt = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let media_type = body_mt.filter(|m| !m.is_empty()).unwrap_or(header_mt);
        Ok((bytes, media_type, digest))
    }

    /// A blob of `repo` into the store (digest and size verified,
    /// `max_size` cap).
    pub fn fetch_blob(
        &self,
        store: &Store,
        repo: &Reference,
        digest: &Digest,
        size: u64,
        max_size: u64,
    ) -> Result<(), RegistryError> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let scope = Scope::pull(repo.domain(), repo_of(repo));
        self.download(store, &scope, repo, digest, size, max_size, &|_| {})
    }

    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        store: &Store,
        scope: &Scope,
        repo: &Reference,
        digest: &Digest,
        size: u64,
        max_size: u64,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<(), RegistryError> {
        let what = format!("blob {digest} from {}", name_of(repo));
        if size > max_size {
            return Err(RegistryError::TooLarge {
                what,
                size,
                limit: max_size,
            });
        }
        events(Event::BlobStart { digest, size });
        let path = format!("/v2/{}/blobs/{digest}", repo_of(repo));
        let mut attempt = 0;
        loop {
            let resp = self
                .http
                .send(scope, &Req::new("GET", path.as_str()).follow())?;
            match resp.status().as_u16() {
                200 => {}
                404 => {
                    return Err(RegistryError::BlobUnknown {
                        repo: name_of(repo),
                        digest: digest.clone(),
                    })
                }
                _ => return Err(self.http.status_error(scope, "GET", &what, resp)),
            }
            // A declared length that disagrees with the descriptor is
            // refused before reading anything.
            if let Some(n) = resp.body().content_length().filter(|n| *n != size) {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: size,
                    actual: n,
                });
            }
            let mut reader = Progress {
                inner: resp.into_body().into_reader(),
                done: 0,
                size,
                digest,
                events,
                last: 0,
                failed: None,
            };
            match store.write_blob(&mut reader, Some(digest), Some(size)) {
                Ok(_) => break,
                Err(StoreError::DigestMismatch { actual, .. }) => {
                    return Err(RegistryError::DigestMismatch { what, actual })
                }
                Err(StoreError::SizeMismatch { actual, .. }) => {
                    return Err(RegistryError::SizeMismatch {
                        what,
                        expected: size,
                        actual,
                    })
                }
                Err(e) if reader.failed.is_some() => {
                    // The connection broke: start again from the first byte
                    // (nothing partial was kept).
                    if attempt < self.http.config().retries {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(200 << attempt.min(8)));
                        continue;
                    }
                    return Err(RegistryError::Transport {
                        registry: repo.domain().to_string(),
                        message: format!(
                            "{what}: connection broke after {} of {size} bytes: {}",
                            reader.done,
                            match e {
                                StoreError::Io { cause, .. } => cause.to_string(),
                                other => other.to_string(),
                            }
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        store.registry_blob_known(digest, repo.domain(), repo_of(repo))?;
        Ok(())
    }

    /// A small blob (config) read into memory, verified, capped.
    fn fetch_small(
        &self,
        store: &Store,
        scope: &Scope,
        repo: &Reference,
        d: &image::Descriptor,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if !store.has_blob(&d.digest) {
            self.download(store, scope, repo, &d.digest, d.size, max, &|_| {})?;
        }
        let bytes = store.read_blob(&d.digest)?;
        if bytes.len() as u64 != d.size {
            return Err(RegistryError::SizeMismatch {
                what: format!("blob {} from {}", d.digest, name_of(repo)),
                expected: d.size,
                actual: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Pulls `r` for `platform` into `store` (see the module docs). Keeps
    /// the registry's manifest bytes, so the record's `manifest_digest` is
    /// the registry's digest of the platform manifest. Does not tag.
    pub fn pull(
        &self,
        store: &Store,
        r: &Reference,
        platform: &Platform,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<ImageRecord, RegistryError> {
        self.pull_with(store, r, platform, events, false)
    }

    /// [`Client::pull`] without the layers' bytes: the manifest and config
    /// are stored, the layers are recorded as known remotely (in `r`'s
    /// repository) and fetched when something reads them. What a build's
    /// FROM needs: a step that runs on the base fetches it, a fully cached
    /// build pushed to the same registry never does.
    pub fn pull_lazy(
        &self,
        store: &Store,
        r: &Reference,
        platform: &Platform,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<ImageRecord, RegistryError> {
        self.pull_with(store, r, platform, events, true)
    }

    fn pull_with(
        &self,
        store: &Store,
        r: &Reference,
        platform: &Platform,
        events: &(dyn Fn(Event) + Sync),
        lazy: bool,
    ) -> Result<ImageRecord, RegistryError> {
        let _lease = store.lease()?;
        let scope = Scope::pull(r.domain(), repo_of(r));
        let (bytes, media_type, digest, manifest) =
            self.platform_manifest(&scope, r, platform, events)?;
        let (config, layers) = self.config_and_layers(store, &scope, r, &manifest, events, lazy)?;
        let stored = store.write_blob_bytes_typed(&bytes, &media_type)?;
        debug_assert_eq!(stored, digest);
        Ok(store.record_image(&digest, &manifest.config.digest, config, &layers)?)
    }

    /// The config of the image `r` names for `platform` (its bytes,
    /// verified) and its layers, recorded as known remotely in `r`'s
    /// repository, not fetched; no image is recorded. What reading an
    /// image's inline build cache needs.
    pub fn image_config_lazy(
        &self,
        store: &Store,
        r: &Reference,
        platform: &Platform,
    ) -> Result<(Vec<u8>, Vec<crate::LayerInfo>), RegistryError> {
        let _lease = store.lease()?;
        let scope = Scope::pull(r.domain(), repo_of(r));
        let (_, _, _, manifest) = self.platform_manifest(&scope, r, platform, &|_| {})?;
        let (_, layers) = self.config_and_layers(store, &scope, r, &manifest, &|_| {}, true)?;
        Ok((store.read_blob(&manifest.config.digest)?, layers))
    }

    /// The image manifest `r` names for `platform` (through its index, if
    /// it names one): bytes, media type, digest and the manifest.
    fn platform_manifest(
        &self,
        scope: &Scope,
        r: &Reference,
        platform: &Platform,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<(Vec<u8>, String, Digest, Manifest), RegistryError> {
        let scope = scope.clone();
        let what = display_ref(r);
        let (mut bytes, mut media_type, mut digest) =
            self.get_manifest_scoped(&scope, r, ACCEPT_ALL)?;
        events(Event::Resolved {
            reference: &what,
            digest: &digest,
        });
        let manifest = match classify(&bytes, &media_type, &what)? {
            Doc::Manifest(m) => m,
            Doc::Index(entries) => {
                let chosen = entries
                    .iter()
                    .filter(|e| {
                        e.media_type == image::MEDIA_TYPE_MANIFEST
                            || e.media_type == image::MEDIA_TYPE_DOCKER_MANIFEST
                    })
                    .filter_map(|e| {
                        e.platform
                            .as_ref()
                            .and_then(|p| platform.score(p))
                            .map(|s| (s, e))
                    })
                    // Highest score, first in the index among equals.
                    .fold(
                        None::<(u8, &image::Descriptor)>,
                        |best, (s, e)| match best {
                            Some((b, _)) if b >= s => best,
                            _ => Some((s, e)),
                        },
                    )
                    .map(|(_, e)| e.clone());
                let Some(entry) = chosen else {
                    let available: Vec<String> = entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref())
                        .filter_map(|p| {
                            let os = p.get("os")?.as_str()?;
                            let arch = p.get("architecture")?.as_str()?;
                            Some(match p.get("variant").and_then(Value::as_str) {
                                Some(v) => format!("{os}/{arch}/{v}"),
                                None => format!("{os}/{arch}"),
                            })
                        })
                        .filter(|p| p != "unknown/unknown")
                        .collect();
                    return Err(RegistryError::NoMatchingPlatform {
                        reference: what,
                        platform: platform.to_string(),
                        available: if available.is_empty() {
                            "none".into()
                        } else {
                            available.join(", ")
                        },
                    });
                };
                if entry.size > MANIFEST_MAX {
                    return Err(RegistryError::TooLarge {
                        what: format!("manifest {}@{}", name_of(r), entry.digest),
                        size: entry.size,
                        limit: MANIFEST_MAX,
                    });
                }
                let by_digest =
                    crate::reference::parse(&format!("{}@{}", name_of(r), entry.digest))?;
                let (b, mt, d) =
                    self.get_manifest_scoped(&scope, &by_digest, &[&entry.media_type])?;
                let inner_what = display_ref(&by_digest);
                match classify(&b, &mt, &inner_what)? {
                    Doc::Manifest(m) => {
                        bytes = b;
                        media_type = if mt.is_empty() {
                            entry.media_type.clone()
                        } else {
                            mt
                        };
                        digest = d;
                        m
                    }
                    Doc::Index(_) => {
                        return Err(RegistryError::Unsupported {
                            reference: inner_what,
                            message: "an index inside an index is not supported".into(),
                        })
                    }
                }
            }
        };
        Ok((bytes, media_type, digest, manifest))
    }

    /// The config of `manifest` (fetched, verified) and its layers:
    /// fetched, or (`lazy`) recorded as known remotely. Everything the
    /// manifest names is then known to be in `r`'s repository.
    fn config_and_layers(
        &self,
        store: &Store,
        scope: &Scope,
        r: &Reference,
        manifest: &Manifest,
        events: &(dyn Fn(Event) + Sync),
        lazy: bool,
    ) -> Result<(ImageConfig, Vec<crate::LayerInfo>), RegistryError> {
        let scope = scope.clone();
        let what = display_ref(r);
        // The config.
        if manifest.config.size > CONFIG_MAX {
            return Err(RegistryError::TooLarge {
                what: format!("config {} of {what}", manifest.config.digest),
                size: manifest.config.size,
                limit: CONFIG_MAX,
            });
        }
        let config_bytes = self.fetch_small(store, &scope, r, &manifest.config, CONFIG_MAX)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Unsupported {
                reference: what.clone(),
                message: format!("invalid image config {}: {e}", manifest.config.digest),
            })?;
        let Some(layers) = manifest.layer_infos(&config) else {
            return Err(RegistryError::Unsupported {
                reference: what,
                message: format!(
                    "the manifest lists {} layers but the config {} diff IDs",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        };
        for l in &manifest.layers {
            if !is_layer_type(&l.media_type) {
                return Err(RegistryError::Unsupported {
                    reference: what,
                    message: format!(
                        "layer {} has unsupported media type {}",
                        l.digest, l.media_type
                    ),
                });
            }
        }
        self.pull_layers(store, &scope, r, &manifest.layers, events, lazy)?;
        // Everything the manifest names is in that repository now, also
        // the blobs this store already had: later pushes can mount them.
        for d in std::iter::once(&manifest.config.digest)
            .chain(manifest.layers.iter().map(|l| &l.digest))
        {
            store.registry_blob_known(d, r.domain(), repo_of(r))?;
        }
        Ok((config, layers))
    }

    /// The layers of a pull, three at a time; those already in the store
    /// are not fetched again. `lazy`: recorded as known remotely instead.
    fn pull_layers(
        &self,
        store: &Store,
        scope: &Scope,
        r: &Reference,
        layers: &[image::Descriptor],
        events: &(dyn Fn(Event) + Sync),
        lazy: bool,
    ) -> Result<(), RegistryError> {
        let mut wanted: Vec<&image::Descriptor> = Vec::new();
        for l in layers {
            if store.has_blob(&l.digest) {
                events(Event::BlobDone {
                    digest: &l.digest,
                    outcome: "exists",
                });
            } else if lazy {
                store.record_remote_blob(
                    &l.digest,
                    l.size,
                    Some(&l.media_type),
                    r.domain(),
                    repo_of(r),
                )?;
                events(Event::BlobDone {
                    digest: &l.digest,
                    outcome: "known remotely (fetched when needed)",
                });
            } else if !wanted.iter().any(|w| w.digest == l.digest) {
                wanted.push(l);
            }
        }
        parallel(&wanted, &|l: &&image::Descriptor| {
            self.download(store, scope, r, &l.digest, l.size, u64::MAX, events)?;
            events(Event::BlobDone {
                digest: &l.digest,
                outcome: "downloaded",
            });
            Ok(())
        })?;
        Ok(())
    }

    /// Fetches a blob known remotely, not local, from the first of its
    /// sources that serves it (digest and size verified). The error names
    /// the registry repositories tried and the digest.
    pub fn fetch_remote(&self, store: &Store, blob: &crate::RemoteBlob) -> Result<(), StoreError> {
        let mut failures = Vec::new();
        for (registry, repo) in &blob.sources {
            let name = format!("{registry}/{repo}");
            let result = crate::reference::parse(&name)
                .map_err(RegistryError::from)
                .and_then(|r| {
                    let scope = Scope::pull(r.domain(), repo_of(&r));
                    self.download(
                        store,
                        &scope,
                        &r,
                        &blob.digest,
                        blob.size,
                        blob.size,
                        &|_| {},
                    )
                });
            match result {
                Ok(()) => return Ok(()),
                Err(e) => failures.push((name, e.to_string())),
            }
        }
        let registry = failures
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let message = failures
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Err(StoreError::RemoteFetch {
            digest: blob.digest.clone(),
            registry,
            message,
        })
    }

    /// Pushes a store image to `target` (see [`push`]).
    pub fn push(
        &self,
        store: &Store,
        image: &ImageRecord,
        target: &Reference,
        opts: &PushOptions,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<PushReport, RegistryError> {
        push::push(self, store, image, target, opts, events)
    }

    /// After [`Client::pull`] of `r` gave `image`: when `r` names an index
    /// holding attestation manifests about that image (BuildKit's SBOM and
    /// provenance), fetches them (verified by digest, size-limited) and
    /// records a local index of the image and them. `None` when there are
    /// none.
    pub fn pull_attestations(
        &self,
        store: &Store,
        r: &Reference,
        image: &ImageRecord,
    ) -> Result<Option<crate::indexes::IndexRecord>, RegistryError> {
        if r.digest() == Some(&image.manifest_digest) {
            return Ok(None);
        }
        let _lease = store.lease()?;
        let scope = Scope::pull(r.domain(), repo_of(r));
        let what = display_ref(r);
        let (bytes, media_type, _) = self.get_manifest_scoped(&scope, r, ACCEPT_ALL)?;
        let Doc::Index(entries) = classify(&bytes, &media_type, &what)? else {
            return Ok(None);
        };
        let subject = image.manifest_digest.to_string();
        let mut found = Vec::new();
        for e in entries.iter().filter(|e| {
            e.annotations
                .get("vnd.docker.reference.type")
                .map(String::as_str)
                == Some("attestation-manifest")
                && e.annotations.get("vnd.docker.reference.digest") == Some(&subject)
        }) {
            if e.size > MANIFEST_MAX {
                return Err(RegistryError::TooLarge {
                    what: format!("attestation manifest {}@{}", name_of(r), e.digest),
                    size: e.size,
                    limit: MANIFEST_MAX,
                });
            }
            // A manifest, so fetched from manifests/ (by digest, verified).
            let by_digest = crate::reference::parse(&format!("{}@{}", name_of(r), e.digest))?;
            let (m_bytes, _, got) =
                self.get_manifest_scoped(&scope, &by_digest, &[image::MEDIA_TYPE_MANIFEST])?;
            if got != e.digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("attestation manifest {}", e.digest),
                    actual: got,
                });
            }
            store.write_blob_bytes_typed(&m_bytes, image::MEDIA_TYPE_MANIFEST)?;
            let m: Manifest =
                serde_json::from_slice(&m_bytes).map_err(|err| RegistryError::Unsupported {
                    reference: what.clone(),
                    message: format!("attestation manifest {}: {err}", e.digest),
                })?;
            self.fetch_small(store, &scope, r, &m.config, CONFIG_MAX)?;
            for l in &m.layers {
                // Statements are JSON documents; an SBOM of a large image
                // is a few MB.
                self.fetch_small(store, &scope, r, l, 64 << 20)?;
            }
            found.push(crate::indexes::IndexEntry {
                manifest: e.digest.clone(),
                size: e.size,
                kind: crate::indexes::EntryKind::Attestation {
                    subject: image.manifest_digest.clone(),
                },
            });
        }
        if found.is_empty() {
            return Ok(None);
        }
        Ok(Some(store.write_index(&[image], &found)?))
    }

    /// Pushes a store image index to `target`: its images by digest, its
    /// attestations (about the pushed manifests), then the index at the tag.
    pub fn push_index(
        &self,
        store: &Store,
        index: &crate::indexes::IndexRecord,
        target: &Reference,
        opts: &PushOptions,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<PushReport, RegistryError> {
        push_index::push_index(self, store, index, target, opts, events)
    }

    /// Uploads a blob to `repo` unless it is there already (or can be
    /// mounted from another repository of the same registry).
    pub fn put_blob(
        &self,
        repo: &Reference,
        digest: &Digest,
        size: u64,
        open: &(dyn Fn() -> io::Result<Box<dyn Read + Send>> + Sync),
    ) -> Result<BlobOutcome, RegistryError> {
        push::put_blob(
            self,
            None,
            repo,
            digest,
            size,
            open,
            &PushOptions::default(),
            &|_| {},
        )
    }

    /// [`Client::put_blob`] of a blob in the store (which also remembers
    /// where it was pushed, for later mounts).
    pub fn put_store_blob(
        &self,
        store: &Store,
        repo: &Reference,
        digest: &Digest,
    ) -> Result<BlobOutcome, RegistryError> {
        let size = store.stored_or_remote_size(digest)?;
        let open = || push::store_blob_reader(store, digest);
        push::put_blob(
            self,
            Some(store),
            repo,
            digest,
            size,
            &open,
            &PushOptions::default(),
            &|_| {},
        )
    }

    /// Uploads a manifest (or index) to `target` (its tag, else its digest).
    /// Returns its digest.
    pub fn put_manifest(
        &self,
        target: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        push::put_manifest(self, target, media_type, bytes)
    }

    pub(crate) fn http(&self) -> &Http {
        &self.http
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert_eq!(p, Platform::parse("linux/aarch64/v8").unwrap());
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap(),
            Platform::parse("linux/amd64").unwrap()
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            amd.score(&serde_json::json!({"os":"linux","architecture":"amd64"})),
            Some(2)
        );
        assert_eq!(
            amd.score(&serde_json::json!({"os":"linux","architecture":"arm64"})),
            None
        );
        assert_eq!(
            amd.score(&serde_json::json!({"os":"unknown","architecture":"unknown"})),
            None
        );
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(
            arm.score(&serde_json::json!({"os":"linux","architecture":"arm","variant":"v6"})),
            None
        );
        assert_eq!(
            arm.score(&serde_json::json!({"os":"linux","architecture":"arm","variant":"v7"})),
            Some(2)
        );
    }

    #[test]
    fn refuses_schema1_and_ambiguous() {
        let s1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(classify(s1, MEDIA_TYPE_SCHEMA1_SIGNED, "r")
            .unwrap_err()
            .to_string()
            .contains("schema 1"));
        let both = br#"{"schemaVersion":2,"manifests":[],"layers":[],"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}}"#;
        assert!(classify(both, image::MEDIA_TYPE_INDEX, "r")
            .unwrap_err()
            .to_string()
            .contains("both"));
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            classify(idx, image::MEDIA_TYPE_INDEX, "r"),
            Ok(Doc::Index(_))
        ));
        assert!(classify(idx, image::MEDIA_TYPE_MANIFEST, "r").is_err());
    }
}
