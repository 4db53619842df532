//! A reader between the decoder and the tar crate that watches every 512-byte
//! header go by and refuses an extension record (PAX `x`/`g`, GNU long name `L`,
//! GNU long link `K`) larger than [`MAX_EXTENSION_BYTES`] before the tar crate
//! reads it: the tar crate buffers such records whole, so without this a small
//! blob that decodes to one huge PAX record makes the reader allocate all of it,
//! whatever the manifest says.
//!
//! The guard must agree with the tar crate on where every header starts, so it
//! refuses what would make them disagree: a PAX `size` record (it overrides the
//! header's size) and GNU sparse entries (extension blocks follow the header).
//! Slipway's packer writes neither, and the manifest never describes them.

use std::io::{self, Read};

/// The largest extension record accepted. A path or link target is at most
/// [`crate::manifest::MAX_PATH_BYTES`]; a PAX record adds a few short keys.
pub const MAX_EXTENSION_BYTES: u64 = 8 * 1024;

const BLOCK: usize = 512;

/// Passes bytes through unchanged while tracking where each header starts.
pub struct HeaderGuard<R> {
    inner: R,
    /// Bytes of the current header block seen so far (while in a header).
    header: Vec<u8>,
    /// Data bytes (padded to the block size) still to pass before the next header.
    skip: u64,
    /// The PAX record being collected (at most the bound), and its length.
    pax: Option<(Vec<u8>, usize)>,
}

impl<R: Read> HeaderGuard<R> {
    pub fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            header: Vec::with_capacity(BLOCK),
            skip: 0,
            pax: None,
        }
    }

    /// Feeds `buf` (just read) through the header tracker.
    fn observe(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(buf.len() as u64)) as usize;
                if let Some((record, len)) = &mut self.pax {
                    let want = (*len - record.len()).min(n);
                    record.extend_from_slice(&buf[..want]);
                    if record.len() == *len {
                        refuse_size_record(record)?;
                        self.pax = None;
                    }
                }
                self.skip -= n as u64;
                buf = &buf[n..];
                continue;
            }
            let n = (BLOCK - self.header.len()).min(buf.len());
            self.header.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.header.len() == BLOCK {
                let (skip, pax_len) = check_header(&self.header)?;
                self.skip = skip;
                self.pax = pax_len
                    .filter(|l| *l > 0)
                    .map(|l| (Vec::with_capacity(l), l));
                self.header.clear();
            }
        }
        Ok(())
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The padded data length that follows `block` and, for a PAX record, its
/// length; an error for an extension record over the bound or a sparse entry.
/// A block of zeros (the end marker) has no data.
fn check_header(block: &[u8]) -> io::Result<(u64, Option<usize>)> {
    if block.iter().all(|b| *b == 0) {
        return Ok((0, None));
    }
    let header = tar::Header::from_byte_slice(block);
    let size = header.entry_size()?;
    let kind = header.entry_type();
    let extension = kind.is_pax_local_extensions()
        || kind.is_pax_global_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink();
    if extension && size > MAX_EXTENSION_BYTES {
        return Err(invalid(format!(
            "tar extension header ({}) of {size} bytes is over the {MAX_EXTENSION_BYTES}-byte bound",
            kind_name(kind)
        )));
    }
    if kind.is_gnu_sparse() {
        return Err(invalid("GNU sparse tar entries are not accepted".into()));
    }
    let pax = kind.is_pax_local_extensions() || kind.is_pax_global_extensions();
    let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
    Ok((padded, pax.then_some(size as usize)))
}

/// Refuses a PAX record holding a `size` key (records are `<len> <key>=<value>\n`).
fn refuse_size_record(mut record: &[u8]) -> io::Result<()> {
    let malformed = || invalid("malformed PAX extension record".into());
    while !record.is_empty() {
        let space = record
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(malformed)?;
        let len: usize = std::str::from_utf8(&record[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > space && *l <= record.len())
            .ok_or_else(malformed)?;
        let key = record[space + 1..len]
            .split(|b| *b == b'=')
            .next()
            .unwrap_or(b"");
        if key == b"size" || key == b"GNU.sparse.size" || key.starts_with(b"GNU.sparse") {
            return Err(invalid(format!(
                "PAX record {:?} is not accepted (it overrides the entry's size)",
                String::from_utf8_lossy(key)
            )));
        }
        record = &record[len..];
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    if kind.is_gnu_longname() {
        "GNU long name"
    } else if kind.is_gnu_longlink() {
        "GNU long link"
    } else {
        "PAX"
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with_extension(kind: tar::EntryType, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = tar::Builder::new(&mut out);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(len as u64);
        h.set_path("././@LongLink").unwrap();
        h.set_cksum();
        let data = if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            pax_record(len)
        } else {
            vec![b'a'; len]
        };
        b.append(&h, &data[..]).unwrap();
        finish_with_file(b);
        out
    }

    /// Appends one small regular file `x` and the end marker.
    fn finish_with_file(mut b: tar::Builder<&mut Vec<u8>>) {
        let mut f = tar::Header::new_gnu();
        f.set_size(3);
        f.set_path("x").unwrap();
        f.set_cksum();
        b.append(&f, &b"abc"[..]).unwrap();
        b.finish().unwrap();
    }

    /// One well-formed `<len> path=aaa…\n` record of exactly `len` bytes.
    fn pax_record(len: usize) -> Vec<u8> {
        let digits = len.to_string().len();
        let value = len - digits - " path=\n".len();
        format!("{len} path={}\n", "a".repeat(value)).into_bytes()
    }

    fn read_through(bytes: &[u8], chunk: usize) -> io::Result<usize> {
        // A reader that hands out at most `chunk` bytes per read, so headers
        // straddle reads.
        struct Chunky<'a>(&'a [u8], usize);
        impl Read for Chunky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut g = HeaderGuard::new(Chunky(bytes, chunk));
        io::copy(&mut g, &mut io::sink()).map(|n| n as usize)
    }

    #[test]
    fn records_within_the_bound_pass_unchanged() {
        for kind in [
            tar::EntryType::XHeader,
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
        ] {
            let t = tar_with_extension(kind, 8 * 1024);
            for chunk in [1, 7, 512, 4096] {
                assert_eq!(read_through(&t, chunk).unwrap(), t.len());
            }
        }
    }

    #[test]
    fn records_over_the_bound_are_refused_at_their_header() {
        for (kind, name) in [
            (tar::EntryType::XHeader, "PAX"),
            (tar::EntryType::XGlobalHeader, "PAX"),
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link"),
        ] {
            let t = tar_with_extension(kind, 8 * 1024 + 1);
            for chunk in [1, 513, 4096] {
                let err = read_through(&t, chunk).unwrap_err().to_string();
                assert!(err.contains(name) && err.contains("8193 bytes"), "{err}");
            }
        }
    }

    #[test]
    fn a_pax_size_override_is_refused() {
        let mut out = Vec::new();
        let mut b = tar::Builder::new(&mut out);
        b.append_pax_extensions([("path", &b"x"[..]), ("size", &b"9999999"[..])])
            .unwrap();
        finish_with_file(b);
        let err = read_through(&out, 100).unwrap_err().to_string();
        assert!(err.contains("\"size\" is not accepted"), "{err}");
        // The same record without `size` passes.
        let mut ok = Vec::new();
        let mut b = tar::Builder::new(&mut ok);
        b.append_pax_extensions([("path", &b"x"[..])]).unwrap();
        b.finish().unwrap();
        drop(b);
        assert_eq!(read_through(&ok, 100).unwrap(), ok.len());
    }

    #[test]
    fn a_large_regular_file_is_not_an_extension() {
        let mut out = Vec::new();
        let mut b = tar::Builder::new(&mut out);
        let mut f = tar::Header::new_gnu();
        f.set_size(100_000);
        f.set_path("big").unwrap();
        f.set_cksum();
        b.append(&f, &vec![0u8; 100_000][..]).unwrap();
        b.finish().unwrap();
        drop(b);
        assert_eq!(read_through(&out, 1000).unwrap(), out.len());
    }
}
