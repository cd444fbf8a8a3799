//! The tar stream side of the applier: decompression (gzip incl.
//! multi-member, zstd, plain), the bounds on expanded bytes, entries and
//! extension headers, the diffID hash, and the ustar/PAX/GNU framing folded
//! into one [`Hdr`] per entry. What an entry *does* is up to a [`Sink`]: the
//! filesystem applier (`apply.rs`) or the validator that only checks
//! (`validate.rs`), so both refuse exactly the same streams.

use std::io::{self, BufRead, BufReader, Read};

use super::tarfmt::{checksum_ok, padding, parse_pax, BLOCK};
use super::{Compression, LayerError, Limits};
use crate::digest::{Digest, HashingReader};

/// What happens to each entry of a layer.
pub(super) trait Sink {
    /// One entry; `data` yields at most the entry's content bytes.
    fn entry(&mut self, h: &Hdr, data: &mut dyn Read) -> Result<(), LayerError>;
    /// After the end-of-archive marker (or a clean EOF).
    fn finish(&mut self) -> Result<(), LayerError>;
}

/// Decodes `r`, feeds its entries to `sink` within `limits`, and returns
/// the diffID (sha256 of the uncompressed tar, including anything after the
/// end-of-archive marker).
pub(super) fn drive(
    r: &mut dyn Read,
    limits: &Limits,
    sink: &mut dyn Sink,
) -> Result<Digest, LayerError> {
    let mut br = BufReader::with_capacity(128 * 1024, r);
    let magic = br.fill_buf()?.to_vec();
    let decoded: Box<dyn Read + '_> = match Compression::detect(&magic) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
        Compression::None => Box::new(br),
    };
    let limited = LimitReader {
        inner: decoded,
        left: limits.max_uncompressed_bytes,
        limit: limits.max_uncompressed_bytes,
    };
    let mut hr = HashingReader::new(limited);
    read_entries(&mut hr, limits, sink)?;
    // Hash whatever follows the end-of-archive marker: the diffID covers the
    // whole uncompressed stream.
    io::copy(&mut hr, &mut io::sink()).map_err(map_stream)?;
    Ok(hr.hasher.finish())
}

struct LimitReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Only an error if there is in fact more data.
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one)? {
                0 => Ok(0),
                _ => Err(io::Error::other(LimitHit(self.limit))),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Debug)]
struct LimitHit(u64);
impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uncompressed size limit of {} bytes exceeded", self.0)
    }
}
impl std::error::Error for LimitHit {}

pub(super) fn map_stream(e: io::Error) -> LayerError {
    if let Some(LimitHit(limit)) = e.get_ref().and_then(|i| i.downcast_ref::<LimitHit>()) {
        return LayerError::LimitExceeded {
            what: "uncompressed bytes",
            limit: *limit,
        };
    }
    LayerError::Stream(e)
}

/// One tar entry after PAX / GNU extensions were folded in.
pub(super) struct Hdr {
    pub(super) path: Vec<u8>,
    pub(super) link: Vec<u8>,
    pub(super) kind: u8,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: i64,
    pub(super) size: u64,
    pub(super) dev: (u64, u64),
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn read_block(r: &mut dyn Read, block: &mut [u8; BLOCK]) -> Result<bool, LayerError> {
    let mut got = 0;
    while got < BLOCK {
        match r.read(&mut block[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(LayerError::Malformed("truncated tar header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_stream(e)),
        }
    }
    Ok(true)
}

fn read_ext(r: &mut dyn Read, size: u64, limits: &Limits) -> Result<Vec<u8>, LayerError> {
    if size > limits.max_header_bytes {
        return Err(LayerError::LimitExceeded {
            what: "bytes in one tar extension header",
            limit: limits.max_header_bytes,
        });
    }
    let mut v = vec![0u8; size as usize];
    r.read_exact(&mut v).map_err(truncated)?;
    skip(r, padding(size))?;
    Ok(v)
}

fn truncated(e: io::Error) -> LayerError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        LayerError::Malformed("truncated tar entry".into())
    } else {
        map_stream(e)
    }
}

fn skip(r: &mut dyn Read, n: u64) -> Result<(), LayerError> {
    let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(map_stream)?;
    if copied != n {
        return Err(LayerError::Malformed("truncated tar entry".into()));
    }
    Ok(())
}

/// A numeric header field; blank (all NUL/space) fields read as 0, as Go's
/// archive/tar and GNU tar read them.
fn numeric(parsed: io::Result<u64>, raw: &[u8], what: &str) -> Result<u64, LayerError> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(LayerError::Malformed(format!("bad {what} field: {e}"))),
    }
}

fn cstr_field(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

fn parse_num(s: &[u8], what: &str) -> Result<u64, LayerError> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LayerError::Malformed(format!("bad PAX {what}")))
}

fn bad_dev(path: &[u8]) -> LayerError {
    LayerError::InvalidDevice {
        path: String::from_utf8_lossy(path).into_owned(),
        major: u64::MAX,
        minor: u64::MAX,
    }
}

pub(super) fn read_entries(
    r: &mut dyn Read,
    limits: &Limits,
    sink: &mut dyn Sink,
) -> Result<(), LayerError> {
    let mut block = [0u8; BLOCK];
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut entries = 0u64;
    loop {
        if !read_block(r, &mut block)? {
            // EOF without end marker: tolerated, like Go's archive/tar.
            break;
        }
        if block.iter().all(|&b| b == 0) {
            break;
        }
        entries += 1;
        if entries > limits.max_entries {
            return Err(LayerError::LimitExceeded {
                what: "tar entries",
                limit: limits.max_entries,
            });
        }
        if !checksum_ok(&block) {
            return Err(LayerError::Malformed("tar header checksum mismatch".into()));
        }
        let h = tar::Header::from_byte_slice(&block);
        let size = numeric(h.entry_size(), &block[124..136], "size")?;
        let kind = block[156];
        match kind {
            b'x' => {
                pax.extend(parse_pax(&read_ext(r, size, limits)?)?);
                continue;
            }
            b'g' => {
                // Global headers carry nothing we apply (comment, mtime
                // defaults); bounded read, then ignored.
                read_ext(r, size, limits)?;
                continue;
            }
            b'L' => {
                long_name = Some(cstr_field(&read_ext(r, size, limits)?).to_vec());
                continue;
            }
            b'K' => {
                long_link = Some(cstr_field(&read_ext(r, size, limits)?).to_vec());
                continue;
            }
            _ => {}
        }
        let mut hdr = Hdr {
            path: long_name
                .take()
                .unwrap_or_else(|| h.path_bytes().into_owned()),
            link: long_link.take().unwrap_or_else(|| {
                h.link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            }),
            kind,
            mode: numeric(h.mode().map(u64::from), &block[100..108], "mode")? as u32 & 0o7777,
            uid: numeric(h.uid(), &block[108..116], "uid")?,
            gid: numeric(h.gid(), &block[116..124], "gid")?,
            mtime: numeric(h.mtime(), &block[136..148], "mtime")? as i64,
            size,
            dev: (0, 0),
            xattrs: Vec::new(),
        };
        if matches!(kind, b'3' | b'4') {
            let major = h
                .device_major()
                .ok()
                .flatten()
                .ok_or_else(|| bad_dev(&hdr.path))?;
            let minor = h
                .device_minor()
                .ok()
                .flatten()
                .ok_or_else(|| bad_dev(&hdr.path))?;
            hdr.dev = (u64::from(major), u64::from(minor));
        }
        for (k, v) in pax.drain(..) {
            match k.as_str() {
                "path" => hdr.path = v,
                "linkpath" => hdr.link = v,
                "uid" => hdr.uid = parse_num(&v, "uid")?,
                "gid" => hdr.gid = parse_num(&v, "gid")?,
                "size" => hdr.size = parse_num(&v, "size")?,
                "mtime" => {
                    let secs = v.split(|&b| b == b'.').next().unwrap_or(&[]);
                    let neg = secs.first() == Some(&b'-');
                    let n = parse_num(if neg { &secs[1..] } else { secs }, "mtime")? as i64;
                    hdr.mtime = if neg { -n } else { n };
                }
                _ => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        hdr.xattrs.push((name.as_bytes().to_vec(), v));
                    }
                }
            }
        }
        // Like Go's archive/tar: link, symlink, device, directory and fifo
        // entries carry no data whatever their size field says.
        let data_size = if matches!(kind, b'1'..=b'6') {
            0
        } else {
            hdr.size
        };
        let mut data = r.take(data_size);
        sink.entry(&hdr, &mut data)?;
        // Whatever the entry did not consume, then the padding.
        let rest = data.limit();
        skip(r, rest)?;
        skip(r, padding(data_size))?;
    }
    sink.finish()
}
