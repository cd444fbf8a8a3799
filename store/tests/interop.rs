//! Interop with a real Docker engine: an image kiln saves is accepted by
//! `docker load` with the same image ID, and what `docker save` writes
//! loads into kiln. Skipped (loudly) when no engine answers.
mod common;

use std::process::Command;

use kiln_store::*;

fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn docker_load_accepts_kiln_save_and_kiln_loads_docker_save() {
    if !docker_available() {
        kiln_testkit::skip("no Docker engine answers `docker info` (install docker.io and start `dockerd --bridge=none --iptables=false`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("bin/hello", &b"#!/bin/sh\necho hi\n"[..], 0o755),
        ("etc/motd", &b"kiln\n"[..], 0o644),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data).unwrap();
    }
    let rootfs = b.into_inner().unwrap();
    let tag = format!("kiln-store-interop:{}", std::process::id());
    let mut cfg = ImageConfig {
        architecture: image::host_architecture().into(),
        os: "linux".into(),
        ..Default::default()
    };
    cfg.config.cmd = Some(vec!["/bin/hello".into()]);
    cfg.config.env = vec!["PATH=/bin".into()];
    cfg.config
        .labels
        .insert("org.example".into(), "kiln".into());
    let rec = s
        .import_rootfs_tar(&mut &rootfs[..], &tag, Some(cfg))
        .unwrap();

    let archive = dir.path().join("kiln-save.tar");
    let mut f = std::fs::File::create(&archive).unwrap();
    s.save(std::slice::from_ref(&tag), ArchiveFormat::Docker, &mut f)
        .unwrap();
    drop(f);
    let out = docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {tag}")), "{out}");
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    assert_eq!(
        id.trim(),
        rec.config_digest.as_str(),
        "docker computed another image ID"
    );
    let cmd = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}} {{index .Config.Labels \"org.example\"}}",
        &tag,
    ]);
    assert_eq!(cmd.trim(), r#"["/bin/hello"] kiln"#);

    // And back: docker save -> kiln load -> kiln save -> docker load.
    let back = dir.path().join("docker-save.tar");
    docker(&["save", "-o", back.to_str().unwrap(), &tag]);
    let s2 = Store::open(&dir.path().join("root2")).unwrap();
    let loaded = s2.load(&mut std::fs::File::open(&back).unwrap()).unwrap();
    assert_eq!(loaded, vec![tag.clone()]);
    let r = s2.resolve_image(&tag).unwrap().unwrap();
    assert_eq!(r.config_digest, rec.config_digest);
    let snap = s2.ensure_snapshot(&r.layers[0]).unwrap();
    assert_eq!(std::fs::read(snap.join("etc/motd")).unwrap(), b"kiln\n");
    docker(&["rmi", &tag]);
    let again = dir.path().join("again.tar");
    let mut f = std::fs::File::create(&again).unwrap();
    s2.save(std::slice::from_ref(&tag), ArchiveFormat::Docker, &mut f)
        .unwrap();
    drop(f);
    let out = docker(&["load", "-i", again.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {tag}")), "{out}");
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).trim(),
        rec.config_digest.as_str()
    );
    docker(&["rmi", &tag]);
}

#[test]
fn oci_layout_is_accepted_by_skopeo() {
    let has_skopeo = Command::new("skopeo")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_skopeo {
        kiln_testkit::skip("skopeo is not installed (apt-get install skopeo)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
    let rootfs = b.into_inner().unwrap();
    let rec = s
        .import_rootfs_tar(&mut &rootfs[..], "oci-test:1", None)
        .unwrap();
    let mut out = Vec::new();
    s.save(&["oci-test:1".into()], ArchiveFormat::Oci, &mut out)
        .unwrap();
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    tar::Archive::new(&out[..]).unpack(&layout).unwrap();
    let o = Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{}:1", layout.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256_digest(&o.stdout), rec.manifest_digest);
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--config",
            &format!("oci:{}:1", layout.display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
