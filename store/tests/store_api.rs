//! Behaviour of the Store through its public API.
mod common;

use std::fs;
use std::io::Read;

use kiln_store::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    (dir, s)
}

#[test]
fn root_is_private_and_laid_out() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, s) = store();
    let mode = fs::metadata(s.root()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    for sub in [
        "blobs/sha256",
        "ingest",
        "snapshots",
        "containers",
        "tmp",
        "kiln.db",
    ] {
        assert!(s.root().join(sub).exists(), "{sub}");
    }
}

#[test]
fn blobs_are_verified_and_idempotent() {
    let (_d, s) = store();
    let d = s.write_blob_bytes(b"hello").unwrap();
    assert_eq!(d, sha256_digest(b"hello"));
    assert!(s.has_blob(&d));
    assert_eq!(s.read_blob(&d).unwrap(), b"hello");
    // Same content again: success, same digest.
    assert_eq!(s.write_blob_bytes(b"hello").unwrap(), d);
    let (d2, n) = s.write_blob(&mut &b"hello"[..], Some(&d), Some(5)).unwrap();
    assert_eq!((d2, n), (d.clone(), 5));
    // Wrong digest / size: error, nothing left in ingest/.
    let other = sha256_digest(b"other");
    assert!(matches!(
        s.write_blob(&mut &b"hello"[..], Some(&other), None),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(matches!(
        s.write_blob(&mut &b"hello"[..], None, Some(4)),
        Err(StoreError::SizeMismatch { .. })
    ));
    assert!(matches!(
        s.write_blob(&mut &b"hello"[..], None, Some(6)),
        Err(StoreError::SizeMismatch { .. })
    ));
    assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
    // A corrupted blob file is caught on read.
    let p = s.root().join("blobs/sha256").join(d.hex());
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&p, b"HELLO").unwrap();
    assert!(matches!(
        s.read_blob(&d),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(matches!(
        s.read_blob(&other),
        Err(StoreError::BlobNotFound(_))
    ));
    // Digests are validated before they can become paths.
    assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
}

#[test]
fn snapshot_commit_then_unpack_elsewhere() {
    require_root!();
    let (_d, s) = store();
    let p = s.new_snapshot().unwrap();
    assert!(p.work().is_dir() && fs::read_dir(p.work()).unwrap().count() == 0);
    common::sample_tree(p.upper());
    let info = s.commit_snapshot(p, &LayerOptions::default()).unwrap();
    assert_eq!(
        info.media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let snap = s.snapshot_path(&info.diff_id).unwrap().unwrap();
    assert!(snap.join("app/app.py").is_file());
    assert!(
        snap.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .is_ok(),
        "short numeric id"
    );
    assert_eq!(s.layer_by_diff_id(&info.diff_id).unwrap().unwrap(), info);
    assert_eq!(s.ensure_snapshot(&info).unwrap(), snap);

    // A second store receives the blob only and unpacks it.
    let (_d2, s2) = store();
    let mut f = s.open_blob(&info.digest).unwrap();
    s2.write_blob(&mut f, Some(&info.digest), Some(info.size))
        .unwrap();
    let snap2 = s2.ensure_snapshot(&info).unwrap();
    assert_eq!(
        fs::read(snap2.join("app/app.py")).unwrap(),
        b"print('hello')\n"
    );
    assert_eq!(
        fs::read_link(snap2.join("entry"))
            .unwrap()
            .to_str()
            .unwrap(),
        "app/app.py"
    );
    // A wrong diffID is refused and nothing is recorded.
    let (_d3, s3) = store();
    let mut f = s.open_blob(&info.digest).unwrap();
    s3.write_blob(&mut f, None, None).unwrap();
    let mut bad = info.clone();
    bad.diff_id = sha256_digest(b"not it");
    assert!(matches!(
        s3.ensure_snapshot(&bad),
        Err(StoreError::DiffIdMismatch { .. })
    ));
    assert!(s3.snapshot_path(&bad.diff_id).unwrap().is_none());
    assert_eq!(
        fs::read_dir(s3.root().join("snapshots")).unwrap().count(),
        0
    );
}

#[test]
fn identical_snapshot_is_deduplicated() {
    let (_d, s) = store();
    let mk = || {
        let p = s.new_snapshot().unwrap();
        fs::write(p.upper().join("f"), b"same").unwrap();
        filetime(p.upper().join("f"));
        filetime(p.upper().to_path_buf());
        p
    };
    let a = s.commit_snapshot(mk(), &LayerOptions::default()).unwrap();
    let b = s.commit_snapshot(mk(), &LayerOptions::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(fs::read_dir(s.root().join("snapshots")).unwrap().count(), 1);
    // The discarded pending dir is gone too.
    let leftovers: Vec<_> = fs::read_dir(s.root().join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn filetime(p: std::path::PathBuf) {
    let f = fs::File::open(&p).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn small_image(s: &Store, content: &[u8]) -> ImageRecord {
    let p = s.new_snapshot().unwrap();
    fs::write(p.upper().join("file"), content).unwrap();
    let l = s.commit_snapshot(p, &LayerOptions::default()).unwrap();
    let mut cfg = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    cfg.config.cmd = Some(vec!["sh".into()]);
    cfg.config.env = vec!["PATH=/bin".into()];
    s.write_image(&cfg, &[l]).unwrap()
}

#[test]
fn images_tags_resolution_and_rmi() {
    let (_d, s) = store();
    let img = small_image(&s, b"one");
    assert_eq!(
        img.config.rootfs.diff_ids,
        vec![img.layers[0].diff_id.clone()]
    );
    // Canonical config: what is stored hashes to the image ID.
    let cfg_bytes = s.read_blob(&img.config_digest).unwrap();
    assert!(!String::from_utf8_lossy(&cfg_bytes).contains('\n'));
    s.tag("flask_app:0.1", &img.manifest_digest).unwrap();
    s.tag("docker.io/library/flask_app", &img.manifest_digest)
        .unwrap();
    for q in [
        "flask_app:0.1",
        "flask_app",
        "flask_app:latest",
        img.config_digest.as_str(),
        img.config_digest.hex(),
        img.config_digest.short(),
        img.manifest_digest.as_str(),
    ] {
        let r = s
            .resolve_image(q)
            .unwrap()
            .unwrap_or_else(|| panic!("{q} not resolved"));
        assert_eq!(r.manifest_digest, img.manifest_digest, "{q}");
    }
    let by_digest = format!("flask_app@{}", img.manifest_digest);
    assert!(s.resolve_image(&by_digest).unwrap().is_some());
    assert!(s.resolve_image("nope:1").unwrap().is_none());
    let list = s.list_images().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].references,
        vec!["flask_app:0.1".to_string(), "flask_app:latest".to_string()]
    );
    // By ID with two tags: needs force.
    assert!(matches!(
        s.remove_image(img.config_digest.short(), false),
        Err(StoreError::Conflict(_))
    ));
    // By tag: untag only while another tag remains.
    assert_eq!(
        s.remove_image("flask_app:0.1", false).unwrap(),
        vec!["Untagged: flask_app:0.1".to_string()]
    );
    let lines = s.remove_image("flask_app", false).unwrap();
    assert_eq!(
        lines,
        vec![
            "Untagged: flask_app:latest".to_string(),
            format!("Deleted: {}", img.config_digest)
        ]
    );
    assert!(s
        .resolve_image(img.config_digest.as_str())
        .unwrap()
        .is_none());
    assert!(matches!(
        s.remove_image("flask_app", false),
        Err(StoreError::ImageNotFound(_))
    ));
    assert!(s.tag("Bad:Name", &img.manifest_digest).is_err());
}

#[test]
fn import_rootfs_tarball() {
    let (_d, s) = store();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_mtime(1);
    b.append_data(&mut h, "bin/tool", &b"abc"[..]).unwrap();
    let data = b.into_inner().unwrap();
    let rec = s
        .import_rootfs_tar(&mut &data[..], "busybox:1.36", None)
        .unwrap();
    assert_eq!(rec.layers.len(), 1);
    assert_eq!(rec.config.os, "linux");
    let r = s.resolve_image("busybox:1.36").unwrap().unwrap();
    let snap = s.ensure_snapshot(&r.layers[0]).unwrap();
    assert_eq!(fs::read(snap.join("bin/tool")).unwrap(), b"abc");
    // Same tarball again: the same image.
    let rec2 = s
        .import_rootfs_tar(&mut &data[..], "busybox:1.36", None)
        .unwrap();
    assert_eq!(rec2.manifest_digest, rec.manifest_digest);
}

#[test]
fn cache_and_stat_cache() {
    let (_d, s) = store();
    let img = small_image(&s, b"c");
    let rec = CacheRecord {
        key: "k1".into(),
        parent: None,
        description: "RUN pip install flask".into(),
        source: "Dockerfile:4".into(),
        stage: "0".into(),
        inputs: serde_json::json!({"argv": ["sh", "-c", "pip install flask"]}),
        result: serde_json::json!({"env": []}),
        layer: Some(img.layers[0].clone()),
        created: 100,
        last_used: 100,
        hits: 0,
        origin: None,
    };
    s.cache_put(&rec).unwrap();
    assert_eq!(s.cache_get("k1").unwrap().unwrap(), rec);
    assert!(s.cache_get("k2").unwrap().is_none());
    s.cache_touch(&["k1".into(), "missing".into()]).unwrap();
    let got = s.cache_get("k1").unwrap().unwrap();
    assert_eq!(got.hits, 1);
    assert!(got.last_used > 100);
    assert_eq!(s.cache_list().unwrap().len(), 1);

    let e = StatEntry {
        dev: 1,
        ino: 2,
        size: 3,
        mtime_ns: -4,
        ctime_ns: 5,
        mode: 0o100644,
        hash: "ab".into(),
    };
    s.stat_cache_store(
        "/ctx",
        &[("a".into(), e.clone()), ("b/c".into(), e.clone())],
    )
    .unwrap();
    s.stat_cache_store("/other", &[("z".into(), e.clone())])
        .unwrap();
    let m = s.stat_cache_load("/ctx").unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m["b/c"], e);
    s.stat_cache_store("/ctx", &[("a".into(), e.clone())])
        .unwrap();
    assert_eq!(s.stat_cache_load("/ctx").unwrap().len(), 1);
    assert_eq!(s.stat_cache_load("/other").unwrap().len(), 1);
}

#[test]
fn save_and_load_round_trip_both_formats() {
    let (_d, s) = store();
    let img = small_image(&s, b"payload");
    s.tag("localhost:5000/a/b:t", &img.manifest_digest).unwrap();
    for format in [ArchiveFormat::Docker, ArchiveFormat::Oci] {
        let mut out = Vec::new();
        s.save(&["localhost:5000/a/b:t".into()], format, &mut out)
            .unwrap();
        let (_d2, s2) = store();
        let loaded = s2.load(&mut &out[..]).unwrap();
        assert_eq!(
            loaded,
            vec!["localhost:5000/a/b:t".to_string()],
            "{format:?}"
        );
        let r = s2.resolve_image("localhost:5000/a/b:t").unwrap().unwrap();
        // The image ID survives both formats.
        assert_eq!(r.config_digest, img.config_digest, "{format:?}");
        assert_eq!(r.layers[0].diff_id, img.layers[0].diff_id);
        if format == ArchiveFormat::Oci {
            assert_eq!(r.manifest_digest, img.manifest_digest);
        }
        let snap = s2.ensure_snapshot(&r.layers[0]).unwrap();
        assert_eq!(fs::read(snap.join("file")).unwrap(), b"payload");
        assert!(s2.fsck(false).unwrap().is_clean());
    }
    // docker-archive layers are plain tars named <diffid>/layer.tar.
    let mut out = Vec::new();
    s.save(
        &["localhost:5000/a/b:t".into()],
        ArchiveFormat::Docker,
        &mut out,
    )
    .unwrap();
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(&out[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().to_string_lossy().into_owned();
        if n.ends_with("layer.tar") {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            assert_eq!(sha256_digest(&v), img.layers[0].diff_id);
        }
        names.push(n);
    }
    assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
    assert!(names.contains(&format!("{}.json", img.config_digest.hex())));
}

#[test]
fn load_old_docker_save_layout_with_symlinked_layer() {
    // What docker save (< 25) writes: <id>/layer.tar, <id>/json, VERSION,
    // <config>.json, manifest.json, repositories; a duplicate layer as a
    // symlink to another id's layer.tar.
    let (_d, s) = store();
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o644);
    layer.append_data(&mut h, "hi", &b"hi"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff = sha256_digest(&layer);
    let cfg = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{diff}","{diff}"]}},"docker_version":"20.10"}}"#
    );
    let manifest = r#"[{"Config":"cfg.json","RepoTags":["old:1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#;
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&mut b, "aaa/VERSION", b"1.0");
    add(&mut b, "aaa/json", b"{}");
    add(&mut b, "aaa/layer.tar", &layer);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
        .unwrap();
    add(&mut b, "cfg.json", cfg.as_bytes());
    add(&mut b, "manifest.json", manifest.as_bytes());
    add(&mut b, "repositories", br#"{"old":{"1":"aaa"}}"#);
    let data = b.into_inner().unwrap();
    assert_eq!(s.load(&mut &data[..]).unwrap(), vec!["old:1".to_string()]);
    let r = s.resolve_image("old:1").unwrap().unwrap();
    assert_eq!(r.config_digest, sha256_digest(cfg.as_bytes()));
    assert_eq!(r.config.extra["docker_version"], "20.10");
    assert_eq!(r.layers.len(), 2);
    assert_eq!(
        r.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    // Round trip out again.
    let mut out = Vec::new();
    s.save(&["old:1".into()], ArchiveFormat::Docker, &mut out)
        .unwrap();
    let (_d2, s2) = store();
    assert_eq!(s2.load(&mut &out[..]).unwrap(), vec!["old:1".to_string()]);
    assert_eq!(
        s2.resolve_image("old:1").unwrap().unwrap().config_digest,
        r.config_digest
    );
}

#[test]
fn prune_removes_unreferenced_and_respects_leases() {
    let (_d, s) = store();
    let keep = small_image(&s, b"keep");
    s.tag("keep:1", &keep.manifest_digest).unwrap();
    let junk = s.write_blob_bytes(b"junk").unwrap();
    let gone = small_image(&s, b"gone");
    let rep = s
        .prune(&PruneOptions {
            dangling_images: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rep.images, vec![gone.config_digest.to_string()]);
    assert!(!s.has_blob(&junk));
    assert!(!s.has_blob(&gone.layers[0].digest));
    assert!(s.snapshot_path(&gone.layers[0].diff_id).unwrap().is_none());
    assert!(s.has_blob(&keep.layers[0].digest));
    assert!(s.snapshot_path(&keep.layers[0].diff_id).unwrap().is_some());
    assert!(s.fsck(false).unwrap().is_clean());

    // Under a live lease, what is created after it began survives.
    let lease = s.lease().unwrap();
    let fresh = s.write_blob_bytes(b"fresh").unwrap();
    s.prune(&PruneOptions {
        dangling_images: true,
        cache_all: true,
        ..Default::default()
    })
    .unwrap();
    assert!(s.has_blob(&fresh));
    drop(lease);
    s.prune(&PruneOptions::default()).unwrap();
    assert!(!s.has_blob(&fresh));
}

#[test]
fn cache_keep_storage_is_lru() {
    let (_d, s) = store();
    for (i, c) in [b"a", b"b", b"c"].iter().enumerate() {
        let img = small_image(&s, *c);
        s.cache_put(&CacheRecord {
            key: format!("k{i}"),
            parent: None,
            description: "RUN".into(),
            source: "Dockerfile:1".into(),
            stage: "0".into(),
            inputs: serde_json::Value::Null,
            result: serde_json::Value::Null,
            layer: Some(img.layers[0].clone()),
            created: i as i64,
            last_used: 10 + i as i64,
            hits: 0,
            origin: None,
        })
        .unwrap();
    }
    let one = s.cache_get("k2").unwrap().unwrap().layer.unwrap().size;
    let rep = s
        .prune(&PruneOptions {
            keep_storage: Some(one),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rep.cache_records, 2);
    let left: Vec<_> = s.cache_list().unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(left, vec!["k2".to_string()]);
}

#[test]
fn fsck_finds_and_repairs() {
    let (_d, s) = store();
    let img = small_image(&s, b"x");
    s.tag("x:1", &img.manifest_digest).unwrap();
    assert!(s.fsck(false).unwrap().is_clean());
    let p = s
        .root()
        .join("blobs/sha256")
        .join(img.layers[0].digest.hex());
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&p, b"garbage").unwrap();
    let rep = s.fsck(false).unwrap();
    assert!(!rep.is_clean());
    assert!(
        rep.problems.iter().any(|p| p.contains("corrupt")),
        "{rep:?}"
    );
    let rep = s.fsck(true).unwrap();
    assert!(!rep.repaired.is_empty());
    assert!(
        s.fsck(false).unwrap().is_clean(),
        "{:?}",
        s.fsck(false).unwrap()
    );
    assert!(s.resolve_image("x:1").unwrap().is_none());
}

#[test]
fn corrupt_database_is_backed_up_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let img = {
        let s = Store::open(&root).unwrap();
        let img = small_image(&s, b"survives");
        s.tag("a:1", &img.manifest_digest).unwrap();
        img
    };
    for f in ["kiln.db-wal", "kiln.db-shm"] {
        let _ = fs::remove_file(root.join(f));
    }
    fs::write(root.join("kiln.db"), vec![0xA5u8; 64 * 1024]).unwrap();
    let s = Store::open(&root).unwrap();
    let rep = s.fsck(false).unwrap();
    assert!(rep.recovered_from.is_some());
    assert!(rep.is_clean(), "{rep:?}");
    // Tags are lost, the image is back by ID and usable.
    let r = s
        .resolve_image(img.config_digest.as_str())
        .unwrap()
        .unwrap();
    assert_eq!(r.manifest_digest, img.manifest_digest);
    s.ensure_snapshot(&r.layers[0]).unwrap();
    assert!(fs::read_dir(&root).unwrap().flatten().any(|e| e
        .file_name()
        .to_string_lossy()
        .starts_with("kiln.db.corrupt-")));
}

#[test]
fn default_root_honours_kiln_root() {
    // Only reads the environment; the variable is process-wide, so this is
    // the only test that sets it.
    std::env::set_var("KILN_ROOT", "/x/y");
    assert_eq!(Store::default_root(), std::path::PathBuf::from("/x/y"));
    std::env::remove_var("KILN_ROOT");
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<Lease>();
}

#[test]
fn concurrent_unpacks_of_one_layer_all_succeed() {
    let (_d, s) = store();
    let img = small_image(&s, b"shared layer");
    let layer = img.layers[0].clone();
    // Forget the snapshot so that everybody unpacks at once: a second store
    // handle on the same root behaves like a second process.
    let dir = tempfile::tempdir().unwrap();
    let root2 = dir.path().join("r");
    let s2 = Store::open(&root2).unwrap();
    let mut f = s.open_blob(&layer.digest).unwrap();
    s2.write_blob(&mut f, Some(&layer.digest), None).unwrap();
    let s3 = Store::open(&root2).unwrap();
    let paths: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let st = if i % 2 == 0 { &s2 } else { &s3 };
                let l = layer.clone();
                sc.spawn(move || st.ensure_snapshot(&l).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fs::read_dir(root2.join("snapshots")).unwrap().count(), 1);
    assert_eq!(fs::read(paths[0].join("file")).unwrap(), b"shared layer");
}

#[test]
fn short_ids_need_four_digits() {
    let (_d, s) = store();
    let img = small_image(&s, b"id");
    assert!(s
        .resolve_image(&img.config_digest.hex()[..4])
        .unwrap()
        .is_some());
    assert!(s
        .resolve_image(&img.config_digest.hex()[..3])
        .unwrap()
        .is_none());
}

#[test]
fn load_verifies_blobs_named_by_digest() {
    let (_d, s) = store();
    let img = small_image(&s, b"verified");
    s.tag("v:1", &img.manifest_digest).unwrap();
    let mut out = Vec::new();
    s.save(&["v:1".into()], ArchiveFormat::Oci, &mut out)
        .unwrap();
    // Flip one byte of the layer blob inside the archive.
    let mut ar = tar::Archive::new(&out[..]);
    let mut offset = None;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path()
            .unwrap()
            .to_string_lossy()
            .ends_with(img.layers[0].digest.hex())
        {
            offset = Some(e.raw_file_position() as usize);
        }
    }
    let off = offset.unwrap();
    out[off + 10] ^= 0xff;
    let (_d2, s2) = store();
    assert!(matches!(
        s2.load(&mut &out[..]),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(s2.resolve_image("v:1").unwrap().is_none());
}

#[test]
fn df_accounts_images_cache_and_garbage() {
    let (_d, s) = store();
    let img = small_image(&s, b"img");
    s.tag("i:1", &img.manifest_digest).unwrap();
    let cached = small_image(&s, b"cached");
    s.cache_put(&CacheRecord {
        key: "k".into(),
        parent: None,
        description: "RUN".into(),
        source: "Dockerfile:1".into(),
        stage: "0".into(),
        inputs: serde_json::Value::Null,
        result: serde_json::Value::Null,
        layer: Some(cached.layers[0].clone()),
        created: 0,
        last_used: 0,
        hits: 0,
        origin: None,
    })
    .unwrap();
    s.remove_image(cached.config_digest.as_str(), false)
        .unwrap();
    s.write_blob_bytes(b"garbage").unwrap();
    let du = s.df().unwrap();
    assert_eq!(du.images, 1);
    assert_eq!(du.cache_records, 1);
    assert_eq!(du.snapshots, 2);
    assert!(du.snapshots_size > 0);
    assert_eq!(du.cache_size, cached.layers[0].size);
    assert!(du.reclaimable >= 7, "{du:?}");
    let img_bytes: u64 = [
        img.manifest_digest.clone(),
        img.config_digest.clone(),
        img.layers[0].digest.clone(),
    ]
    .iter()
    .map(|d| {
        fs::metadata(s.root().join("blobs/sha256").join(d.hex()))
            .unwrap()
            .len()
    })
    .sum();
    assert_eq!(du.images_size, img_bytes);
    let text = du.to_string();
    assert!(
        text.starts_with("TYPE") && text.contains("Build Cache"),
        "{text}"
    );
    let rep = s.prune(&PruneOptions::default()).unwrap();
    assert!(rep.reclaimed_bytes > 0);
    assert!(rep.to_string().contains("Total reclaimed space"));
    assert_eq!(s.df().unwrap().reclaimable, 0);
}

#[test]
fn damaged_database_pages_are_found_by_fsck_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let img = {
        let s = Store::open(&root).unwrap();
        let img = small_image(&s, b"survives damage");
        s.tag("a:1", &img.manifest_digest).unwrap();
        // Grow the database to many pages.
        let e = StatEntry {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
            mode: 6,
            hash: "h".repeat(64),
        };
        let entries: Vec<_> = (0..3000)
            .map(|i| (format!("some/long/path/{i:06}"), e.clone()))
            .collect();
        s.stat_cache_store("/ctx", &entries).unwrap();
        img
    };
    // kiln does not checkpoint when a command ends (that would cost every
    // short command fsyncs); fold the WAL into kiln.db here so that the
    // damage below hits pages that hold the data.
    let db = root.join("kiln.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let mut bytes = fs::read(&db).unwrap();
    assert!(
        bytes.len() > 64 * 4096,
        "database too small to damage a middle page"
    );
    let page = 4096 * 40;
    for b in &mut bytes[page..page + 4096] {
        *b = 0x5a;
    }
    fs::write(&db, &bytes).unwrap();
    let s = Store::open(&root).unwrap();
    let rep = s.fsck(false).unwrap();
    eprintln!("after damage:\n{rep}");
    if rep.recovered_from.is_none() {
        assert!(!rep.is_clean(), "damage not found: {rep}");
        let rep = s.fsck(true).unwrap();
        assert!(rep.recovered_from.is_some(), "{rep}");
    }
    let rep = s.fsck(false).unwrap();
    assert!(rep.problems.is_empty(), "{rep}");
    let r = s
        .resolve_image(img.config_digest.as_str())
        .unwrap()
        .unwrap();
    s.ensure_snapshot(&r.layers[0]).unwrap();
}

#[test]
fn save_of_two_tags_of_one_image_writes_one_entry() {
    let (_d, s) = store();
    let img = small_image(&s, b"two tags");
    s.tag("a:1", &img.manifest_digest).unwrap();
    s.tag("b:2", &img.manifest_digest).unwrap();
    let mut out = Vec::new();
    s.save(
        &["a:1".into(), "b:2".into()],
        ArchiveFormat::Docker,
        &mut out,
    )
    .unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    let mut manifest = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("manifest.json") {
            e.read_to_end(&mut manifest).unwrap();
        }
    }
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m.as_array().unwrap().len(), 1);
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["a:1", "b:2"]));
    let (_d2, s2) = store();
    assert_eq!(
        s2.load(&mut &out[..]).unwrap(),
        vec!["a:1".to_string(), "b:2".to_string()]
    );
}

/// Issue 20, item 6: SQLite opens an empty file as a new database and a
/// file cut short as a smaller one; either used to drop every image. Both
/// are moved aside and rebuilt from the blobs, like a corrupt one.
#[test]
fn empty_or_truncated_database_is_rebuilt_not_trusted() {
    for cut in ["empty", "half"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let img = {
            let s = Store::open(&root).unwrap();
            let img = small_image(&s, format!("survives {cut}").as_bytes());
            // Pad the database past a few pages so that half of it is
            // short of what its header says.
            for i in 0..200 {
                s.tag(&format!("pad{i}:1"), &img.manifest_digest).unwrap();
            }
            img
        };
        // Checkpoint so the main file holds everything, then damage it.
        {
            let c = rusqlite::Connection::open(root.join("kiln.db")).unwrap();
            c.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
        }
        for f in ["kiln.db-wal", "kiln.db-shm"] {
            let _ = fs::remove_file(root.join(f));
        }
        let db = root.join("kiln.db");
        let len = fs::metadata(&db).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(if cut == "empty" { 0 } else { len / 2 }).unwrap();
        drop(f);
        let s = Store::open(&root).unwrap();
        assert!(s.recovered_from().is_some(), "{cut}: not detected");
        let rep = s.fsck(false).unwrap();
        assert!(rep.is_clean(), "{cut}: {rep:?}");
        let r = s
            .resolve_image(img.config_digest.as_str())
            .unwrap()
            .unwrap_or_else(|| panic!("{cut}: the image is gone"));
        assert_eq!(r.manifest_digest, img.manifest_digest);
        s.ensure_snapshot(&r.layers[0]).unwrap();
        drop(s);
        // The rebuilt database is trusted at the next open.
        let s = Store::open(&root).unwrap();
        assert!(s.recovered_from().is_none(), "{cut}: recovered twice");
        assert!(s
            .resolve_image(img.config_digest.as_str())
            .unwrap()
            .is_some());
    }
}

/// A new root's database may be an empty file for a moment while another
/// process creates it: with no blobs yet, it is not taken for damage.
#[test]
fn empty_database_of_a_new_root_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("kiln.db"), b"").unwrap();
    let s = Store::open(&root).unwrap();
    assert!(s.recovered_from().is_none());
}

#[test]
fn cache_mounts_are_kept_while_a_build_holds_them() {
    let (_d, s) = store();
    let mounts = s.cache().mounts();
    let a = mounts
        .acquire("npm", "npm", CacheSharing::Shared, None)
        .unwrap();
    fs::write(a.path().join("f"), vec![7u8; 10_000]).unwrap();
    // The same key is the same directory, for every build.
    let again = mounts
        .acquire("npm", "npm", CacheSharing::Shared, None)
        .unwrap();
    assert_eq!(again.path(), a.path());
    assert!(again.path().join("f").exists());
    let listed = mounts.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "npm");
    assert!(listed[0].size >= 10_000, "{listed:?}");
    drop((a, again));

    // A shared mount used during a live lease (a running build) stays;
    // once no build holds a lease, it goes.
    let lease = s.lease().unwrap();
    let held = mounts
        .acquire("npm", "npm", CacheSharing::Shared, None)
        .unwrap();
    let kept = mounts.prune().unwrap();
    assert_eq!(kept.len(), 1);
    assert!(!kept[0].removed, "pruned a cache mount a build is using");
    assert!(held.path().join("f").exists());
    drop((held, lease));
    let gone = mounts.prune().unwrap();
    assert!(gone[0].removed && gone[0].size >= 10_000, "{gone:?}");
    assert!(mounts.list().unwrap().is_empty());

    // A locked mount is kept while locked, even without a lease.
    let locked = mounts
        .acquire("apt", "apt", CacheSharing::Locked, None)
        .unwrap();
    assert!(!mounts.prune().unwrap()[0].removed);
    // A private user that finds it busy gets a directory of its own.
    let private = mounts
        .acquire("apt", "apt", CacheSharing::Private, None)
        .unwrap();
    assert_ne!(private.path(), locked.path());
    assert!(private.path().starts_with(s.scratch_dir()));
    drop((private, locked));
    assert!(mounts.prune().unwrap()[0].removed);
}

#[test]
fn a_seeded_cache_mount_is_filled_once_and_a_failed_seed_names_the_mount() {
    let (_d, s) = store();
    let mounts = s.cache().mounts();
    let mut calls = 0;
    let mut fill = |dir: &std::path::Path| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        calls += 1;
        fs::write(dir.join("seed"), b"from a stage")?;
        Ok(())
    };
    for _ in 0..2 {
        let m = mounts
            .acquire(
                "go\0base\0/src",
                "go",
                CacheSharing::Shared,
                Some(&mut fill),
            )
            .unwrap();
        assert_eq!(fs::read(m.path().join("seed")).unwrap(), b"from a stage");
    }
    assert_eq!(calls, 1);
    let mut broken = |_: &std::path::Path| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("the stage has no /src".into())
    };
    let err = mounts
        .acquire("other", "pip", CacheSharing::Shared, Some(&mut broken))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "seeding cache mount pip: the stage has no /src");
    assert!(mounts.list().unwrap().iter().all(|m| m.id != "pip"));
}

#[test]
fn build_records_round_trip_and_blobs_export_into_a_layout() {
    let (_d, s) = store();
    let image = sha256_digest(b"config");
    let records = s.cache().build_records();
    assert_eq!(records.get(&image).unwrap(), None);
    records.put(&image, br#"{"steps":1}"#).unwrap();
    records.put(&image, br#"{"steps":2}"#).unwrap();
    assert_eq!(records.get(&image).unwrap().unwrap(), br#"{"steps":2}"#);

    let d = s.content().write_bytes(b"a layer").unwrap();
    let layout = tempfile::tempdir().unwrap();
    fs::create_dir_all(oci_layout_blobs(layout.path())).unwrap();
    let dest = oci_layout_blob(layout.path(), &d);
    s.content().export_to(&d, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"a layer");
    let missing = sha256_digest(b"never stored");
    let err = s
        .content()
        .export_to(&missing, &oci_layout_blob(layout.path(), &missing))
        .unwrap_err();
    assert!(matches!(err, StoreError::BlobNotFound(_)), "{err}");
}

#[test]
fn the_views_reach_the_same_store() {
    let (_d, s) = store();
    let p = s.snapshots().create().unwrap();
    fs::write(p.upper().join("f"), b"view").unwrap();
    let layer = s.snapshots().commit(p, &LayerOptions::default()).unwrap();
    assert!(s.content().has(&layer.digest));
    assert_eq!(
        s.snapshots().layer_by_diff_id(&layer.diff_id).unwrap(),
        Some(layer.clone())
    );
    let snap = s.snapshots().ensure(&layer).unwrap();
    assert_eq!(fs::read(snap.join("f")).unwrap(), b"view");
    assert_eq!(s.snapshots().path(&layer.diff_id).unwrap(), Some(snap));
    let img = s
        .images()
        .write(&ImageConfig::default(), std::slice::from_ref(&layer))
        .unwrap();
    s.images().tag("views:1", &img.manifest_digest).unwrap();
    let found = s.images().resolve("views:1").unwrap().unwrap();
    assert_eq!(found.config_digest, img.config_digest);
    assert_eq!(s.images().list().unwrap().len(), 1);
    assert!(s.images().untag("views:1").unwrap());
    assert_eq!(s.cache().list().unwrap(), vec![]);
    assert_eq!(s.cache().get("nothing").unwrap(), None);
}
