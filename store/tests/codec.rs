//! Layer codec: tree -> tar -> tree round trips, determinism, whiteouts.
mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{describe, set_mtime};
use kiln_store::layer::{apply_layer, write_layer};
use kiln_store::*;
use proptest::prelude::*;

fn encode(dir: &Path, opts: &LayerOptions) -> (LayerDigests, Vec<u8>) {
    let mut out = Vec::new();
    let d = write_layer(dir, opts, &mut out).unwrap();
    (d, out)
}

fn opts(c: Compression, workers: u32) -> LayerOptions {
    LayerOptions {
        compression: c,
        zstd_workers: workers,
        ..Default::default()
    }
}

/// A tree with every kind of entry and metadata the codec must keep.
fn rich_tree(dir: &Path) {
    common::sample_tree(dir);
    let setuid = dir.join("app/suid");
    fs::write(&setuid, b"x").unwrap();
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(dir.join("tmp")).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let long = "l".repeat(150);
    fs::create_dir_all(dir.join(&long).join(&long)).unwrap();
    fs::write(dir.join(&long).join(&long).join("deep-file"), b"deep").unwrap();
    symlink("t".repeat(200), dir.join("longlink")).unwrap();
    fs::write(dir.join("ünïcødé"), b"u").unwrap();
    rustix::fs::lsetxattr(
        dir.join("app/app.py").as_path(),
        "user.note",
        b"v\0binary",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    if common::is_root() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            dir.join("app/run.sh").as_path(),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(3_000_000)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        rustix::fs::lsetxattr(
            dir.join("app/suid").as_path(),
            "security.capability",
            &[
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("null").as_path(),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }
    // Fixed mtimes everywhere, deepest first so parents keep theirs.
    let mut all: Vec<_> = describe(dir, true).into_keys().collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(&dir.join(p), 1_600_000_000 + i as i64);
    }
}

#[test]
fn round_trip_preserves_everything_for_every_compression() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let want = describe(src.path(), true);
    let mut diff_ids = Vec::new();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (d, bytes) = encode(src.path(), &opts(c, 2));
        assert_eq!(d.size, bytes.len() as u64);
        assert_eq!(d.digest, sha256_digest(&bytes));
        diff_ids.push(d.diff_id.clone());
        let dst = tempfile::tempdir().unwrap();
        let got_diff = apply_layer(
            &mut &bytes[..],
            dst.path(),
            WhiteoutMode::Apply,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(got_diff, d.diff_id, "{c:?}");
        let got = describe(dst.path(), true);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{c:?}"
        );
        for (k, v) in &want {
            assert_eq!(&got[k], v, "{c:?}: {k}");
        }
        // Re-encoding what was applied gives the very same layer.
        let (d2, bytes2) = encode(dst.path(), &opts(c, 2));
        assert_eq!(d2, d, "{c:?}");
        assert_eq!(bytes2, bytes);
    }
    // The uncompressed stream does not depend on the compression.
    assert!(diff_ids.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn zstd_output_is_the_same_for_any_worker_count() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    // Big enough for several zstd jobs.
    let mut big = Vec::with_capacity(12 << 20);
    let mut x: u32 = 1;
    while big.len() < (12 << 20) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        big.extend_from_slice(&(x >> 8).to_le_bytes()[..2]);
        big.extend_from_slice(b"some text ");
    }
    fs::write(src.path().join("big"), &big).unwrap();
    let (d1, b1) = encode(src.path(), &opts(Compression::Zstd, 1));
    for w in [0, 2, 3, 8] {
        let (d, b) = encode(src.path(), &opts(Compression::Zstd, w));
        assert_eq!(d, d1, "workers={w}");
        assert_eq!(b, b1, "workers={w}");
    }
}

#[test]
fn source_date_epoch_clamps_later_mtimes_only() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("old"), b"o").unwrap();
    fs::write(src.path().join("new"), b"n").unwrap();
    set_mtime(&src.path().join("old"), 1000);
    set_mtime(&src.path().join("new"), 2_000_000_000);
    let o = LayerOptions {
        source_date_epoch: Some(5000),
        compression: Compression::None,
        ..Default::default()
    };
    let (_, bytes) = encode(src.path(), &o);
    let dst = tempfile::tempdir().unwrap();
    apply_layer(
        &mut &bytes[..],
        dst.path(),
        WhiteoutMode::Apply,
        &Limits::default(),
    )
    .unwrap();
    let got = describe(dst.path(), true);
    assert_eq!(got["old"].mtime, 1000);
    assert_eq!(got["new"].mtime, 5000);
}

#[test]
fn entries_are_sorted_and_carry_no_host_names() {
    let src = tempfile::tempdir().unwrap();
    for n in ["b", "a", "c"] {
        fs::create_dir(src.path().join(n)).unwrap();
        fs::write(src.path().join(n).join("z"), b"").unwrap();
        fs::write(src.path().join(n).join("y"), b"").unwrap();
    }
    let (_, bytes) = encode(src.path(), &opts(Compression::None, 1));
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert!(e.header().username().unwrap().unwrap_or("").is_empty());
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(
        names,
        ["a/", "a/y", "a/z", "b/", "b/y", "b/z", "c/", "c/y", "c/z"]
    );
}

/// An upper dir that holds OCI's whiteout file (a copied root's diff on a
/// filesystem that refuses overlay's 0/0 device, overlayfs itself) encodes
/// to the very bytes of one holding overlay's whiteout.
#[test]
fn an_oci_whiteout_file_in_an_upper_dir_encodes_as_an_overlay_whiteout() {
    require_root!();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for u in [a.path(), b.path()] {
        fs::create_dir(u.join("etc")).unwrap();
        fs::write(u.join("etc/kept"), b"k").unwrap();
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        a.path().join("etc/removed").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::write(b.path().join("etc/.wh.removed"), b"").unwrap();
    fs::set_permissions(
        b.path().join("etc/.wh.removed"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    for u in [a.path(), b.path()] {
        for p in ["etc/removed", "etc/.wh.removed", "etc/kept", "etc"] {
            if fs::symlink_metadata(u.join(p)).is_ok() {
                set_mtime(&u.join(p), 1_600_000_000);
            }
        }
    }
    let (da, ba) = encode(a.path(), &opts(Compression::None, 1));
    let (db, bb) = encode(b.path(), &opts(Compression::None, 1));
    assert_eq!(da.diff_id, db.diff_id);
    assert_eq!(ba, bb);
}

#[test]
fn overlay_whiteouts_become_oci_whiteouts_and_back() {
    require_root!();
    let upper = tempfile::tempdir().unwrap();
    let u = upper.path();
    fs::create_dir(u.join("etc")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("etc/removed").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir(u.join("opaque")).unwrap();
    rustix::fs::lsetxattr(
        u.join("opaque").as_path(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        u.join("opaque").as_path(),
        "trusted.overlay.origin",
        b"junk",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(u.join("opaque/kept"), b"k").unwrap();
    let (_, bytes) = encode(u, &opts(Compression::None, 1));
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().to_string_lossy().into_owned();
        if let Some(x) = e.pax_extensions().unwrap() {
            for x in x {
                assert!(
                    !x.unwrap().key().unwrap().contains("trusted.overlay"),
                    "{n}"
                );
            }
        }
        names.push(n);
    }
    assert!(names.contains(&"etc/.wh.removed".to_string()), "{names:?}");
    assert!(
        names.contains(&"opaque/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == "etc/removed"));

    // Overlay mode: back to a valid overlay lower dir.
    let snap = tempfile::tempdir().unwrap();
    apply_layer(
        &mut &bytes[..],
        snap.path(),
        WhiteoutMode::Overlay,
        &Limits::default(),
    )
    .unwrap();
    let m = fs::symlink_metadata(snap.path().join("etc/removed")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m.file_type()
    ));
    assert_eq!(std::os::unix::fs::MetadataExt::rdev(&m), 0);
    assert_eq!(
        common::xattrs(&snap.path().join("opaque"))
            .get("trusted.overlay.opaque")
            .map(|v| v.as_slice()),
        Some(&b"y"[..])
    );
    assert!(!common::xattrs(&snap.path().join("opaque")).contains_key("trusted.overlay.origin"));

    // Apply mode: flattening onto an existing tree deletes.
    let base = tempfile::tempdir().unwrap();
    let b = base.path();
    fs::create_dir_all(b.join("etc")).unwrap();
    fs::write(b.join("etc/removed"), b"r").unwrap();
    fs::write(b.join("etc/stays"), b"s").unwrap();
    fs::create_dir_all(b.join("opaque/sub")).unwrap();
    fs::write(b.join("opaque/old"), b"o").unwrap();
    apply_layer(&mut &bytes[..], b, WhiteoutMode::Apply, &Limits::default()).unwrap();
    assert!(!b.join("etc/removed").exists());
    assert!(b.join("etc/stays").exists());
    assert!(!b.join("opaque/old").exists() && !b.join("opaque/sub").exists());
    assert_eq!(fs::read(b.join("opaque/kept")).unwrap(), b"k");
}

#[test]
fn deep_tree_within_path_max_round_trips() {
    let src = tempfile::tempdir().unwrap();
    let mut p = src.path().to_path_buf();
    for _ in 0..1500 {
        p.push("d");
    }
    // Created relative to avoid the host's own PATH_MAX on the absolute path.
    fs::create_dir_all(&p).unwrap_or_else(|_| {
        let mut cur = fs::File::open(src.path()).unwrap();
        for _ in 0..1500 {
            let _ = rustix::fs::mkdirat(&cur, "d", rustix::fs::Mode::from_raw_mode(0o755));
            cur = fs::File::from(
                rustix::fs::openat(
                    &cur,
                    "d",
                    rustix::fs::OFlags::RDONLY,
                    rustix::fs::Mode::empty(),
                )
                .unwrap(),
            );
        }
    });
    let (d, bytes) = encode(src.path(), &opts(Compression::Zstd, 1));
    let dst = tempfile::tempdir().unwrap();
    assert_eq!(
        apply_layer(
            &mut &bytes[..],
            dst.path(),
            WhiteoutMode::Apply,
            &Limits::default()
        )
        .unwrap(),
        d.diff_id
    );
}

#[derive(Debug, Clone)]
enum Spec {
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: i64,
        xattr: Option<Vec<u8>>,
    },
    Dir {
        mode: u32,
        children: Vec<(String, Spec)>,
    },
    Symlink(String),
    HardLinkToFirstFile,
}

fn spec() -> impl Strategy<Value = Spec> {
    let leaf = prop_oneof![
        (
            prop::collection::vec(any::<u8>(), 0..300),
            prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o2711, 0o600, 0o400]),
            0i64..2_000_000_000,
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(content, mode, mtime, xattr)| Spec::File {
                content,
                mode,
                mtime,
                xattr
            }),
        "[a-z./]{1,30}".prop_map(Spec::Symlink),
        Just(Spec::HardLinkToFirstFile),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        (
            prop::sample::select(vec![0o755u32, 0o700, 0o1777, 0o2755]),
            prop::collection::vec(("[a-z]{1,8}", inner), 0..6),
        )
            .prop_map(|(mode, children)| Spec::Dir { mode, children })
    })
}

fn build(dir: &Path, children: &[(String, Spec)], first_file: &mut Option<std::path::PathBuf>) {
    for (name, s) in children {
        let p = dir.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        match s {
            Spec::File {
                content,
                mode,
                mtime,
                xattr,
            } => {
                fs::write(&p, content).unwrap();
                if let Some(x) = xattr {
                    rustix::fs::lsetxattr(
                        p.as_path(),
                        "user.k",
                        x,
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
                set_mtime(&p, *mtime);
                first_file.get_or_insert(p);
            }
            Spec::Dir { mode, children } => {
                fs::create_dir(&p).unwrap();
                build(&p, children, first_file);
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Spec::Symlink(t) => symlink(t, &p).unwrap(),
            Spec::HardLinkToFirstFile => {
                if let Some(f) = first_file {
                    fs::hard_link(f, &p).unwrap();
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_round_trips_deterministically(children in prop::collection::vec(("[a-z]{1,8}", spec()), 0..8)) {
        let src = tempfile::tempdir().unwrap();
        let mut first = None;
        build(src.path(), &children, &mut first);
        let (d, bytes) = encode(src.path(), &opts(Compression::Zstd, 2));
        let (d_again, bytes_again) = encode(src.path(), &opts(Compression::Zstd, 1));
        prop_assert_eq!(&d, &d_again);
        prop_assert_eq!(&bytes, &bytes_again);
        let dst = tempfile::tempdir().unwrap();
        let diff = apply_layer(&mut &bytes[..], dst.path(), WhiteoutMode::Apply, &Limits::default()).unwrap();
        prop_assert_eq!(&diff, &d.diff_id);
        // Directory mtimes are set last by the applier, so they match too.
        let want = describe(src.path(), true);
        let got = describe(dst.path(), true);
        prop_assert_eq!(want, got);
        let (d2, _) = encode(dst.path(), &opts(Compression::Zstd, 2));
        prop_assert_eq!(d2, d);
    }
}

#[test]
fn implicit_parent_dirs_are_deterministic() {
    // A tar with "a/b/file" but no "a/" or "a/b/" entries.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_mtime(1_234_567);
    b.append_data(&mut h, "a/b/file", &b"x"[..]).unwrap();
    let t = b.into_inner().unwrap();
    let one = tempfile::tempdir().unwrap();
    apply_layer(
        &mut &t[..],
        one.path(),
        WhiteoutMode::Overlay,
        &Limits::default(),
    )
    .unwrap();
    let d = describe(one.path(), true);
    assert_eq!((d["a"].mode, d["a"].mtime), (0o755, 1_234_567));
    assert_eq!((d["a/b"].mode, d["a/b"].mtime), (0o755, 1_234_567));
    let (first, _) = encode(one.path(), &opts(Compression::Zstd, 1));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let two = tempfile::tempdir().unwrap();
    apply_layer(
        &mut &t[..],
        two.path(),
        WhiteoutMode::Overlay,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(encode(two.path(), &opts(Compression::Zstd, 1)).0, first);
}

#[test]
fn explicit_dir_entry_after_its_children_wins() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_mtime(5);
    b.append_data(&mut h, "a/file", &b"x"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o711);
    h.set_mtime(99);
    b.append_data(&mut h, "a/", &b""[..]).unwrap();
    let t = b.into_inner().unwrap();
    let dst = tempfile::tempdir().unwrap();
    apply_layer(
        &mut &t[..],
        dst.path(),
        WhiteoutMode::Apply,
        &Limits::default(),
    )
    .unwrap();
    let d = describe(dst.path(), true);
    assert_eq!((d["a"].mode, d["a"].mtime), (0o711, 99));
}

#[test]
fn upper_dirs_from_redirect_or_metacopy_mounts_are_refused() {
    require_root!();
    for x in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let u = tempfile::tempdir().unwrap();
        fs::create_dir(u.path().join("moved")).unwrap();
        rustix::fs::lsetxattr(
            u.path().join("moved").as_path(),
            x,
            b"/orig",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let e =
            write_layer(u.path(), &opts(Compression::None, 1), &mut std::io::sink()).unwrap_err();
        assert!(matches!(e, LayerError::OverlayFeature { .. }), "{x}: {e}");
    }
}
