//! Issue 20, items 6, 7 and 9, through the `kiln` binary: a damaged
//! database never loses the images, a decompression bomb is refused with the
//! layer's name and how to raise the bound, and `kiln load` refuses an
//! archive whose layers would not unpack, keeping nothing. The hostile
//! archives are made here.

mod common;

use std::io::Write;
use std::path::Path;

use common::{require, Kiln};
use sha2::{Digest as _, Sha256};

fn sha256(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    let hex: String = d.iter().map(|x| format!("{x:02x}")).collect();
    format!("sha256:{hex}")
}

/// A raw ustar member (names written as given: no cleaning).
fn member(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, body: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::new(kind));
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn layer_tar(members: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, k, l, b) in members {
        member(&mut out, n, *k, l, b);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A docker-archive (`docker save` layout) of one image with `layer` as
/// its only layer (the diffID is that of `diff`, the uncompressed tar).
fn docker_archive(tag: &str, layer: &[u8], diff: &[u8]) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(diff)]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cfg_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest = serde_json::json!([
        {"Config": cfg_name, "RepoTags": [tag], "Layers": ["l/layer.tar"]}
    ]);
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("l/layer.tar", layer.to_vec()),
        (cfg_name.as_str(), config),
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &body[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn load(k: &Kiln, archive: &[u8], env: &[(&str, &str)]) -> common::Run {
    let f = k.root.path().join("in.tar");
    std::fs::write(&f, archive).unwrap();
    let mut c = k.cmd();
    c.args(["load", "-i", f.to_str().unwrap()]);
    for (n, v) in env {
        c.env(n, v);
    }
    common::Run {
        out: c.output().expect("spawn kiln"),
    }
}

fn images(k: &Kiln) -> String {
    k.run(&["images", "-q"]).ok().stdout()
}

#[test]
fn load_refuses_layers_that_would_not_unpack_and_keeps_nothing() {
    if !require(common::is_root(), "the layer checks match a root unpack") {
        return;
    }
    let k = Kiln::new();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            layer_tar(&[("../../etc/evil", b'0', "", b"x")]),
            "'..' leads outside the root",
        ),
        (
            "hardlink out",
            layer_tar(&[("h", b'1', "../../../etc/shadow", b"")]),
            "target outside the root",
        ),
        (
            "hardlink to nothing",
            layer_tar(&[("h", b'1', "etc/shadow", b"")]),
            "target not found",
        ),
        (
            "file as a parent",
            layer_tar(&[("f", b'0', "", b""), ("f/x", b'0', "", b"")]),
            "a parent is not a directory",
        ),
    ];
    for (what, layer, want) in cases {
        let r = load(&k, &docker_archive("hostile:1", &layer, &layer), &[]).fails();
        let e = r.stderr();
        assert!(e.contains(want), "{what}: {e}");
        assert!(
            e.contains("cannot be unpacked") && e.contains(&sha256(&layer)),
            "{what}: {e}"
        );
        assert_eq!(images(&k), "", "{what}: an image was kept");
        assert!(k.run(&["inspect", "hostile:1"]).out.status.code() != Some(0));
    }
    // A layer whose content is not what the config's diffID says.
    let layer = layer_tar(&[("ok", b'0', "", b"fine")]);
    let other = layer_tar(&[("ok", b'0', "", b"else")]);
    let e = load(&k, &docker_archive("lying:1", &layer, &other), &[])
        .fails()
        .stderr();
    assert!(e.contains("diffID mismatch"), "{e}");
    assert_eq!(images(&k), "");
    // The same archive with an honest layer loads.
    load(&k, &docker_archive("fine:1", &layer, &layer), &[]).ok();
    assert!(k.run(&["images"]).ok().stdout().contains("fine"));
    let fsck = k.run(&["system", "fsck"]).ok().stdout();
    assert!(fsck.contains("no problems found"), "{fsck}");
}

#[test]
fn a_decompression_bomb_is_refused_naming_the_layer_and_the_bound() {
    if !require(common::is_root(), "unpacking layers as root") {
        return;
    }
    let k = Kiln::new();
    // 8 MB of zeros in one file: about 8 KB of gzip.
    let big = vec![0u8; 8 << 20];
    let tar = layer_tar(&[("zeros", b'0', "", &big)]);
    let gz = gzip(&tar);
    assert!(gz.len() < 64 << 10, "{}", gz.len());
    let archive = docker_archive("bomb:1", &gz, &tar);
    let r = load(&k, &archive, &[("KILN_MAX_LAYER_SIZE", "1MB")]).fails();
    let e = r.stderr();
    assert!(e.contains(&sha256(&gz)), "{e}");
    assert!(
        e.contains("exceeds the limit of 1000000 uncompressed bytes"),
        "{e}"
    );
    assert!(
        e.contains("--max-layer-size") && e.contains("KILN_MAX_LAYER_SIZE"),
        "{e}"
    );
    assert_eq!(images(&k), "");
    // The flag overrides the environment; within the bound it loads.
    let f = k.root.path().join("bomb.tar");
    std::fs::write(&f, &archive).unwrap();
    k.cmd()
        .env("KILN_MAX_LAYER_SIZE", "1MB")
        .args([
            "--max-layer-size",
            "20MB",
            "load",
            "-i",
            f.to_str().unwrap(),
        ])
        .output()
        .map(|o| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)))
        .unwrap();
    // An entry-count bomb.
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, u8, &str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), b'0', "", &b""[..]))
        .collect();
    let t = layer_tar(&many);
    let e = load(
        &k,
        &docker_archive("many:1", &t, &t),
        &[("KILN_MAX_LAYER_ENTRIES", "20")],
    )
    .fails()
    .stderr();
    assert!(e.contains("exceeds the limit of 20 tar entries"), "{e}");
    assert!(e.contains("--max-layer-entries"), "{e}");
}

#[test]
fn add_of_a_bomb_archive_from_the_context_is_refused() {
    if !require(common::is_root(), "kiln build runs containers: needs root") {
        return;
    }
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    let big = vec![0u8; 8 << 20];
    std::fs::write(
        ctx.path().join("bomb.tar.gz"),
        gzip(&layer_tar(&[("zeros", b'0', "", &big)])),
    )
    .unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nADD bomb.tar.gz /\n",
    )
    .unwrap();
    let e = k
        .cmd()
        .args([
            "--max-layer-size",
            "1MB",
            "build",
            "--progress=plain",
            "-t",
            "b:1",
        ])
        .arg(ctx.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success(), "{text}");
    assert!(text.contains("bomb.tar.gz"), "{text}");
    assert!(
        text.contains("exceeds the limit of 1000000 uncompressed bytes"),
        "{text}"
    );
    assert!(text.contains("--max-layer-size"), "{text}");
}

#[test]
fn an_empty_or_truncated_database_gives_every_image_back() {
    if !require(common::is_root(), "kiln run needs root") {
        return;
    }
    for cut in ["empty", "half"] {
        let k = Kiln::new();
        if !k.with_busybox() {
            return;
        }
        let id = k.run(&["images", "-q"]).ok().stdout().trim().to_string();
        assert!(!id.is_empty());
        let db = k.root.path().join("kiln.db");
        truncate_db(&db, cut);
        let r = k.run(&["images", "-q"]).ok();
        assert!(
            r.stderr().contains("database was damaged"),
            "{cut}: {}",
            r.stderr()
        );
        assert!(r.stdout().contains(&id), "{cut}: {} lost {id}", r.stdout());
        let fsck = k.run(&["system", "fsck"]).ok().stdout();
        assert!(fsck.contains("no problems found"), "{cut}: {fsck}");
        let out = k.run(&["run", "--rm", &id, "echo", "alive"]).ok().stdout();
        assert_eq!(out.trim(), "alive", "{cut}");
        // Building FROM it works (by ID: tags are not recoverable).
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {id}\nRUN echo ok > /ok\n"),
        )
        .unwrap();
        k.run(&["build", "-q", "-t", "after:1", ctx.path().to_str().unwrap()])
            .ok();
    }
}

fn truncate_db(db: &Path, cut: &str) {
    let root = db.parent().unwrap();
    for f in ["kiln.db-wal", "kiln.db-shm"] {
        let _ = std::fs::remove_file(root.join(f));
    }
    let len = std::fs::metadata(db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.set_len(if cut == "empty" { 0 } else { len / 2 }).unwrap();
}
