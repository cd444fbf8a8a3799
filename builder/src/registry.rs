//! The registry access of one kiln invocation, shared by the build (FROM
//! of an image that is not local, `--push`, the registry-backed cache) and
//! the `pull`/`push` commands. The protocol itself is `kiln_store::registry`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Result};
use kiln_store::reference::{self, Reference};
use kiln_store::registry::{
    BlobOutcome, Client, Event, Platform, PushOptions, PushReport, RegistryConfig,
};
use kiln_store::{ImageRecord, Store};

use crate::error::Failure;

/// The registry client of one kiln invocation, made on first use only: a
/// build that never leaves the local store does not pay for loading the
/// system's CA roots.
#[derive(Clone)]
pub struct Access {
    config: RegistryConfig,
    client: Arc<OnceLock<std::result::Result<Arc<Client>, String>>>,
}

impl Access {
    /// `insecure`: registries (host[:port]) that may use plain http or an
    /// unverified certificate; `ca_files`: PEM files trusted besides the
    /// system's roots.
    pub fn new(insecure: Vec<String>, ca_files: Vec<PathBuf>) -> Access {
        let config = RegistryConfig {
            insecure,
            ca_files,
            ..RegistryConfig::default()
        };
        Access {
            config,
            client: Arc::new(OnceLock::new()),
        }
    }

    /// What fetches a blob the store knows remotely, not local, when
    /// something reads it (a step that runs on it, an exporter, a
    /// container): this access's client, set up on first use. Says on
    /// stderr what it fetches, and from where.
    pub fn remote_fetcher(&self) -> kiln_store::RemoteFetcher {
        let access = self.clone();
        Arc::new(move |store: &Store, blob: &kiln_store::RemoteBlob| {
            let client = access
                .client()
                .map_err(|e| kiln_store::StoreError::RemoteFetch {
                    digest: blob.digest.clone(),
                    registry: blob
                        .sources
                        .first()
                        .map(|(r, p)| format!("{r}/{p}"))
                        .unwrap_or_default(),
                    message: format!("{e:#}"),
                })?;
            if let Some((r, p)) = blob.sources.first() {
                eprintln!(
                    "kiln: fetching {} ({}) from {r}/{p}",
                    blob.digest.short(),
                    human(blob.size)
                );
            }
            client.fetch_remote(store, blob)
        })
    }

    pub fn client(&self) -> Result<Arc<Client>> {
        self.client
            .get_or_init(|| {
                Client::new(self.config.clone())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| anyhow!("cannot set up the registry client: {e}"))
    }
}

/// Where progress lines go: stderr, one line per blob, or nowhere.
pub fn reporter(quiet: bool) -> impl Fn(Event) + Sync {
    // One eprintln per event: it holds stderr's lock for the whole line.
    move |e: Event| {
        if quiet {
            return;
        }
        let line = match e {
            Event::Resolved { reference, digest } => format!("{reference}: resolved to {digest}"),
            Event::BlobStart { digest, size } => {
                format!("{}: {} ...", digest.short(), human(size))
            }
            Event::BlobProgress { .. } => return,
            Event::BlobDone { digest, outcome } => format!("{}: {outcome}", digest.short()),
        };
        eprintln!("{line}");
    }
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn parse_ref(s: &str) -> Result<Reference> {
    reference::parse(s).map_err(|e| {
        Failure::new(1, format!("kiln: {s:?} is not a valid repository/tag: {e}")).into()
    })
}

/// Pulls `name` into the store and tags it as pulled (`name:tag`; a
/// reference by digest alone is not tagged, like docker). Returns the image.
pub fn pull_into(
    store: &Store,
    access: &Access,
    name: &str,
    platform: &Platform,
    events: &(dyn Fn(Event) + Sync),
) -> Result<ImageRecord> {
    pull_image(store, access, name, platform, events, false)
}

/// [`pull_into`] for a build's FROM: the manifest and config only; the
/// layers are known remotely and fetched when a step runs on them, an
/// exporter reads them, or a push to another registry needs them.
pub fn pull_lazy_into(
    store: &Store,
    access: &Access,
    name: &str,
    platform: &Platform,
    events: &(dyn Fn(Event) + Sync),
) -> Result<ImageRecord> {
    pull_image(store, access, name, platform, events, true)
}

fn pull_image(
    store: &Store,
    access: &Access,
    name: &str,
    platform: &Platform,
    events: &(dyn Fn(Event) + Sync),
    lazy: bool,
) -> Result<ImageRecord> {
    // Plain (no "kiln:"): `run` and FROM put this in messages of their own.
    let r = reference::parse(name)
        .map_err(|e| anyhow!("{name:?} is not a valid repository/tag: {e}"))?;
    let client = access.client()?;
    let img = if lazy {
        client.pull_lazy(store, &r, platform, events)?
    } else {
        client.pull(store, &r, platform, events)?
    };
    // Attestations about the image (SBOM, provenance) come with it: the tag
    // then names a local index of the image and them.
    let index = client.pull_attestations(store, &r, &img)?;
    let named = index.as_ref().map_or(&img.manifest_digest, |i| &i.digest);
    if let Some(tag) = r.tag() {
        store.tag(&format!("{}:{tag}", r.repository()), named)?;
    }
    Ok(img)
}

/// What a push sends: one image, or an index (several platforms,
/// attestations) with everything it holds.
#[derive(Clone, Copy)]
pub enum Pushable<'a> {
    Image(&'a ImageRecord),
    Index(&'a kiln_store::IndexRecord),
}

/// Pushes a local image under `target` and prints docker's summary line.
pub fn push_image(
    store: &Store,
    access: &Access,
    what: Pushable,
    target: &str,
    opts: &PushOptions,
    quiet: bool,
) -> Result<PushReport> {
    let r = parse_ref(target)?;
    if r.digest().is_some() {
        return Err(Failure::new(
            1,
            format!("kiln: cannot push to {target}: push to a tag, not a digest"),
        )
        .into());
    }
    let client = access.client()?;
    if !quiet {
        eprintln!(
            "The push refers to repository [{}/{}]",
            r.domain(),
            r.path()
        );
    }
    let events = reporter(quiet);
    let report = match what {
        Pushable::Image(image) => client.push(store, image, &r, opts, &events)?,
        Pushable::Index(idx) => client.push_index(store, idx, &r, opts, &events)?,
    };
    if !quiet {
        let mut counts = [0usize; 3];
        for (_, b) in &report.blobs {
            counts[match b {
                BlobOutcome::Uploaded => 0,
                BlobOutcome::Mounted => 1,
                BlobOutcome::Existing => 2,
            }] += 1;
        }
        eprintln!(
            "{}: digest: {} size: {} ({} uploaded, {} mounted, {} already there; {} sent)",
            r.tag().unwrap_or("latest"),
            report.manifest_digest,
            report.manifest_size,
            counts[0],
            counts[1],
            counts[2],
            human(report.bytes_uploaded),
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500_000), "1.5 MB");
    }
}
