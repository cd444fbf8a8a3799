//! User and group IDs through the binary: numeric IDs outside runc's range
//! (0 to 2^31-1) are refused wherever they are read (USER, `--chown`,
//! `kiln run -u`, the image's /etc/passwd) instead of running as root.
//! And an image whose layer makes /etc opaque runs and builds.

mod common;

use common::{write_tree, Kiln};

const RANGE: &str = "uids and gids must be in range 0-2147483647";

fn setup() -> Option<Kiln> {
    common::root_with_busybox("builds and containers need root")
}

fn build(k: &Kiln, dockerfile: &str) -> common::Run {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", dockerfile), ("f", "x")]);
    k.run(&[
        "build",
        "--progress=plain",
        "-t",
        "ids:t",
        ctx.path().to_str().unwrap(),
    ])
}

#[test]
fn user_out_of_range_fails_the_build_at_its_line() {
    let Some(k) = setup() else { return };
    for id in ["4294967295", "2147483648", "-1", "0:4294967295"] {
        let r = build(&k, &format!("FROM busybox\nUSER {id}\nRUN id -u\n")).fails();
        let e = r.stderr();
        assert!(e.contains(RANGE), "{id}: {e}");
        assert!(e.contains("Dockerfile:2"), "{id}: {e}");
    }
    let r = build(&k, "FROM busybox\nCOPY --chown=4294967295 f /f\n").fails();
    assert!(r.stderr().contains(RANGE), "{}", r.stderr());
    // The largest valid ID builds and runs as itself.
    build(
        &k,
        "FROM busybox\nUSER 2147483647\nRUN test \"$(id -u)\" = 2147483647\n",
    )
    .ok();
}

#[test]
fn mount_uid_out_of_range_fails_the_build_at_its_line() {
    let Some(k) = setup() else { return };
    for m in [
        "type=cache,target=/c,uid=4294967295",
        "type=secret,id=s,gid=2147483648",
    ] {
        let r = build(
            &k,
            &format!("FROM busybox\nRUN true\nRUN --mount={m} true\n"),
        )
        .fails();
        let e = r.stderr();
        assert!(e.contains(RANGE), "{m}: {e}");
        assert!(e.contains("Dockerfile:3"), "{m}: {e}");
    }
    // The largest ID is the mount's owner.
    build(
        &k,
        "FROM busybox\nRUN --mount=type=cache,target=/c,uid=2147483647,gid=2147483647 \
         test \"$(stat -c %u:%g /c)\" = 2147483647:2147483647\n",
    )
    .ok();
}

#[test]
fn run_u_out_of_range_is_refused_and_the_maximum_accepted() {
    let Some(k) = setup() else { return };
    for id in ["4294967295", "2147483648", "1000:4294967295"] {
        let r = k.run(&["run", "--rm", "-u", id, "busybox", "id", "-u"]);
        assert_eq!(r.code(), 125, "{id}: {}", r.stderr());
        assert!(r.stderr().contains(RANGE), "{id}: {}", r.stderr());
        assert_eq!(r.stdout(), "", "{id}: nothing ran");
    }
    let r = k
        .run(&["run", "--rm", "-u", "2147483647", "busybox", "id", "-u"])
        .ok();
    assert_eq!(r.stdout(), "2147483647\n");
}

#[test]
fn passwd_entry_out_of_range_names_file_and_line() {
    let Some(k) = setup() else { return };
    // The image's passwd gets an entry whose uid would wrap to -1.
    build(
        &k,
        "FROM busybox\nRUN echo 'big:x:4294967295:0::/:/bin/sh' >> /etc/passwd\n",
    )
    .ok();
    let lines = k
        .run(&["run", "--rm", "ids:t", "wc", "-l", "/etc/passwd"])
        .ok()
        .stdout();
    let n: usize = lines.split_whitespace().next().unwrap().parse().unwrap();
    let want = format!("/etc/passwd line {n}");
    let r = k.run(&["run", "--rm", "-u", "big", "ids:t", "id", "-u"]);
    assert_eq!(r.code(), 125, "{}", r.stderr());
    assert!(r.stderr().contains(&want), "{}", r.stderr());
    assert!(r.stderr().contains(RANGE), "{}", r.stderr());
    assert_eq!(r.stdout(), "");
    // The same entry selected by a build: USER then RUN, and --chown.
    for df in [
        "FROM ids:t\nUSER big\nRUN id -u\n",
        "FROM ids:t\nCOPY --chown=big f /f\n",
    ] {
        let r = build(&k, df).fails();
        assert!(r.stderr().contains(&want), "{df}: {}", r.stderr());
    }
}

/// The entries of a tar file, in order.
fn tar_entries(bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// A tar holding (path, contents) regular files, directories for paths
/// ending in '/'.
fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
        }
        h.set_mtime(1_000_000_000);
        b.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// busybox plus a layer with `etc/`, `etc/newfile`, `etc/.wh..wh..opq`,
/// loaded as `opq:1` through a docker archive the test writes itself.
fn load_opaque_etc_image(k: &Kiln) {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("bb.tar");
    k.run(&["save", "-o", saved.to_str().unwrap(), "busybox:latest"])
        .ok();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut a = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let p = e.path().unwrap().display().to_string();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            files.push((p, v));
        }
    }
    let get = |name: &str| files.iter().find(|f| f.0 == name).unwrap().1.clone();
    let mut manifest: serde_json::Value = serde_json::from_slice(&get("manifest.json")).unwrap();
    let cfg_name = manifest[0]["Config"].as_str().unwrap().to_string();
    let mut cfg: serde_json::Value = serde_json::from_slice(&get(&cfg_name)).unwrap();

    let layer = layer_tar(&[
        ("etc/", ""),
        ("etc/newfile", "new\n"),
        ("etc/.wh..wh..opq", ""),
    ]);
    let layer_hex = sha256_hex(&layer);
    cfg["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(format!("sha256:{layer_hex}").into());
    if let Some(h) = cfg["history"].as_array_mut() {
        h.push(serde_json::json!({"created_by": "opaque /etc"}));
    }
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let new_cfg = format!("{}.json", sha256_hex(&cfg_bytes));
    let layer_name = format!("{layer_hex}/layer.tar");
    manifest[0]["Config"] = new_cfg.clone().into();
    manifest[0]["RepoTags"] = serde_json::json!(["opq:1"]);
    manifest[0]["Layers"]
        .as_array_mut()
        .unwrap()
        .push(layer_name.clone().into());

    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        out.append_data(&mut h, name, data).unwrap();
    };
    for (name, data) in &files {
        if name.ends_with("/layer.tar") {
            add(name, data);
        }
    }
    add(&layer_name, &layer);
    add(&new_cfg, &cfg_bytes);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let archive = dir.path().join("opq.tar");
    std::fs::write(&archive, out.into_inner().unwrap()).unwrap();
    k.run(&["load", "-i", archive.to_str().unwrap()]).ok();
}

#[test]
fn an_image_with_an_opaque_etc_runs_and_builds() {
    let Some(k) = setup() else { return };
    load_opaque_etc_image(&k);
    let r = k
        .run(&[
            "run",
            "--rm",
            "--hostname",
            "opq",
            "opq:1",
            "sh",
            "-c",
            "cat /etc/newfile /etc/hostname; test -e /etc/passwd || echo no-passwd",
        ])
        .ok();
    assert_eq!(r.stdout(), "new\nopq\nno-passwd\n");

    // RUN (with a mount target under the opaque /etc) builds on it, and the
    // mount points do not end up in the layer.
    build(
        &k,
        "FROM opq:1\nRUN --mount=type=tmpfs,target=/etc/cache.d \
         cat /etc/newfile > /out && grep -q localhost /etc/hosts\n",
    )
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("t.tar");
    k.run(&["save", "-o", saved.to_str().unwrap(), "ids:t"])
        .ok();
    let bytes = std::fs::read(&saved).unwrap();
    let mut a = tar::Archive::new(&bytes[..]);
    let mut manifest = Vec::new();
    let mut layers: Vec<(String, Vec<u8>)> = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        if p == "manifest.json" {
            manifest = v;
        } else if p.ends_with("layer.tar") {
            layers.push((p, v));
        }
    }
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let top = m[0]["Layers"].as_array().unwrap().last().unwrap().clone();
    let top = &layers.iter().find(|l| l.0 == top).unwrap().1;
    assert_eq!(tar_entries(top), ["out"]);
}
