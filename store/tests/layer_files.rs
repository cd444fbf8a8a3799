//! `Store::layer_files`: the files chosen paths hold across an image's
//! layers, each layer read once per selector.

use kiln_store::*;

fn rootfs(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, c) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(c.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        b.append_data(&mut h, p, *c).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn a_layers_scan_is_kept_and_used_again_without_reading_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    let data = rootfs(&[
        ("var/lib/dpkg/status", b"Package: a\n\xff\n"),
        ("etc/x", b"no"),
    ]);
    let img = s.import_rootfs_tar(&mut &data[..], "x:1", None).unwrap();
    let want = |p: &str| p == "var/lib/dpkg/status";
    let first = s
        .layer_files(&img.layers, "test-v1", &want, 1 << 20)
        .unwrap();
    assert_eq!(
        first.files().get("var/lib/dpkg/status").map(Vec::as_slice),
        Some(&b"Package: a\n\xff\n"[..])
    );
    // The blob is gone: the kept scan still answers (and binary bytes
    // survived being kept).
    std::fs::remove_file(
        s.root()
            .join("blobs/sha256")
            .join(img.layers[0].digest.hex()),
    )
    .unwrap();
    let again = s
        .layer_files(&img.layers, "test-v1", &want, 1 << 20)
        .unwrap();
    assert_eq!(again.files(), first.files());
    // Another selector is another scan, which needs the layer.
    assert!(s
        .layer_files(&img.layers, "test-v2", &want, 1 << 20)
        .is_err());
}
