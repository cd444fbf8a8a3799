//! A layer checked without being written: the same tar framing, limits and
//! per-entry rules as the applier ([`super::apply`]), with the tree the
//! layer would make kept as a map of paths instead of files. `kiln load`
//! runs every layer through it so that an archive whose layers the applier
//! would refuse is refused at load, not at the first run or FROM.
//!
//! It judges one layer on its own, as the applier does when it unpacks a
//! layer into its own snapshot directory (overlay mode): a hard link must
//! name a file this layer made, and a path cannot pass through a file this
//! layer made.

use std::collections::HashMap;
use std::io::{self, Read};

use super::apply::{applied_xattrs, check_device, check_symlink, clean_path, ids, whiteout_name};
use super::entries::{drive, map_stream, Hdr, Sink};
use super::{LayerError, Limits};
use crate::digest::Digest;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Reads a whole layer (plain, gzip or zstd) and returns its diffID, or the
/// error [`super::apply_layer`] would have given for it.
pub fn validate_layer(r: &mut dyn Read, limits: &Limits) -> Result<Digest, LayerError> {
    drive(r, limits, &mut Validator::default())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    Symlink,
    /// A file, device, fifo or overlay whiteout: nothing can be below it.
    Leaf,
}

#[derive(Default)]
struct Validator {
    made: HashMap<Vec<u8>, Made>,
}

impl Sink for Validator {
    fn entry(&mut self, h: &Hdr, data: &mut dyn Read) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        let comps = clean_path(&h.path)?;
        ids(&h.path, h.uid, h.gid)?;
        applied_xattrs(&h.path, &h.xattrs)?;
        let Some((base, parent)) = comps.split_last() else {
            if h.kind == b'5' {
                return Ok(());
            }
            return Err(LayerError::UnsafePath {
                path: shown(),
                reason: "non-directory entry for the root",
            });
        };
        self.parents_are_dirs(parent, &h.path)?;
        if base.starts_with(WHITEOUT_PREFIX) {
            if base.as_slice() != OPAQUE && !base.starts_with(b".wh..wh.") {
                let name = whiteout_name(base, &h.path)?;
                let mut p = parent.to_vec();
                p.push(name.to_vec());
                self.made.insert(p.join(&b'/'), Made::Leaf);
            }
            return Ok(());
        }
        let made = match h.kind {
            b'0' | 0 | b'7' => {
                let n = io::copy(data, &mut io::sink()).map_err(map_stream)?;
                if n != h.size {
                    return Err(LayerError::Malformed(format!(
                        "truncated data for {:?}",
                        shown()
                    )));
                }
                Made::Leaf
            }
            b'5' => Made::Dir,
            b'2' => {
                check_symlink(h)?;
                Made::Symlink
            }
            b'1' => {
                self.check_hardlink(h, &comps)?;
                Made::Leaf
            }
            b'3' | b'4' | b'6' => {
                check_device(h)?;
                Made::Leaf
            }
            other => {
                return Err(LayerError::Unsupported {
                    path: shown(),
                    kind: other as char,
                })
            }
        };
        let key = comps.join(&b'/');
        if made != Made::Dir {
            // What was below a replaced directory is gone.
            let mut prefix = key.clone();
            prefix.push(b'/');
            self.made.retain(|k, _| !k.starts_with(&prefix));
        }
        self.made.insert(key, made);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), LayerError> {
        Ok(())
    }
}

impl Validator {
    /// No parent may be a file this layer made (the applier's "a parent is
    /// not a directory"). A symlink this layer made is followed by the
    /// applier inside the root; where it leads is not judged here.
    fn parents_are_dirs(&self, parent: &[Vec<u8>], path: &[u8]) -> Result<(), LayerError> {
        for i in 1..=parent.len() {
            match self.made.get(&parent[..i].join(&b'/')) {
                Some(Made::Leaf) => {
                    return Err(LayerError::UnsafePath {
                        path: String::from_utf8_lossy(path).into_owned(),
                        reason: "a parent is not a directory",
                    })
                }
                Some(Made::Symlink) => return Ok(()),
                _ => {}
            }
        }
        Ok(())
    }

    fn check_hardlink(&self, h: &Hdr, comps: &[Vec<u8>]) -> Result<(), LayerError> {
        let bad = |reason: &str| LayerError::InvalidLink {
            path: String::from_utf8_lossy(&h.path).into_owned(),
            target: String::from_utf8_lossy(&h.link).into_owned(),
            reason: reason.to_string(),
        };
        let tcomps = clean_path(&h.link).map_err(|_| bad("target outside the root"))?;
        if tcomps.is_empty() {
            return Err(bad("target is the root"));
        }
        if tcomps == comps {
            return Err(bad("links to itself"));
        }
        match self.made.get(&tcomps.join(&b'/')) {
            Some(Made::Dir) => Err(bad("target is a directory")),
            Some(_) => Ok(()),
            // Reached through a symlink of this layer: the applier
            // resolves it; not judged here.
            None if (1..tcomps.len())
                .any(|i| self.made.get(&tcomps[..i].join(&b'/')) == Some(&Made::Symlink)) =>
            {
                Ok(())
            }
            None => Err(bad("target not found")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::apply_layer;
    use crate::layer::WhiteoutMode;

    fn member(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::new(kind));
        // Names are set raw: these are hostile archives.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn tar_of(members: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, k, l, b) in members {
            member(&mut out, n, *k, l, b);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// The validator and the applier agree on every case.
    fn both(t: &[u8]) -> (Result<Digest, String>, Result<Digest, String>) {
        let v = validate_layer(&mut &t[..], &Limits::default()).map_err(|e| e.to_string());
        let d = tempfile::tempdir().unwrap();
        let a = apply_layer(
            &mut &t[..],
            d.path(),
            WhiteoutMode::Apply,
            &Limits::default(),
        )
        .map_err(|e| e.to_string());
        (v, a)
    }

    #[test]
    fn accepts_and_refuses_what_the_applier_does() {
        let good = tar_of(&[
            ("d/", b'5', "", b""),
            ("d/f", b'0', "", b"hi"),
            ("d/hard", b'1', "d/f", b""),
            ("d/sym", b'2', "/etc/passwd", b""),
            ("d/.wh.gone", b'0', "", b""),
            ("d/.wh..wh..opq", b'0', "", b""),
        ]);
        let (v, a) = both(&good);
        assert_eq!(v.unwrap(), a.unwrap());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (tar_of(&[("../x", b'0', "", b"x")]), "outside the root"),
            (
                tar_of(&[("h", b'1', "../../etc/shadow", b"")]),
                "target outside the root",
            ),
            (tar_of(&[("h", b'1', "nothere", b"")]), "target not found"),
            (
                tar_of(&[("d/", b'5', "", b""), ("h", b'1', "d", b"")]),
                "target is a directory",
            ),
            (tar_of(&[("h", b'1', "h", b"")]), "links to itself"),
            (
                tar_of(&[("f", b'0', "", b""), ("f/x", b'0', "", b"")]),
                "not a directory",
            ),
            (tar_of(&[("c", b'3', "", b"")]), "invalid device number"),
            (tar_of(&[("d/.wh.", b'0', "", b"")]), "invalid whiteout"),
            (tar_of(&[("s", b'2', "", b"")]), "invalid symlink target"),
            (
                tar_of(&[("x", b'Z', "", b"")]),
                "unsupported tar entry type",
            ),
        ];
        for (t, want) in cases {
            let (v, a) = both(&t);
            let v = v.unwrap_err();
            let a = a.unwrap_err();
            assert!(v.contains(want), "validator: {v} (wanted {want})");
            assert!(a.contains(want), "applier: {a} (wanted {want})");
        }
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        let body = vec![0u8; 64 << 10];
        let t = tar_of(&[("big", b'0', "", &body)]);
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&t).unwrap();
            e.finish().unwrap()
        };
        let limits = Limits {
            max_uncompressed_bytes: 16 << 10,
            ..Limits::default()
        };
        let e = validate_layer(&mut &gz[..], &limits).unwrap_err();
        assert!(matches!(e, LayerError::LimitExceeded { .. }), "{e}");
        let many: Vec<(String, u8, &str, &[u8])> = (0..20)
            .map(|i| (format!("f{i}"), b'0', "", &b""[..]))
            .collect();
        let many: Vec<(&str, u8, &str, &[u8])> = many
            .iter()
            .map(|(n, k, l, b)| (n.as_str(), *k, *l, *b))
            .collect();
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let e = validate_layer(&mut &tar_of(&many)[..], &limits).unwrap_err();
        assert!(e.to_string().contains("10 tar entries"), "{e}");
    }
}
