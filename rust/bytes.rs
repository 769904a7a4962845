//! Model files as bytes, for both file readers (`gguf.rs`, `legacy.rs`): mapped read-only
//! ([`map_file`]) and read through the one bounds-checked little-endian [`Reader`]. Every read
//! checks the length first; running past the end is an `Error::Format` naming the file, what
//! was being read and the byte offset, never a panic.

use crate::error::{format_err, Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

/// Map a file read-only; clear errors for missing files and directories.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let shown = path.display();
    if path.is_dir() {
        return Err(Error::Io(format!(
            "{shown}: is a directory, not a model file"
        )));
    }
    let file = File::open(path).map_err(|e| Error::Io(format!("{shown}: cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| Error::Io(format!("{shown}: cannot stat: {e}")))?
        .len();
    if len == 0 {
        return format_err(format!("{shown}: file is empty"));
    }
    // SAFETY: the map is read-only; a file truncated under us by another process would fault,
    // as with every mmap-based loader (llama.cpp included).
    let map =
        unsafe { Mmap::map(&file) }.map_err(|e| Error::Io(format!("{shown}: cannot map: {e}")))?;
    prefer_huge_pages(&map);
    Ok(map)
}

/// Ask for 2 MiB pages over the map (Linux, where the file system keeps large folios, as
/// ext4 does since 6.x): pages read from disk after this come in 2 MiB folios, mapped with one
/// TLB entry each. Generation streams every weight once per token, and with 4 KiB pages a
/// part of its time went on page walks (TinyLlama Q4_0 at one thread, Xeon: 13.1 -> 14.5 tok/s
/// with the page cache in 2 MiB folios, the same file mapped with 4 KiB pages against 2 MiB;
/// within the noise at two threads and on the 7B shape). Pages already cached in
/// small folios stay so until the cache drops them. A refusal (another OS, THP off) changes
/// nothing, so it is ignored.
fn prefer_huge_pages(map: &Mmap) {
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// The first bytes of a file (empty if it cannot be read: the real open reports why).
pub fn read_head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut head = vec![0u8; 8];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => {
            head.truncate(n);
            head
        }
        Err(_) => Vec::new(),
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], path: &'a Path) -> Self {
        Reader { buf, pos: 0, path }
    }

    /// Offset of the next byte to read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// An error at the current offset: "`path`: `what` (at byte N)".
    pub fn err<T>(&self, what: &str) -> Result<T> {
        format_err(format!(
            "{}: {} (at byte {})",
            self.path.display(),
            what,
            self.pos
        ))
    }

    /// An error about the file as a whole: "`path`: `what`".
    pub fn err_file<T>(&self, what: &str) -> Result<T> {
        format_err(format!("{}: {}", self.path.display(), what))
    }

    pub fn path(&self) -> &'a Path {
        self.path
    }

    pub fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return self.err(&format!("file is truncated while reading {what}"));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().unwrap())
    }

    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_refuses_past_the_end() {
        let bytes = [1u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 9];
        let mut r = Reader::new(&bytes, Path::new("x.bin"));
        assert_eq!(r.u32("a").unwrap(), 1);
        assert_eq!(r.i32("b").unwrap(), -1);
        assert_eq!(r.remaining(), 1);
        let e = r.u32("c").unwrap_err().to_string();
        assert!(
            e.contains("x.bin") && e.contains("truncated while reading c") && e.contains("byte 8"),
            "{e}"
        );
        assert!(r.take(u64::MAX, "d").is_err());
        assert_eq!(r.u8("e").unwrap(), 9);
    }
}
