//! Reading chosen files out of an image's layers without unpacking them:
//! what an SBOM generator needs (`/var/lib/dpkg/status`, `*.dist-info/METADATA`)
//! and nothing runs from the image. Each layer goes through the same tar
//! framing and limits as the applier; whiteouts and opaque directories of a
//! layer hide what the layers below it gave, as overlayfs would.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::apply::{clean_path, whiteout_name};
use super::entries::{drive, map_stream, Hdr, Sink};
use super::{LayerError, Limits};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The regular files an image's layers leave at the paths a caller chose,
/// keyed by their path relative to the root (`var/lib/dpkg/status`).
#[derive(Debug, Default)]
pub struct FileView {
    files: BTreeMap<String, Vec<u8>>,
    skipped: Vec<String>,
    max_file_bytes: u64,
}

impl FileView {
    /// An empty view; files over `max_file_bytes` are skipped (and named in
    /// [`FileView::skipped`]) rather than held in memory.
    pub fn new(max_file_bytes: u64) -> FileView {
        FileView {
            files: BTreeMap::new(),
            skipped: Vec::new(),
            max_file_bytes,
        }
    }

    /// Applies one layer (plain, gzip or zstd) on top of the view: `want`
    /// picks the paths to keep. Layers must be given bottom first.
    pub fn apply(
        &mut self,
        r: &mut dyn Read,
        limits: &Limits,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<(), LayerError> {
        let l = self.scan(r, limits, want)?;
        self.merge(l);
        Ok(())
    }

    /// What one layer sets, hides and skips at the chosen paths, to be
    /// merged (and kept: a layer's scan never changes).
    pub(crate) fn scan(
        &self,
        r: &mut dyn Read,
        limits: &Limits,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<LayerScan, LayerError> {
        let mut sink = Scan {
            want,
            max: self.max_file_bytes,
            layer: LayerScan::default(),
        };
        drive(r, limits, &mut sink)?;
        Ok(sink.layer)
    }

    /// Puts one layer's scan on top of the view.
    pub(crate) fn merge(&mut self, l: LayerScan) {
        // A layer's whiteouts and opaque markers hide the layers below it,
        // never its own entries: remove first, then add.
        for dir in &l.opaque {
            let prefix = format!("{dir}/");
            self.files
                .retain(|p, _| !(dir.is_empty() || p.starts_with(&prefix)));
        }
        for gone in &l.removed {
            let prefix = format!("{gone}/");
            self.files
                .retain(|p, _| p != gone && !p.starts_with(&prefix));
        }
        self.skipped.extend(l.skipped);
        for (p, data) in l.files {
            match data {
                Some(d) => {
                    self.files.insert(p, d);
                }
                None => {
                    self.files.remove(&p);
                }
            }
        }
    }

    /// The files found, by path.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// Chosen files left out because they were over the size limit.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

/// One layer's part of a [`FileView`]; kept by the store per layer and
/// selector (`Store::layer_files`).
#[derive(Default, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LayerScan {
    /// Chosen paths this layer sets: `Some(content)` for a regular file,
    /// `None` for anything else (a directory, a link) that replaces it.
    #[serde(with = "contents")]
    files: Vec<(String, Option<Vec<u8>>)>,
    /// Paths hidden by a `.wh.NAME` whiteout.
    removed: Vec<String>,
    /// Directories whose lower content an opaque marker hides.
    opaque: Vec<String>,
    /// Chosen regular files over the size limit.
    skipped: Vec<String>,
}

/// File contents as base64 in the kept JSON (they are mostly text, but
/// need not be).
mod contents {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Files = Vec<(String, Option<Vec<u8>>)>;

    pub fn serialize<S: Serializer>(f: &Files, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(&String, Option<String>)> = f
            .iter()
            .map(|(p, c)| (p, c.as_ref().map(|c| STANDARD.encode(c))))
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Files, D::Error> {
        let v: Vec<(String, Option<String>)> = Vec::deserialize(d)?;
        v.into_iter()
            .map(|(p, c)| {
                let c = c
                    .map(|c| STANDARD.decode(c))
                    .transpose()
                    .map_err(serde::de::Error::custom)?;
                Ok((p, c))
            })
            .collect()
    }
}

struct Scan<'a> {
    want: &'a dyn Fn(&str) -> bool,
    max: u64,
    layer: LayerScan,
}

impl Sink for Scan<'_> {
    fn entry(&mut self, h: &Hdr, data: &mut dyn Read) -> Result<(), LayerError> {
        let comps = clean_path(&h.path)?;
        let Some((base, parent)) = comps.split_last() else {
            return Ok(());
        };
        let join = |c: &[Vec<u8>]| String::from_utf8_lossy(&c.join(&b'/')).into_owned();
        if base.starts_with(WHITEOUT_PREFIX) {
            if base.as_slice() == OPAQUE {
                self.layer.opaque.push(join(parent));
            } else if !base.starts_with(b".wh..wh.") {
                let mut p = parent.to_vec();
                p.push(whiteout_name(base, &h.path)?.to_vec());
                self.layer.removed.push(join(&p));
            }
            return Ok(());
        }
        let path = join(&comps);
        if !(self.want)(&path) {
            return Ok(());
        }
        let regular = matches!(h.kind, b'0' | 0 | b'7');
        let content = if regular && h.size <= self.max {
            let mut buf = Vec::with_capacity(h.size as usize);
            data.read_to_end(&mut buf).map_err(map_stream)?;
            Some(buf)
        } else {
            io::copy(data, &mut io::sink()).map_err(map_stream)?;
            if regular {
                self.layer.skipped.push(path.clone());
            }
            None
        };
        self.layer.files.push((path, content));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), LayerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain tar of (path, kind, content) entries.
    fn tar(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, kind, data) in entries {
            let mut h = [0u8; 512];
            h[..path.len()].copy_from_slice(path.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = *kind;
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn status_or_meta(p: &str) -> bool {
        p == "var/lib/dpkg/status" || p.ends_with(".dist-info/METADATA")
    }

    fn view(layers: &[Vec<u8>]) -> FileView {
        let mut v = FileView::new(1 << 20);
        for l in layers {
            v.apply(&mut l.as_slice(), &Limits::default(), &status_or_meta)
                .unwrap();
        }
        v
    }

    #[test]
    fn upper_layers_replace_and_whiteouts_hide_lower_files() {
        let base = tar(&[
            ("var/lib/dpkg/status", b'0', b"old"),
            ("usr/lib/py/a-1.dist-info/METADATA", b'0', b"a"),
            ("usr/lib/py/b-1.dist-info/METADATA", b'0', b"b"),
            ("etc/other", b'0', b"not chosen"),
        ]);
        let upper = tar(&[
            ("var/lib/dpkg/status", b'0', b"new"),
            ("usr/lib/py/.wh.a-1.dist-info", b'0', b""),
        ]);
        let v = view(&[base, upper]);
        let got: Vec<_> = v
            .files()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("usr/lib/py/b-1.dist-info/METADATA", &b"b"[..]),
                ("var/lib/dpkg/status", &b"new"[..]),
            ]
        );
    }

    #[test]
    fn an_opaque_directory_hides_lower_content_but_keeps_its_own() {
        let base = tar(&[
            ("usr/lib/py/a-1.dist-info/METADATA", b'0', b"a"),
            ("usr/lib/py/b-1.dist-info/METADATA", b'0', b"b"),
        ]);
        let upper = tar(&[
            ("usr/lib/py/.wh..wh..opq", b'0', b""),
            ("usr/lib/py/c-1.dist-info/METADATA", b'0', b"c"),
        ]);
        let v = view(&[base, upper]);
        let keys: Vec<_> = v.files().keys().cloned().collect();
        assert_eq!(keys, vec!["usr/lib/py/c-1.dist-info/METADATA"]);
    }

    #[test]
    fn a_non_file_at_a_chosen_path_removes_it_and_big_files_are_not_held() {
        let base = tar(&[("var/lib/dpkg/status", b'0', b"x")]);
        let upper = tar(&[("var/lib/dpkg/status", b'5', b"")]);
        assert!(view(&[base.clone(), upper]).files().is_empty());
        let mut v = FileView::new(0);
        v.apply(&mut base.as_slice(), &Limits::default(), &status_or_meta)
            .unwrap();
        assert!(v.files().is_empty());
        assert_eq!(v.skipped(), ["var/lib/dpkg/status"]);
    }

    #[test]
    fn a_hostile_path_is_refused_as_the_applier_refuses_it() {
        let bad = tar(&[("../var/lib/dpkg/status", b'0', b"x")]);
        let mut v = FileView::new(1 << 20);
        let e = v
            .apply(&mut bad.as_slice(), &Limits::default(), &status_or_meta)
            .unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
    }
}
