//! Push: blobs first (HEAD check, cross-repository mount, monolithic or
//! chunked upload), the manifest last. Store layers are zstd; a gzip push
//! converts them once and records the gzip blob beside the zstd one, so the
//! next push finds it instead of recompressing.

use std::io::{self, BufWriter, Read, Write};

use rusqlite::params;
use serde_json::Value;

use super::http::{Body, Req, Scope};
use super::{display_ref, name_of, parallel, repo_of, Client, Event, Progress, RegistryError};
use crate::content::Ingest;
use crate::digest::{sha256_digest, Digest, HashingReader, HashingWriter};
use crate::error::StoreError;
use crate::image::{self, canonical_json, Descriptor, Manifest};
use crate::layer::{self, Compression as Codec};
use crate::reference::Reference;
use crate::store::{ImageRecord, LayerInfo, Store};

/// Layer compression of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// What every client can read (the default).
    #[default]
    Gzip,
    /// The store's own encoding: pushed as is.
    Zstd,
}

impl Compression {
    fn media_types(self) -> &'static [&'static str] {
        match self {
            Compression::Gzip => &[
                layer::MEDIA_TYPE_TAR_GZIP,
                layer::MEDIA_TYPE_DOCKER_TAR_GZIP,
            ],
            Compression::Zstd => &[layer::MEDIA_TYPE_TAR_ZSTD],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOptions {
    pub compression: Compression,
    /// Upload in chunks of this many bytes (`PATCH`es); `None` = one `PUT`.
    pub chunk_size: Option<u64>,
}

/// What happened to one blob of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The registry had it.
    Existing,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

impl BlobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            BlobOutcome::Existing => "exists",
            BlobOutcome::Mounted => "mounted",
            BlobOutcome::Uploaded => "uploaded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    /// The config first, then the layers.
    pub blobs: Vec<(Digest, BlobOutcome)>,
    pub bytes_uploaded: u64,
}

impl Store {
    /// A stored blob of `diff_id` in one of `media_types`, if any.
    fn layer_encoded_as(
        &self,
        diff_id: &Digest,
        media_types: &[&str],
    ) -> Result<Option<LayerInfo>, StoreError> {
        let rows: Vec<(String, i64, String)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT digest, size, media_type FROM layers WHERE diff_id = ?1 ORDER BY created_ms",
            )?;
            let rows = stmt.query_map(params![diff_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (d, size, mt) in rows {
            if !media_types.contains(&mt.as_str()) {
                continue;
            }
            let digest: Digest = d.parse()?;
            // Known remotely is enough: a push to where it is skips it,
            // and the bytes are fetched only for an upload.
            if self.blob_available(&digest) {
                return Ok(Some(LayerInfo {
                    digest,
                    diff_id: diff_id.clone(),
                    size: size as u64,
                    media_type: mt,
                }));
            }
        }
        Ok(None)
    }

    /// Re-encodes layer `l` (any compression) as `to`, checking its diffID
    /// on the way, stores and records the new blob.
    fn convert_layer(&self, l: &LayerInfo, to: Compression) -> Result<LayerInfo, StoreError> {
        let src = self.open_blob(&l.digest)?;
        let mut src = io::BufReader::with_capacity(256 * 1024, src);
        let comp = {
            let buf = io::BufRead::fill_buf(&mut src)
                .map_err(|e| StoreError::io(self.blob_path(&l.digest), e))?;
            Codec::detect(buf)
        };
        let decoded: Box<dyn Read> = match comp {
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
            Codec::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(src)
                    .map_err(|e| StoreError::io(self.blob_path(&l.digest), e))?,
            ),
            Codec::None => Box::new(src),
        };
        let mut tar = HashingReader::new(decoded);
        let ingest = Ingest::new(self)?;
        let (digest, size) = {
            let out = HashingWriter::new(BufWriter::with_capacity(256 * 1024, &ingest.file));
            let mut out = match to {
                Compression::Gzip => {
                    let mut enc =
                        flate2::write::GzEncoder::new(out, flate2::Compression::default());
                    io::copy(&mut tar, &mut enc).map_err(|e| StoreError::io(&ingest.path, e))?;
                    enc.finish().map_err(|e| StoreError::io(&ingest.path, e))?
                }
                Compression::Zstd => {
                    let mut enc = zstd::stream::write::Encoder::new(out, 3)
                        .map_err(|e| StoreError::io(&ingest.path, e))?;
                    io::copy(&mut tar, &mut enc).map_err(|e| StoreError::io(&ingest.path, e))?;
                    enc.finish().map_err(|e| StoreError::io(&ingest.path, e))?
                }
            };
            out.flush().map_err(|e| StoreError::io(&ingest.path, e))?;
            let n = out.hasher.len();
            (out.hasher.finish(), n)
        };
        let uncompressed = tar.hasher.len();
        let diff_id = tar.hasher.finish();
        if diff_id != l.diff_id {
            return Err(StoreError::DiffIdMismatch {
                digest: l.digest.clone(),
                expected: l.diff_id.clone(),
                actual: diff_id,
            });
        }
        let media_type = to.media_types()[0];
        ingest.commit(self, &digest, size, Some(media_type))?;
        let info = LayerInfo {
            digest,
            diff_id,
            size,
            media_type: media_type.to_string(),
        };
        self.record_layer(&info, Some(uncompressed))?;
        Ok(info)
    }

    /// The blob to push for `l` in compression `to`: `l` itself, one made
    /// by an earlier push, or a fresh conversion.
    pub(crate) fn layer_for_push(
        &self,
        l: &LayerInfo,
        to: Compression,
    ) -> Result<LayerInfo, StoreError> {
        if to.media_types().contains(&l.media_type.as_str()) {
            return Ok(l.clone());
        }
        if let Some(found) = self.layer_encoded_as(&l.diff_id, to.media_types())? {
            return Ok(found);
        }
        self.convert_layer(l, to)
    }
}

fn with_query(url: &str, q: &str) -> String {
    if url.contains('?') {
        format!("{url}&{q}")
    } else {
        format!("{url}?{q}")
    }
}

/// The upload session URL a response points to (`Location`, resolved
/// against the URL that answered).
fn location(
    scope: &Scope,
    resp: &ureq::http::Response<ureq::Body>,
    base: &str,
) -> Result<String, RegistryError> {
    let loc = super::http::header_string(resp, "location").ok_or_else(|| {
        RegistryError::protocol(&scope.domain, "upload response without Location")
    })?;
    super::http::resolve_url(base, &loc).map_err(|m| RegistryError::protocol(&scope.domain, m))
}

/// Uploads one blob (see [`Client::put_blob`]). With a store, remembers
/// the repositories a blob is in and mounts from them.
#[allow(clippy::too_many_arguments)]
pub(super) fn put_blob(
    client: &Client,
    store: Option<&Store>,
    repo: &Reference,
    digest: &Digest,
    size: u64,
    open: &(dyn Fn() -> io::Result<Box<dyn Read + Send>> + Sync),
    opts: &PushOptions,
    events: &(dyn Fn(Event) + Sync),
) -> Result<BlobOutcome, RegistryError> {
    let path = repo_of(repo);
    let up = BlobUpload {
        http: client.http(),
        scope: Scope::push(repo.domain(), path),
        path,
        what: format!("blob {digest} to {}", name_of(repo)),
        digest,
        size,
        open,
        chunk_size: opts.chunk_size.filter(|c| *c > 0 && *c < size),
        events,
    };
    events(Event::BlobStart { digest, size });
    let outcome = up.push(store)?;
    if let Some(s) = store {
        s.registry_blob_known(digest, repo.domain(), path)?;
    }
    events(Event::BlobDone {
        digest,
        outcome: outcome.as_str(),
    });
    Ok(outcome)
}

/// One blob on its way to one repository: HEAD, then a cross-repository
/// mount where the store knows another repository of this registry has
/// it, else an upload session (one `PUT`, or `PATCH` chunks then `PUT`).
struct BlobUpload<'a> {
    http: &'a super::http::Http,
    scope: Scope,
    /// The repository's path on its registry.
    path: &'a str,
    /// For errors: `blob sha256:.. to host/repo`.
    what: String,
    digest: &'a Digest,
    size: u64,
    open: &'a (dyn Fn() -> io::Result<Box<dyn Read + Send>> + Sync),
    /// Chunked upload: only when smaller than the blob.
    chunk_size: Option<u64>,
    events: &'a (dyn Fn(Event) + Sync),
}

/// What a mount attempt left: the blob mounted, or an upload session the
/// registry opened instead (or none).
enum Mount {
    Done,
    Session(Option<String>),
}

impl BlobUpload<'_> {
    fn push(&self, store: Option<&Store>) -> Result<BlobOutcome, RegistryError> {
        if self.exists()? {
            return Ok(BlobOutcome::Existing);
        }
        let others = match store {
            Some(s) => s.registry_blob_repos(self.digest, &self.scope.domain, self.path)?,
            None => Vec::new(),
        };
        let session = match self.mount_from(&others)? {
            Mount::Done => return Ok(BlobOutcome::Mounted),
            Mount::Session(s) => s,
        };
        // The registry lacks it and no mount gave it: a blob known
        // remotely, not local, is fetched now (its own error names where
        // from).
        if let Some(s) = store {
            s.ensure_blob(self.digest)?;
        }
        self.upload_retrying(session)?;
        Ok(BlobOutcome::Uploaded)
    }

    fn exists(&self) -> Result<bool, RegistryError> {
        let blob_path = format!("/v2/{}/blobs/{}", self.path, self.digest);
        let resp = self
            .http
            .send(&self.scope, &Req::new("HEAD", blob_path.as_str()).follow())?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self
                .http
                .status_error(&self.scope, "HEAD", &self.what, resp)),
        }
    }

    fn uploads(&self) -> String {
        format!("/v2/{}/blobs/uploads/", self.path)
    }

    /// Try each repository of this registry known to have the blob.
    fn mount_from(&self, others: &[String]) -> Result<Mount, RegistryError> {
        for other in others {
            let mut mscope = self.scope.clone();
            mscope.scopes.push(format!("repository:{other}:pull"));
            let target = format!("{}?mount={}&from={other}", self.uploads(), self.digest);
            let Ok((resp, at)) = self
                .http
                .send_at(&mscope, &Req::new("POST", target.as_str()))
            else {
                continue;
            };
            match resp.status().as_u16() {
                201 => return Ok(Mount::Done),
                // Not mountable: the registry opened an upload session instead.
                202 => return Ok(Mount::Session(Some(location(&self.scope, &resp, &at)?))),
                _ => continue,
            }
        }
        Ok(Mount::Session(None))
    }

    /// Upload sessions until one succeeds: a broken connection or a
    /// 429/5xx starts a fresh session from the first byte (a half-sent
    /// body may have been kept by the registry, so nothing is retried in
    /// place).
    fn upload_retrying(&self, mut session: Option<String>) -> Result<(), RegistryError> {
        let mut attempt = 0;
        loop {
            let loc = match session.take() {
                Some(l) => l,
                None => self.open_session()?,
            };
            match self.upload(loc) {
                Ok(()) => return Ok(()),
                Err(
                    RegistryError::Transport { .. }
                    | RegistryError::Status {
                        status: 429 | 500 | 502 | 503 | 504,
                        ..
                    },
                ) if attempt < self.http.config().retries => {
                    std::thread::sleep(super::http::backoff(attempt, None));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_session(&self) -> Result<String, RegistryError> {
        let uploads = self.uploads();
        let (resp, at) = self
            .http
            .send_at(&self.scope, &Req::new("POST", uploads.as_str()))?;
        if resp.status().as_u16() != 202 {
            return Err(self
                .http
                .status_error(&self.scope, "POST", &self.what, resp));
        }
        location(&self.scope, &resp, &at)
    }

    /// The blob's bytes from `skip` on, counted into progress events.
    fn body(&self, skip: u64, len: u64) -> Body<'_> {
        let open = move || -> io::Result<Box<dyn Read + Send + '_>> {
            let mut r = (self.open)()?;
            if skip > 0 {
                io::copy(&mut (&mut r).take(skip), &mut io::sink())?;
            }
            Ok(Box::new(Progress {
                inner: r,
                done: skip,
                size: self.size,
                digest: self.digest,
                events: self.events,
                last: skip,
                failed: None,
            }))
        };
        Body::Stream {
            len,
            open: Box::new(open),
        }
    }

    /// One upload session: the whole blob in one `PUT`, or in chunks.
    fn upload(&self, loc: String) -> Result<(), RegistryError> {
        let digest_q = format!("digest={}", self.digest);
        let loc = match self.chunk_size {
            None => {
                let req = Req::new("PUT", with_query(&loc, &digest_q))
                    .header("Content-Type", "application/octet-stream")
                    .body(self.body(0, self.size))
                    .no_retry();
                return self.expect(req, 201, "PUT");
            }
            Some(chunk) => self.patch_chunks(loc, chunk)?,
        };
        let req = Req::new("PUT", with_query(&loc, &digest_q)).no_retry();
        self.expect(req, 201, "PUT")
    }

    /// `PATCH` each chunk; the session URL the last answer points to.
    fn patch_chunks(&self, mut loc: String, chunk: u64) -> Result<String, RegistryError> {
        let mut offset = 0u64;
        while offset < self.size {
            let n = chunk.min(self.size - offset);
            let req = Req::new("PATCH", loc.as_str())
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{}-{}", offset, offset + n - 1))
                .body(self.body(offset, n))
                .no_retry();
            let (resp, at) = self.http.send_at(&self.scope, &req)?;
            if resp.status().as_u16() != 202 {
                return Err(self
                    .http
                    .status_error(&self.scope, "PATCH", &self.what, resp));
            }
            loc = location(&self.scope, &resp, &at)?;
            offset += n;
        }
        Ok(loc)
    }

    fn expect(&self, req: Req<'_>, status: u16, method: &str) -> Result<(), RegistryError> {
        let resp = self.http.send(&self.scope, &req)?;
        if resp.status().as_u16() != status {
            return Err(self
                .http
                .status_error(&self.scope, method, &self.what, resp));
        }
        Ok(())
    }
}

/// The bytes of a store blob for an upload; a blob known remotely, not
/// local, is fetched first (only now: when the registry lacks it and no
/// mount could give it).
pub(super) fn store_blob_reader(
    store: &Store,
    digest: &Digest,
) -> io::Result<Box<dyn Read + Send>> {
    store.ensure_blob(digest).map_err(io::Error::other)?;
    Ok(Box::new(std::fs::File::open(store.blob_path(digest))?))
}

/// Uploads a manifest to `target`'s tag (else digest); returns its digest.
pub(super) fn put_manifest(
    client: &Client,
    target: &Reference,
    media_type: &str,
    bytes: &[u8],
) -> Result<Digest, RegistryError> {
    let http = client.http();
    let digest = sha256_digest(bytes);
    if let Some(d) = target.digest() {
        if *d != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest for {}", display_ref(target)),
                actual: digest,
            });
        }
    }
    if bytes.len() as u64 > super::MANIFEST_MAX {
        return Err(RegistryError::TooLarge {
            what: format!("manifest for {}", display_ref(target)),
            size: bytes.len() as u64,
            limit: super::MANIFEST_MAX,
        });
    }
    let reference = match target.tag() {
        Some(t) => t.to_string(),
        None => digest.to_string(),
    };
    let scope = Scope::push(target.domain(), repo_of(target));
    let what = display_ref(target);
    let resp = http.send(
        &scope,
        &Req::new(
            "PUT",
            format!("/v2/{}/manifests/{reference}", repo_of(target)),
        )
        .header("Content-Type", media_type)
        .body(Body::Bytes(bytes)),
    )?;
    match resp.status().as_u16() {
        200 | 201 => {}
        _ => return Err(http.status_error(&scope, "PUT", &format!("manifest {what}"), resp)),
    }
    if let Some(h) = super::http::header_string(&resp, "docker-content-digest")
        .and_then(|h| h.trim().parse::<Digest>().ok())
    {
        if h != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {what}: registry stored {h}, kiln sent {digest}"),
                actual: h,
            });
        }
    }
    Ok(digest)
}

/// The media type of stored manifest bytes.
fn manifest_media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| image::MEDIA_TYPE_MANIFEST.to_string())
}

pub(super) fn push(
    client: &Client,
    store: &Store,
    img: &ImageRecord,
    target: &Reference,
    opts: &PushOptions,
    events: &(dyn Fn(Event) + Sync),
) -> Result<PushReport, RegistryError> {
    let _lease = store.lease()?;
    let stored_manifest = store.read_blob(&img.manifest_digest)?;
    let stored: Manifest = serde_json::from_slice(&stored_manifest).map_err(StoreError::from)?;
    // The config first, alone, so that the registry's auth challenge is
    // answered once and cached; then the layers three at a time (each
    // converted first when the push wants another compression).
    enum Item<'a> {
        Config(&'a Descriptor),
        Layer(&'a LayerInfo),
    }
    let mut items = vec![Item::Config(&stored.config)];
    items.extend(img.layers.iter().map(Item::Layer));
    let one =
        |item: &Item| -> Result<(Option<LayerInfo>, Digest, BlobOutcome, u64), RegistryError> {
            let (layer, digest) = match item {
                Item::Config(d) => (None, d.digest.clone()),
                Item::Layer(l) => {
                    let l = store.layer_for_push(l, opts.compression)?;
                    let d = l.digest.clone();
                    (Some(l), d)
                }
            };
            let size = store.stored_or_remote_size(&digest)?;
            let open = || store_blob_reader(store, &digest);
            let outcome = put_blob(
                client,
                Some(store),
                target,
                &digest,
                size,
                &open,
                opts,
                events,
            )?;
            let up = if outcome == BlobOutcome::Uploaded {
                size
            } else {
                0
            };
            Ok((layer, digest, outcome, up))
        };
    let mut pushed = vec![one(&items[0])?];
    pushed.extend(parallel(&items[1..], &one)?);
    let layers: Vec<LayerInfo> = pushed.iter().filter_map(|(l, ..)| l.clone()).collect();
    let unchanged = layers
        .iter()
        .zip(&img.layers)
        .all(|(a, b)| a.digest == b.digest);
    let (manifest_bytes, media_type) = if unchanged {
        let mt = manifest_media_type(&stored_manifest);
        (stored_manifest, mt)
    } else {
        let m = Manifest {
            annotations: stored.annotations.clone(),
            ..Manifest::oci(&stored.config.digest, stored.config.size, &layers)
        };
        let bytes = canonical_json(&m).map_err(StoreError::from)?;
        (bytes, image::MEDIA_TYPE_MANIFEST.to_string())
    };
    let manifest_digest = put_manifest(client, target, &media_type, &manifest_bytes)?;
    let what = display_ref(target);
    events(Event::Resolved {
        reference: &what,
        digest: &manifest_digest,
    });
    Ok(PushReport {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        bytes_uploaded: pushed.iter().map(|p| p.3).sum(),
        blobs: pushed.into_iter().map(|(_, d, o, _)| (d, o)).collect(),
    })
}
