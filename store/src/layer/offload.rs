//! A hashing writer that moves its sha256 to a thread of its own once the
//! stream is large: a layer's two digests (the tar's diffID and the
//! compressed blob's digest) then run beside the tar writer and the zstd
//! workers instead of one after the other on the writing thread, where
//! they were a third of a 200 MB layer's encoding (bench/README.md,
//! profile 8). The digests are the same; small layers never start a thread.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::digest::Hasher;

/// Bytes hashed inline before the hashing moves to a thread.
const INLINE_MAX: u64 = 4 << 20;
/// Bytes per chunk handed to the thread.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight: bounds the memory (2 MiB) and lets the writer run
/// ahead of the hasher that much.
const IN_FLIGHT: usize = 8;

enum State {
    Inline(Hasher),
    Thread {
        to_hasher: SyncSender<Vec<u8>>,
        /// Chunks the hasher is done with, for reuse.
        spent: Receiver<Vec<u8>>,
        hasher: JoinHandle<Hasher>,
        pending: Vec<u8>,
    },
    /// Only while switching over.
    Moving,
}

/// Writes through to `inner` and hashes (and counts) what was written.
pub(super) struct OffloadHashingWriter<W> {
    pub(super) inner: W,
    state: State,
}

impl<W: Write> OffloadHashingWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        OffloadHashingWriter {
            inner,
            state: State::Inline(Hasher::new()),
        }
    }

    fn hash(&mut self, b: &[u8]) -> io::Result<()> {
        if let State::Inline(h) = &mut self.state {
            h.update(b);
            if h.len() >= INLINE_MAX {
                self.start_thread()?;
            }
            return Ok(());
        }
        let State::Thread {
            to_hasher,
            spent,
            pending,
            ..
        } = &mut self.state
        else {
            unreachable!("the state is Moving only inside start_thread");
        };
        let mut b = b;
        while !b.is_empty() {
            let take = b.len().min(CHUNK - pending.len());
            pending.extend_from_slice(&b[..take]);
            b = &b[take..];
            if pending.len() == CHUNK {
                let mut next = spent.try_recv().unwrap_or_default();
                next.clear();
                next.reserve(CHUNK);
                let full = std::mem::replace(pending, next);
                to_hasher.send(full).map_err(|_| hasher_gone())?;
            }
        }
        Ok(())
    }

    fn start_thread(&mut self) -> io::Result<()> {
        let State::Inline(mut h) = std::mem::replace(&mut self.state, State::Moving) else {
            unreachable!("start_thread is called on an inline hasher");
        };
        let (to_hasher, chunks) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (give_back, spent) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let hasher = std::thread::Builder::new()
            .name("kiln-sha256".into())
            .spawn(move || {
                for c in chunks {
                    h.update(&c);
                    let _ = give_back.try_send(c);
                }
                h
            })?;
        self.state = State::Thread {
            to_hasher,
            spent,
            hasher,
            pending: Vec::with_capacity(CHUNK),
        };
        Ok(())
    }

    /// The writer and the hasher of everything written.
    pub(super) fn finish(self) -> io::Result<(W, Hasher)> {
        let h = match self.state {
            State::Inline(h) => h,
            State::Thread {
                to_hasher,
                hasher,
                pending,
                ..
            } => {
                if !pending.is_empty() {
                    to_hasher.send(pending).map_err(|_| hasher_gone())?;
                }
                drop(to_hasher);
                hasher.join().map_err(|_| hasher_gone())?
            }
            State::Moving => unreachable!("the state is Moving only inside start_thread"),
        };
        Ok((self.inner, h))
    }
}

fn hasher_gone() -> io::Error {
    io::Error::other("the layer's hashing thread stopped")
}

impl<W: Write> Write for OffloadHashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    #[test]
    fn the_digest_and_length_do_not_depend_on_where_it_was_hashed() {
        // Below, at and across the switch to the thread, in odd pieces.
        for len in [0usize, 1, 4 << 20, (4 << 20) + 1, (9 << 20) + 12345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut w = OffloadHashingWriter::new(Vec::new());
            for piece in data.chunks(100_003) {
                w.write_all(piece).unwrap();
            }
            let (out, h) = w.finish().unwrap();
            assert_eq!(out, data);
            assert_eq!(h.len(), len as u64);
            assert_eq!(h.finish(), sha256_digest(&data), "length {len}");
        }
    }
}
