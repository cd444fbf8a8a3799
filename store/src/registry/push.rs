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
    let http = client.http();
    let domain = repo.domain();
    let path = repo_of(repo);
    let scope = Scope::push(domain, path);
    let what = format!("blob {digest} to {}", name_of(repo));
    events(Event::BlobStart { digest, size });
    let done = |o: BlobOutcome| -> Result<BlobOutcome, RegistryError> {
        if let Some(s) = store {
            s.registry_blob_known(digest, domain, path)?;
        }
        events(Event::BlobDone {
            digest,
            outcome: o.as_str(),
        });
        Ok(o)
    };
    // Already there?
    let blob_path = format!("/v2/{path}/blobs/{digest}");
    let resp = http.send(&scope, &Req::new("HEAD", blob_path.as_str()).follow())?;
    match resp.status().as_u16() {
        200 => return done(BlobOutcome::Existing),
        404 => {}
        _ => return Err(http.status_error(&scope, "HEAD", &what, resp)),
    }
    drop(resp);
    let uploads = format!("/v2/{path}/blobs/uploads/");
    let mut session: Option<String> = None;
    // Mount from another repository of this registry where it is known.
    let others = match store {
        Some(s) => s.registry_blob_repos(digest, domain, path)?,
        None => Vec::new(),
    };
    for other in others {
        let mut mscope = scope.clone();
        mscope.scopes.push(format!("repository:{other}:pull"));
        let target = format!("{uploads}?mount={digest}&from={other}");
        let (resp, at) = match http.send_at(&mscope, &Req::new("POST", target.as_str())) {
            Ok(r) => r,
            Err(_) => continue,
        };
        match resp.status().as_u16() {
            201 => return done(BlobOutcome::Mounted),
            // Not mountable: the registry opened an upload session instead.
            202 => {
                session = Some(location(&scope, &resp, &at)?);
                break;
            }
            _ => continue,
        }
    }
    // The registry lacks it and no mount gave it: a blob known remotely,
    // not local, is fetched now (its own error names where from).
    if let Some(s) = store {
        s.ensure_blob(digest)?;
    }
    let progress_open = |skip: u64| {
        move || -> io::Result<Box<dyn Read + Send + '_>> {
            let mut r = open()?;
            if skip > 0 {
                io::copy(&mut (&mut r).take(skip), &mut io::sink())?;
            }
            Ok(Box::new(Progress {
                inner: r,
                done: skip,
                size,
                digest,
                events,
                last: skip,
                failed: None,
            }))
        }
    };
    let digest_q = format!("digest={digest}");
    // One upload session; its requests are not retried in place (a
    // half-sent body may have been kept by the registry).
    let upload = |mut loc: String| -> Result<(), RegistryError> {
        match opts.chunk_size.filter(|c| *c > 0 && *c < size) {
            None => {
                let resp = http.send(
                    &scope,
                    &Req::new("PUT", with_query(&loc, &digest_q))
                        .header("Content-Type", "application/octet-stream")
                        .body(Body::Stream {
                            len: size,
                            open: Box::new(progress_open(0)),
                        })
                        .no_retry(),
                )?;
                if resp.status().as_u16() != 201 {
                    return Err(http.status_error(&scope, "PUT", &what, resp));
                }
            }
            Some(chunk) => {
                let mut offset = 0u64;
                while offset < size {
                    let n = chunk.min(size - offset);
                    let (resp, at) = http.send_at(
                        &scope,
                        &Req::new("PATCH", loc.as_str())
                            .header("Content-Type", "application/octet-stream")
                            .header("Content-Range", format!("{}-{}", offset, offset + n - 1))
                            .body(Body::Stream {
                                len: n,
                                open: Box::new(progress_open(offset)),
                            })
                            .no_retry(),
                    )?;
                    if resp.status().as_u16() != 202 {
                        return Err(http.status_error(&scope, "PATCH", &what, resp));
                    }
                    loc = location(&scope, &resp, &at)?;
                    offset += n;
                }
                let resp = http.send(
                    &scope,
                    &Req::new("PUT", with_query(&loc, &digest_q)).no_retry(),
                )?;
                if resp.status().as_u16() != 201 {
                    return Err(http.status_error(&scope, "PUT", &what, resp));
                }
            }
        }
        Ok(())
    };
    let mut attempt = 0;
    loop {
        let loc = match session.take() {
            Some(l) => l,
            None => {
                let (resp, at) = http.send_at(&scope, &Req::new("POST", uploads.as_str()))?;
                if resp.status().as_u16() != 202 {
                    return Err(http.status_error(&scope, "POST", &what, resp));
                }
                location(&scope, &resp, &at)?
            }
        };
        match upload(loc) {
            Ok(()) => break,
            // A broken connection or a 429/5xx: a fresh session, from the
            // first byte.
            Err(
                RegistryError::Transport { .. }
                | RegistryError::Status {
                    status: 429 | 500 | 502 | 503 | 504,
                    ..
                },
            ) if attempt < http.config().retries => {
                std::thread::sleep(super::http::backoff(attempt, None));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
    done(BlobOutcome::Uploaded)
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
