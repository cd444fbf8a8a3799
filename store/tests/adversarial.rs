//! Evil layers. Each case asserts the outcome (the error, or that the
//! entry landed inside the root) AND that a canary directory next to the
//! root is unchanged: files, modes, owners, link counts, contents.
mod common;

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use kiln_store::layer::apply_layer;
use kiln_store::{LayerError, Limits, WhiteoutMode};

/// Builds tars byte by byte, with no validation of names.
#[derive(Default)]
struct Evil {
    out: Vec<u8>,
}

impl Evil {
    fn header(&mut self, name: &[u8], kind: u8, size: u64, link: &[u8], dev: (u32, u32)) {
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().unwrap();
            let n = name.len().min(100);
            u.name[..n].copy_from_slice(&name[..n]);
            let l = link.len().min(100);
            u.linkname[..l].copy_from_slice(&link[..l]);
        }
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(size);
        h.as_mut_bytes()[156] = kind;
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
    }
    fn data(&mut self, d: &[u8]) {
        self.out.extend_from_slice(d);
        let pad = (512 - d.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }
    fn file(mut self, name: &str, content: &[u8]) -> Self {
        self.header(name.as_bytes(), b'0', content.len() as u64, b"", (0, 0));
        self.data(content);
        self
    }
    fn dir(mut self, name: &str) -> Self {
        self.header(name.as_bytes(), b'5', 0, b"", (0, 0));
        self
    }
    fn symlink(mut self, name: &str, target: &str) -> Self {
        self.header(name.as_bytes(), b'2', 0, target.as_bytes(), (0, 0));
        self
    }
    fn hardlink(mut self, name: &str, target: &str) -> Self {
        self.header(name.as_bytes(), b'1', 0, target.as_bytes(), (0, 0));
        self
    }
    fn device(mut self, name: &str, major: u32, minor: u32) -> Self {
        self.header(name.as_bytes(), b'3', 0, b"", (major, minor));
        self
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = 3 + k.len() + v.len();
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len = len.to_string().len() + rest;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.header(b"PaxHeaders/x", b'x', body.len() as u64, b"", (0, 0));
        self.data(&body);
        self
    }
    fn raw(mut self, f: impl FnOnce(&mut Vec<u8>)) -> Self {
        f(&mut self.out);
        self
    }
    fn end(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    canary: PathBuf,
    before: std::collections::BTreeMap<String, (common::Node, u64)>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let canary = tmp.path().join("canary");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(canary.join("sub")).unwrap();
        fs::write(canary.join("file"), b"precious").unwrap();
        fs::write(canary.join("sub/inner"), b"also precious").unwrap();
        std::os::unix::fs::symlink("file", canary.join("link")).unwrap();
        let before = common::canary_state(&canary);
        Fixture {
            _tmp: tmp,
            root,
            canary,
            before,
        }
    }
    fn canary_abs(&self) -> String {
        self.canary.to_string_lossy().into_owned()
    }
    fn apply(&self, tar: &[u8], mode: WhiteoutMode) -> Result<kiln_store::Digest, LayerError> {
        self.apply_limits(tar, mode, &Limits::default())
    }
    fn apply_limits(
        &self,
        tar: &[u8],
        mode: WhiteoutMode,
        limits: &Limits,
    ) -> Result<kiln_store::Digest, LayerError> {
        let r = apply_layer(&mut &tar[..], &self.root, mode, limits);
        assert_eq!(
            common::canary_state(&self.canary),
            self.before,
            "canary changed (result: {r:?})"
        );
        r
    }
}

fn both_modes() -> [WhiteoutMode; 2] {
    [WhiteoutMode::Overlay, WhiteoutMode::Apply]
}

#[test]
fn dotdot_escapes_are_rejected() {
    for name in [
        "../escape",
        "a/../../escape",
        "./../canary/file",
        "a/b/../../../canary/file",
    ] {
        let f = Fixture::new();
        let t = Evil::default().file(name, b"pwned").end();
        let e = f.apply(&t, WhiteoutMode::Apply).unwrap_err();
        assert!(matches!(e, LayerError::UnsafePath { .. }), "{name}: {e}");
    }
}

#[test]
fn absolute_names_land_inside_the_root() {
    let f = Fixture::new();
    let abs = format!("{}/file", f.canary_abs());
    let t = Evil::default().file(&abs, b"pwned").end();
    f.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(
        fs::read(f.root.join(abs.trim_start_matches('/'))).unwrap(),
        b"pwned"
    );
}

#[test]
fn symlink_then_file_stays_inside() {
    for mode in both_modes() {
        // Absolute symlink to the canary, then a file through it.
        let f = Fixture::new();
        let t = Evil::default()
            .symlink("link", &f.canary_abs())
            .file("link/file", b"pwned")
            .end();
        let r = f.apply(&t, mode);
        // Inside the root the target does not exist: a dangling symlink.
        assert!(matches!(r, Err(LayerError::UnsafePath { .. })), "{r:?}");

        // Relative symlink climbing out: clamped at the root.
        let f = Fixture::new();
        let t = Evil::default()
            .symlink("up", "../../../../../../..")
            .file("up/pwned", b"x")
            .end();
        f.apply(&t, mode).unwrap();
        assert_eq!(fs::read(f.root.join("pwned")).unwrap(), b"x");

        // The target exists inside the root: written there, not on the host.
        let f = Fixture::new();
        let inside = f.canary_abs();
        let t = Evil::default()
            .dir(&format!("{}/", inside.trim_start_matches('/')))
            .symlink("link", &inside)
            .file("link/file", b"pwned")
            .end();
        f.apply(&t, mode).unwrap();
        assert_eq!(
            fs::read(f.root.join(inside.trim_start_matches('/')).join("file")).unwrap(),
            b"pwned"
        );
    }
}

#[test]
fn two_hop_symlink_chains_stay_inside() {
    let f = Fixture::new();
    let t = Evil::default()
        .symlink("a", "b")
        .symlink("b", &f.canary_abs())
        .file("a/file", b"pwned")
        .end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
    let f = Fixture::new();
    let t = Evil::default()
        .symlink("a", "b/c")
        .symlink("b", "../../..")
        .dir("c/")
        .file("a/file", b"ok")
        .end();
    f.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read(f.root.join("c/file")).unwrap(), b"ok");
}

#[test]
fn file_over_symlink_replaces_the_symlink() {
    let f = Fixture::new();
    let t = Evil::default()
        .symlink("s", &format!("{}/file", f.canary_abs()))
        .file("s", b"pwned")
        .end();
    f.apply(&t, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(f.root.join("s")).unwrap().is_file());
    // Directory replaced by a symlink, then written through.
    let f = Fixture::new();
    let t = Evil::default()
        .dir("d/")
        .symlink("d", &f.canary_abs())
        .file("d/file", b"pwned")
        .end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
}

#[test]
fn hard_links_cannot_reach_outside() {
    for target in [
        "../canary/file".to_string(),
        "../../canary/file".to_string(),
    ] {
        let f = Fixture::new();
        let t = Evil::default().hardlink("hl", &target).end();
        assert!(
            matches!(
                f.apply(&t, WhiteoutMode::Apply),
                Err(LayerError::InvalidLink { .. })
            ),
            "{target}"
        );
    }
    // Absolute target: resolved in the root, where it does not exist.
    let f = Fixture::new();
    let t = Evil::default()
        .hardlink("hl", &format!("{}/file", f.canary_abs()))
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::InvalidLink { .. })
    ));
    // Through a symlinked parent.
    let f = Fixture::new();
    let t = Evil::default()
        .symlink("s", &f.canary_abs())
        .hardlink("hl", "s/file")
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::InvalidLink { .. })
    ));
    // To a symlink that points outside: links the symlink, then a write to
    // the link replaces it rather than writing through.
    let f = Fixture::new();
    let t = Evil::default()
        .symlink("s", &format!("{}/file", f.canary_abs()))
        .hardlink("hl", "s")
        .file("hl", b"pwned")
        .end();
    f.apply(&t, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(f.root.join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    // To itself, to a directory.
    let f = Fixture::new();
    let t = Evil::default().file("x", b"1").hardlink("x", "x").end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
    let f = Fixture::new();
    let t = Evil::default().dir("d/").hardlink("hd", "d").end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
}

#[test]
fn whiteouts_under_symlinked_parents_stay_inside() {
    // Apply mode deletes; the parent resolves inside the root, where there
    // is nothing to delete.
    for target in [None, Some("../canary")] {
        for wh in [".wh.file", ".wh.sub", ".wh..wh..opq"] {
            let f = Fixture::new();
            let t = target.map(str::to_string).unwrap_or_else(|| f.canary_abs());
            let tar = Evil::default()
                .symlink("s", &t)
                .file(&format!("s/{wh}"), b"")
                .end();
            f.apply(&tar, WhiteoutMode::Apply).unwrap();
            assert!(fs::symlink_metadata(f.root.join("s"))
                .unwrap()
                .file_type()
                .is_symlink());
        }
    }
    // Overlay mode must create the whiteout in the parent: the symlinked
    // parent dangles inside the root, so the layer is refused.
    require_root!();
    for wh in [".wh.file", ".wh..wh..opq"] {
        let f = Fixture::new();
        let tar = Evil::default()
            .symlink("s", &f.canary_abs())
            .file(&format!("s/{wh}"), b"")
            .end();
        let e = f.apply(&tar, WhiteoutMode::Overlay).unwrap_err();
        assert!(matches!(e, LayerError::UnsafePath { .. }), "{wh}: {e}");
    }
}

#[test]
fn odd_whiteout_names() {
    for name in [".wh.", ".wh..", ".wh...", "d/.wh.."] {
        let f = Fixture::new();
        let t = Evil::default().file(name, b"").end();
        for mode in both_modes() {
            let e = f.apply(&t, mode).unwrap_err();
            assert!(matches!(e, LayerError::InvalidWhiteout(_)), "{name}: {e}");
        }
    }
    // AUFS metadata is ignored, as docker does.
    let f = Fixture::new();
    let t = Evil::default()
        .file(".wh..wh.plnk", b"")
        .file(".wh..wh.aufs", b"")
        .end();
    f.apply(&t, WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read_dir(&f.root).unwrap().count(), 0);
}

#[test]
fn bad_device_numbers() {
    require_root!();
    for (maj, min) in [(4096, 0), (1, 0x100000), (0, 0)] {
        let f = Fixture::new();
        let t = Evil::default().device("dev", maj, min).end();
        let e = f.apply(&t, WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(e, LayerError::InvalidDevice { .. }),
            "{maj}:{min}: {e}"
        );
    }
    // Base-256 encoded (GNU) device number far out of range.
    let f = Fixture::new();
    let mut t = Evil::default().device("dev", 1, 3).end();
    t[329] = 0x80;
    t[330..337].copy_from_slice(&[0xff; 7]);
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&t[..512]);
    h.set_cksum();
    t[..512].copy_from_slice(h.as_bytes());
    assert!(f.apply(&t, WhiteoutMode::Overlay).is_err());
}

#[test]
fn nul_bytes_and_overlong_paths() {
    let f = Fixture::new();
    let t = Evil::default()
        .pax(&[("path", b"a\0/../../canary/file")])
        .file("placeholder", b"x")
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::UnsafePath { .. })
    ));
    let f = Fixture::new();
    let t = Evil::default()
        .pax(&[("linkpath", b"tar\0get")])
        .symlink("s", "x")
        .end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
    let f = Fixture::new();
    let long = "a/".repeat(2100) + "f";
    let t = Evil::default()
        .pax(&[("path", long.as_bytes())])
        .file("placeholder", b"x")
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::UnsafePath { .. })
    ));
    let f = Fixture::new();
    let t = Evil::default()
        .pax(&[("path", "n".repeat(300).as_bytes())])
        .file("placeholder", b"x")
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::UnsafePath { .. })
    ));
}

#[test]
fn ten_thousand_deep_nesting() {
    // As single entries: beyond PATH_MAX, refused.
    let f = Fixture::new();
    let deep = "d/".repeat(10_000);
    let t = Evil::default()
        .pax(&[("path", deep.as_bytes())])
        .dir("placeholder/")
        .end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
    // As a chain of symlinks each one level deeper: each stays in the root.
    let f = Fixture::new();
    let mut e = Evil::default();
    for i in 0..10_000 {
        e = e.symlink(&format!("l{i}"), &format!("l{}", i + 1));
    }
    let t = e
        .symlink("l10000", &f.canary_abs())
        .file("l0/x", b"pwned")
        .end();
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
}

#[test]
fn decompression_bomb_stops_at_the_limit() {
    let f = Fixture::new();
    let zeros = vec![0u8; 1 << 20];
    let mut e = Evil::default();
    e.header(b"bomb", b'0', 64 << 20, b"", (0, 0));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&e.out).unwrap();
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let limits = Limits {
        max_uncompressed_bytes: 8 << 20,
        ..Limits::default()
    };
    let e = f
        .apply_limits(&bomb, WhiteoutMode::Apply, &limits)
        .unwrap_err();
    assert!(matches!(e, LayerError::LimitExceeded { .. }), "{e}");
    // Huge extension headers are bounded too.
    let f = Fixture::new();
    let t = Evil::default()
        .pax(&[("comment", &vec![b'c'; 2 << 20])])
        .file("x", b"")
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::LimitExceeded { .. })
    ));
    // Entry count.
    let f = Fixture::new();
    let mut e = Evil::default();
    for i in 0..20 {
        e = e.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    assert!(matches!(
        f.apply_limits(&e.end(), WhiteoutMode::Apply, &limits),
        Err(LayerError::LimitExceeded { .. })
    ));
}

#[test]
fn malformed_streams() {
    // Bad checksum.
    let f = Fixture::new();
    let t = Evil::default()
        .file("x", b"data")
        .raw(|o| o[148] = b'9')
        .end();
    assert!(matches!(
        f.apply(&t, WhiteoutMode::Apply),
        Err(LayerError::Malformed(_))
    ));
    // Truncated data.
    let f = Fixture::new();
    let mut t = Evil::default().file("x", &[7u8; 2000]).out;
    t.truncate(1000);
    assert!(f.apply(&t, WhiteoutMode::Apply).is_err());
    // Truncated gzip.
    let f = Fixture::new();
    let t = Evil::default().file("x", &[7u8; 2000]).end();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).unwrap();
    let mut g = gz.finish().unwrap();
    g.truncate(g.len() / 2);
    assert!(f.apply(&g, WhiteoutMode::Apply).is_err());
    // Unsupported entry types (GNU sparse).
    let f = Fixture::new();
    let mut e = Evil::default();
    e.header(b"sparse", b'S', 0, b"", (0, 0));
    assert!(matches!(
        f.apply(&e.end(), WhiteoutMode::Apply),
        Err(LayerError::Unsupported { .. })
    ));
}

#[test]
fn overlay_xattrs_in_a_layer_are_never_applied() {
    require_root!();
    let f = Fixture::new();
    let t = Evil::default()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/canary"),
            ("SCHILY.xattr.user.ok", b"1"),
        ])
        .dir("d/")
        .end();
    f.apply(&t, WhiteoutMode::Overlay).unwrap();
    let x = common::xattrs(&f.root.join("d"));
    assert!(!x.contains_key("trusted.overlay.redirect"));
    assert_eq!(x.get("user.ok").map(|v| v.as_slice()), Some(&b"1"[..]));
}

#[test]
fn multi_member_gzip_and_trailing_data_count_in_the_diff_id() {
    let f = Fixture::new();
    let t = Evil::default().file("a", b"1").file("b", b"2").end();
    let (p1, p2) = t.split_at(512);
    let mut out = Vec::new();
    for part in [p1, p2] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(part).unwrap();
        out.extend(gz.finish().unwrap());
    }
    let d = f.apply(&out, WhiteoutMode::Apply).unwrap();
    assert_eq!(d, kiln_store::sha256_digest(&t));
    assert_eq!(fs::read(f.root.join("b")).unwrap(), b"2");
}
