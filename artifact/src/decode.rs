//! The decoding half of every unpack: a thread that reads the raw stream
//! (bounded, hashed), decodes one zstd frame (bounded) and hands the decoded
//! bytes to the tar reader on the caller's thread through a short channel, so
//! decoding and writing run on two cores, like `zstd -d | tar -x`.

use std::io::{self, Read};
use std::sync::mpsc;

use crate::digest::{Digest, HashingReader};
use crate::unpack::UnpackError;

/// Decoded bytes handed from the decoder thread to the tar reader at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks the decoder may run ahead of the writer (bounds memory: 2 MiB).
const AHEAD: usize = 8;

/// Runs `consume` on the decoded stream of `raw` (at most `raw_max` raw
/// bytes are expected; one more is read to notice a longer stream; at most
/// `bound` decoded bytes are passed on). After `consume` succeeds, the rest of
/// the stream is read to its end; returns `consume`'s result with the raw
/// stream's digest and length.
pub(crate) fn with_decoded<T>(
    raw: impl Read + Send,
    raw_max: u64,
    bound: u64,
    window_log_max: u32,
    consume: impl FnOnce(&mut ChannelReader) -> Result<T, UnpackError>,
) -> Result<(T, Digest, u64), UnpackError> {
    let (tx, rx) = mpsc::sync_channel(AHEAD);
    // Read chunks go back to the decoder to be filled again: fresh 256 KiB
    // buffers are mmapped and zeroed by the kernel each time (a fifth of an
    // unpack's CPU when every chunk was new).
    let (spent, reuse) = mpsc::sync_channel(AHEAD + 2);
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || decode(raw, raw_max, bound, window_log_max, tx, reuse));
        let mut decoded = ChannelReader {
            rx,
            spent,
            buf: Vec::new(),
            pos: 0,
        };
        let consumed = consume(&mut decoded);
        if consumed.is_ok() {
            // What the tar reader left (end-of-archive padding) is drained so
            // the decoder reads and hashes the stream to its end. On an error
            // the channel is dropped instead, which stops the decoder.
            decoded.drain();
        }
        drop(decoded);
        let raw_check = decoder.join().unwrap_or_else(|_| {
            Err(UnpackError::Read(io::Error::other(
                "decoder thread panicked",
            )))
        });
        let value = consumed?;
        let (digest, size) = raw_check?;
        Ok((value, digest, size))
    })
}

/// The decoder thread: reads the raw stream (at most one byte past
/// `raw_max`), hashes it, decodes one frame (at most `bound` bytes) and sends
/// the decoded chunks on; then reads the raw stream to its end.
fn decode(
    raw: impl Read,
    raw_max: u64,
    bound: u64,
    window_log_max: u32,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    reuse: mpsc::Receiver<Vec<u8>>,
) -> Result<(Digest, u64), UnpackError> {
    // Buffers no bigger than the stream: a small release (a config change)
    // does not allocate and zero zstd's 128 KiB input buffer and a 256 KiB
    // chunk for a few hundred bytes.
    let at_most = |limit: usize, len: u64| {
        usize::try_from(len.saturating_add(1)).map_or(limit, |len| len.min(limit))
    };
    let raw = std::io::BufReader::with_capacity(
        at_most(zstd::zstd_safe::DCtx::in_size(), raw_max),
        HashingReader::new(raw.take(raw_max.saturating_add(1))),
    );
    // One frame, as the packers write: what follows it is hashed, not decoded.
    let mut decoder = zstd::stream::read::Decoder::with_buffer(raw)
        .map_err(UnpackError::Read)?
        .single_frame();
    decoder
        .window_log_max(window_log_max)
        .map_err(UnpackError::Read)?;
    let mut decoded = decoder.take(bound);
    let chunk_len = at_most(CHUNK, bound);
    loop {
        let mut chunk = reuse.try_recv().unwrap_or_default();
        chunk.resize(chunk_len, 0);
        let n = match read_full(&mut decoded, &mut chunk) {
            Ok(n) => n,
            Err(e) => {
                let msg = e.to_string();
                let _ = tx.send(Err(e));
                return Err(UnpackError::Read(io::Error::other(msg)));
            }
        };
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        if tx.send(Ok(chunk)).is_err() {
            // The writer stopped (an entry was refused): its error is the one
            // reported; stop reading.
            return Err(UnpackError::Read(io::Error::other("unpack stopped")));
        }
    }
    drop(tx);
    let mut raw = decoded.into_inner().finish();
    io::copy(&mut raw, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok(raw.into_inner().finish())
}

/// Reads until `buf` is full or the reader ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The tar reader's side of the decoder thread.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Where read chunks go back to the decoder.
    spent: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let read = std::mem::replace(&mut self.buf, chunk?);
                    let _ = self.spent.try_send(read);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ChannelReader {
    /// Receives (and drops) what the decoder still sends, bounded by what it
    /// may decode, until it is done.
    fn drain(&mut self) {
        while self.rx.recv().is_ok() {}
    }
}
