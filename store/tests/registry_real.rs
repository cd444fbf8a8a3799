//! The registry client against a real CNCF distribution registry (Debian's
//! `docker-registry`), plain and behind TLS with htpasswd auth.
mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::registry::{make_image, RegistryGuard};
use kiln_store::registry::{
    credentials, BlobOutcome, Client, Compression, Credentials, Event, Platform, PushOptions,
    RegistryConfig, RegistryError,
};
use kiln_store::{reference, ImageRecord, Store};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    (dir, s)
}

/// A client that reads no credentials from the environment.
fn config(docker_dir: &std::path::Path) -> RegistryConfig {
    RegistryConfig {
        docker_config_dir: Some(docker_dir.to_path_buf()),
        ..Default::default()
    }
}

fn no_events(_: Event) {}

/// The files of every layer of `img`, unpacked through the store.
fn trees(store: &Store, img: &ImageRecord) -> Vec<BTreeMap<String, common::Node>> {
    img.layers
        .iter()
        .map(|l| common::describe(&store.ensure_snapshot(l).unwrap(), false))
        .collect()
}

fn outcomes(r: &kiln_store::registry::PushReport) -> Vec<BlobOutcome> {
    r.blobs.iter().map(|(_, o)| *o).collect()
}

#[test]
fn push_pull_mount_and_compression_round_trip() {
    let Some(reg) = RegistryGuard::start(false) else {
        return;
    };
    let docker = tempfile::tempdir().unwrap();
    let client = Client::new(config(docker.path())).unwrap();
    let (_a, a) = store();
    let img = make_image(&a, "a");
    let want = trees(&a, &img);

    // zstd: the store's own blobs and manifest go up unchanged.
    let target = reference::parse(&format!("{}/kiln/app:1", reg.addr)).unwrap();
    let zstd = PushOptions {
        compression: Compression::Zstd,
        chunk_size: None,
    };
    let seen = Mutex::new(Vec::new());
    let events = |e: Event| {
        if let Event::BlobDone { digest, outcome } = e {
            seen.lock()
                .unwrap()
                .push((digest.clone(), outcome.to_string()));
        }
    };
    let first = client.push(&a, &img, &target, &zstd, &events).unwrap();
    assert_eq!(first.manifest_digest, img.manifest_digest);
    assert_eq!(outcomes(&first), vec![BlobOutcome::Uploaded; 3]);
    assert!(first.bytes_uploaded > 0);
    assert_eq!(seen.lock().unwrap().len(), 3);

    let (_b, b) = store();
    let pulled = client
        .pull(&b, &target, &Platform::host(), &no_events)
        .unwrap();
    assert_eq!(pulled.manifest_digest, first.manifest_digest);
    assert_eq!(pulled.config_digest, img.config_digest);
    assert_eq!(trees(&b, &pulled), want);
    // Pulled by digest as well.
    let by_digest =
        reference::parse(&format!("{}/kiln/app@{}", reg.addr, first.manifest_digest)).unwrap();
    let (_b2, b2) = store();
    let again = client
        .pull(&b2, &by_digest, &Platform::host(), &no_events)
        .unwrap();
    assert_eq!(again.manifest_digest, first.manifest_digest);

    // Twice: nothing uploaded.
    let second = client.push(&a, &img, &target, &zstd, &no_events).unwrap();
    assert_eq!(outcomes(&second), vec![BlobOutcome::Existing; 3]);
    assert_eq!(second.bytes_uploaded, 0);

    // Another repository of the same registry: mounted, not uploaded.
    let other = reference::parse(&format!("{}/kiln/other:1", reg.addr)).unwrap();
    let third = client.push(&a, &img, &other, &zstd, &no_events).unwrap();
    assert_eq!(outcomes(&third), vec![BlobOutcome::Mounted; 3]);
    assert_eq!(third.bytes_uploaded, 0);

    // gzip (the default): converted once, recorded, and pulled back to the
    // same config and files.
    let gz_target = reference::parse(&format!("{}/kiln/gz:1", reg.addr)).unwrap();
    let gz = client
        .push(&a, &img, &gz_target, &PushOptions::default(), &no_events)
        .unwrap();
    assert_ne!(gz.manifest_digest, img.manifest_digest);
    assert_eq!(
        gz.blobs[0],
        (img.config_digest.clone(), BlobOutcome::Mounted)
    );
    assert_eq!(&outcomes(&gz)[1..], &[BlobOutcome::Uploaded; 2]);
    let (_c, c) = store();
    let gz_pulled = client
        .pull(&c, &gz_target, &Platform::host(), &no_events)
        .unwrap();
    assert_eq!(gz_pulled.manifest_digest, gz.manifest_digest);
    assert_eq!(gz_pulled.config_digest, img.config_digest);
    for l in &gz_pulled.layers {
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
        let magic = std::fs::read(c.root().join("blobs/sha256").join(l.digest.hex())).unwrap();
        assert_eq!(&magic[..2], &[0x1f, 0x8b]);
    }
    assert_eq!(trees(&c, &gz_pulled), want);
    // The gzip blobs were recorded: a second gzip push finds them (same
    // manifest, nothing uploaded).
    let gz2 = client
        .push(&a, &img, &gz_target, &PushOptions::default(), &no_events)
        .unwrap();
    assert_eq!(gz2.manifest_digest, gz.manifest_digest);
    assert_eq!(outcomes(&gz2), vec![BlobOutcome::Existing; 3]);

    // Chunked uploads from a store that knows of no other repository.
    let (_d, d) = store();
    let img_d = make_image(&d, "d");
    let chunked = reference::parse(&format!("{}/kiln/chunked:1", reg.addr)).unwrap();
    let opts = PushOptions {
        compression: Compression::Zstd,
        chunk_size: Some(64 * 1024),
    };
    let r = client
        .push(&d, &img_d, &chunked, &opts, &no_events)
        .unwrap();
    assert_eq!(outcomes(&r), vec![BlobOutcome::Uploaded; 3]);
    let (_e, e) = store();
    let back = client
        .pull(&e, &chunked, &Platform::host(), &no_events)
        .unwrap();
    assert_eq!(back.manifest_digest, img_d.manifest_digest);
    assert_eq!(trees(&e, &back), trees(&d, &img_d));

    // 404s name the reference.
    let missing = reference::parse(&format!("{}/kiln/app:nope", reg.addr)).unwrap();
    let err = client
        .pull(&e, &missing, &Platform::host(), &no_events)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestUnknown { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("manifest unknown: {}/kiln/app:nope (404)", reg.addr)
    );
}

#[test]
fn tls_and_basic_auth() {
    let Some(reg) = RegistryGuard::start(true) else {
        return;
    };
    let docker = tempfile::tempdir().unwrap();
    let creds = Credentials {
        username: reg.username(),
        password: reg.password(),
    };
    let cfg = RegistryConfig {
        ca_files: vec![reg.ca()],
        ..config(docker.path())
    };
    let (_a, a) = store();
    let img = make_image(&a, "tls");
    let target = reference::parse(&format!("{}/secure/app:1", reg.addr)).unwrap();

    // Not logged in: a clear 401 naming the repository.
    let anon = Client::new(cfg.clone()).unwrap();
    let err = anon
        .push(&a, &img, &target, &PushOptions::default(), &no_events)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "push access denied for {}/secure/app: 401 Unauthorized (not logged in?)",
            reg.addr
        )
    );
    let err = anon
        .pull(&a, &target, &Platform::host(), &no_events)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { action: "pull", .. }),
        "{err}"
    );

    // Login check: right and wrong password.
    anon.check_login(&reg.addr, &creds).unwrap();
    let wrong = Credentials {
        username: creds.username.clone(),
        password: "not-the-password".into(),
    };
    let err = anon.check_login(&reg.addr, &wrong).unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!format!("{err} {err:?}").contains("not-the-password"));

    // Logged in (credentials from the docker config): push and pull.
    credentials::save(docker.path(), &reg.addr, &creds).unwrap();
    let client = Client::new(cfg.clone()).unwrap();
    let pushed = client
        .push(&a, &img, &target, &PushOptions::default(), &no_events)
        .unwrap();
    let (_b, b) = store();
    let pulled = client
        .pull(&b, &target, &Platform::host(), &no_events)
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.config_digest, img.config_digest);
    assert_eq!(trees(&b, &pulled), trees(&a, &img));

    // Without our CA the certificate is not trusted: a TLS error, and no
    // fallback to plain http even though the host is loopback.
    let untrusting = Client::new(config(docker.path())).unwrap();
    let err = untrusting
        .pull(&b, &target, &Platform::host(), &no_events)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");

    // Listed as insecure: TLS without verification (and still Basic auth).
    let insecure = Client::new(RegistryConfig {
        insecure: vec![reg.addr.clone()],
        ..config(docker.path())
    })
    .unwrap();
    let (_c, c) = store();
    let pulled = insecure
        .pull(&c, &target, &Platform::host(), &no_events)
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
}
