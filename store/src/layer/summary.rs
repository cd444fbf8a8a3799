//! What a layer holds, entry by entry (path, type, mode, owner, mtime,
//! size, link target, content digest, xattrs), read through the applier's
//! tar driver and limits: for telling two layers apart by the first field
//! that differs (`kiln build --check-reproducible`).

use std::io::Read;

use super::entries::{drive, map_stream, Hdr, Sink};
use super::{LayerError, Limits};
use crate::digest::Hasher;

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySummary {
    pub path: String,
    /// The tar type flag (`0` file, `5` directory, `2` symlink, `1` hard link...).
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub link: String,
    /// sha256 of a regular file's content.
    pub content: Option<String>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl EntrySummary {
    /// The first field in which `other` differs, with both values shown.
    pub fn first_difference(&self, other: &EntrySummary) -> Option<(&'static str, String, String)> {
        macro_rules! field {
            ($name:literal, $a:expr, $b:expr) => {
                if $a != $b {
                    return Some(($name, format!("{:?}", $a), format!("{:?}", $b)));
                }
            };
        }
        field!("type", self.kind, other.kind);
        let content = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".into());
        if self.content != other.content {
            return Some(("content", content(&self.content), content(&other.content)));
        }
        field!("size", self.size, other.size);
        field!(
            "mode",
            format!("{:o}", self.mode),
            format!("{:o}", other.mode)
        );
        field!("owner", (self.uid, self.gid), (other.uid, other.gid));
        field!("link target", self.link, other.link);
        field!("mtime", self.mtime, other.mtime);
        field!("xattrs", self.xattrs, other.xattrs);
        None
    }
}

/// Every entry of a layer (plain, gzip or zstd), in archive order.
pub fn summarize_layer(r: &mut dyn Read, limits: &Limits) -> Result<Vec<EntrySummary>, LayerError> {
    let mut s = Summaries(Vec::new());
    drive(r, limits, &mut s)?;
    Ok(s.0)
}

struct Summaries(Vec<EntrySummary>);

impl Sink for Summaries {
    fn entry(&mut self, h: &Hdr, data: &mut dyn Read) -> Result<(), LayerError> {
        let regular = matches!(h.kind, b'0' | 0 | b'7');
        let content = if regular {
            let mut hasher = Hasher::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = data.read(&mut buf).map_err(map_stream)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Some(hasher.finish().to_string())
        } else {
            std::io::copy(data, &mut std::io::sink()).map_err(map_stream)?;
            None
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.0.push(EntrySummary {
            path: text(&h.path)
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string(),
            kind: if h.kind == 0 { '0' } else { h.kind as char },
            mode: h.mode,
            uid: h.uid,
            gid: h.gid,
            mtime: h.mtime,
            size: h.size,
            link: text(&h.link),
            content,
            xattrs: h.xattrs.iter().map(|(k, v)| (text(k), v.clone())).collect(),
        });
        Ok(())
    }

    fn finish(&mut self) -> Result<(), LayerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(mtime: u64, content: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        b.append_data(&mut h, "etc/x", content).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn the_first_differing_field_is_named() {
        let s = |m, c: &[u8]| summarize_layer(&mut &layer(m, c)[..], &Limits::default()).unwrap();
        let a = s(1, b"one");
        assert_eq!(a[0].path, "etc/x");
        assert_eq!(a[0].first_difference(&s(1, b"one")[0]), None);
        let (f, x, y) = a[0].first_difference(&s(2, b"one")[0]).unwrap();
        assert_eq!((f, x.as_str(), y.as_str()), ("mtime", "1", "2"));
        assert_eq!(
            a[0].first_difference(&s(1, b"two")[0]).unwrap().0,
            "content"
        );
    }
}
