//! Writing a large file around the page cache (`O_DIRECT`), for the local store's objects and
//! the snapshot spool, and reading it back the same way.
//!
//! A backup object is written once and read rarely. Written through the page cache it costs a
//! copy into freshly allocated cache pages, and it pushes out what the node keeps cached, etcd's
//! own database among it. Written with `O_DIRECT` it goes from one reused, aligned buffer to
//! the disk. Where the filesystem refuses `O_DIRECT` (at open, or at the first write) the file
//! is written the ordinary way instead; the result is the same file.
//!
//! Blocking: call these from a blocking thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of `O_DIRECT` writes: buffer address, file offset and length. 4096 satisfies
/// every common block device (512-byte and 4 KiB sectors).
pub const ALIGN: usize = 4096;
/// Bytes gathered before one write to disk.
pub const BLOCK: usize = 2 << 20;

/// A `BLOCK`-sized buffer whose start is `ALIGN`-aligned.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new() -> AlignedBuf {
        let raw = vec![0u8; BLOCK + ALIGN];
        // The heap allocation never moves (the Vec is never grown), so the offset stays valid.
        let start = raw.as_ptr().align_offset(ALIGN);
        assert!(start < ALIGN, "cannot align a byte buffer");
        AlignedBuf { raw, start, len: 0 }
    }

    /// Appends as much of `data` as fits; returns how many bytes were taken.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(BLOCK - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub fn is_full(&self) -> bool {
        self.len == BLOCK
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The filled bytes.
    pub fn filled(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The whole aligned block, to read into; then [`AlignedBuf::set_len`].
    pub fn block_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }

    pub fn set_len(&mut self, len: usize) {
        assert!(len <= BLOCK);
        self.len = len;
    }

    /// The filled bytes, zero-padded up to a multiple of `ALIGN`.
    fn padded(&mut self) -> &[u8] {
        let end = self.len.next_multiple_of(ALIGN);
        self.raw[self.start + self.len..self.start + end].fill(0);
        &self.raw[self.start..self.start + end]
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::new()
    }
}

/// A new file written front to back in `BLOCK`s, then finished with a short tail.
pub struct DirectFile {
    file: File,
    path: PathBuf,
    direct: bool,
    offset: u64,
}

impl DirectFile {
    /// Creates `path`, which must not exist yet, and opens it for `O_DIRECT` writes where the
    /// filesystem allows them.
    pub fn create_new(path: &Path) -> io::Result<DirectFile> {
        DirectFile::create(path, true, 0o666)
    }

    /// [`DirectFile::create_new`] with permission bits `mode` (before the umask).
    pub fn create_new_with_mode(path: &Path, mode: u32) -> io::Result<DirectFile> {
        DirectFile::create(path, true, mode)
    }

    fn create(path: &Path, try_direct: bool, mode: u32) -> io::Result<DirectFile> {
        // Created the ordinary way first: on some filesystems an O_DIRECT open creates the
        // file and then fails, which would break create_new's promise.
        let buffered = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        let direct = try_direct
            .then(|| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
            })
            .and_then(Result::ok);
        let (file, direct) = match direct {
            Some(direct) => (direct, true),
            None => (buffered, false),
        };
        Ok(DirectFile {
            file,
            path: path.to_path_buf(),
            direct,
            offset: 0,
        })
    }

    /// Whether writes go around the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes the rest of the file through the page cache, where it can be read back cheaply.
    pub fn stop_direct(&mut self) -> io::Result<()> {
        if self.direct {
            self.file = OpenOptions::new().write(true).open(&self.path)?;
            self.direct = false;
        }
        Ok(())
    }

    /// Bytes written so far (whole blocks).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes a full buffer at the end of what was written so far.
    pub fn write_block(&mut self, buf: &mut AlignedBuf) -> io::Result<()> {
        assert!(buf.is_full(), "only the last write may be short");
        self.write_at_end(buf)?;
        self.offset += BLOCK as u64;
        Ok(())
    }

    /// Writes the last, possibly short, buffer, sets the file's exact length and syncs it.
    /// Returns the length the file has on disk.
    pub fn finish(mut self, tail: &mut AlignedBuf) -> io::Result<u64> {
        self.write_tail(tail)?;
        self.sync()
    }

    /// Writes the last, possibly short, buffer and sets the file's exact length (then only
    /// [`DirectFile::sync`] may follow). Returns that length.
    pub fn write_tail(&mut self, tail: &mut AlignedBuf) -> io::Result<u64> {
        let size = self.offset + tail.len() as u64;
        if !tail.is_empty() {
            // An O_DIRECT write is a whole number of blocks: write the tail padded, then cut
            // the file back to its length.
            self.write_at_end(tail)?;
            self.file.set_len(size)?;
            self.offset = size;
            tail.clear();
        }
        Ok(size)
    }

    /// Makes the file durable; returns the length it has on disk.
    pub fn sync(self) -> io::Result<u64> {
        self.file.sync_all()?;
        Ok(self.file.metadata()?.len())
    }

    fn write_at_end(&mut self, buf: &mut AlignedBuf) -> io::Result<()> {
        let data = buf.padded();
        match self.file.write_all_at(data, self.offset) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem took the O_DIRECT open but not the write (a stricter
                // alignment, or no direct I/O at all): continue the ordinary way. Positional
                // writes make the retry exact even after a partial write.
                self.stop_direct()?;
                self.file.write_all_at(data, self.offset)
            }
            other => other,
        }
    }
}

/// A file read front to back in `BLOCK`s around the page cache, where the filesystem allows it:
/// a file written with [`DirectFile`] is read back from the disk without passing through (and
/// filling) the page cache.
pub struct DirectReader {
    file: File,
    path: PathBuf,
    direct: bool,
}

impl DirectReader {
    pub fn open(path: &Path) -> io::Result<DirectReader> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let (file, direct) = match direct {
            Ok(file) => (file, true),
            Err(_) => (File::open(path)?, false),
        };
        Ok(DirectReader {
            file,
            path: path.to_path_buf(),
            direct,
        })
    }

    /// Whether reads go around the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Reads the `len` (at most `BLOCK`) bytes at `offset`, a multiple of `ALIGN`, into `buf`.
    /// The bytes must be in the file already.
    pub fn read_exact_at(
        &mut self,
        buf: &mut AlignedBuf,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        assert!(len <= BLOCK && offset % ALIGN as u64 == 0);
        let mut have = 0;
        while have < len {
            // An O_DIRECT read is a whole number of blocks; at the end of the file it comes
            // back short.
            let want = if self.direct {
                len.next_multiple_of(ALIGN)
            } else {
                len
            };
            match self
                .file
                .read_at(&mut buf.block_mut()[have..want], offset + have as u64)
            {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    // Refused after the open (or a short read left an unaligned offset):
                    // continue the ordinary way.
                    self.file = File::open(&self.path)?;
                    self.direct = false;
                }
                Err(e) => return Err(e),
            }
        }
        buf.set_len(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    fn write_file(path: &Path, data: &[u8], piece: usize, try_direct: bool) -> (u64, bool) {
        let mut file = DirectFile::create(path, try_direct, 0o666).unwrap();
        let direct = file.is_direct();
        let mut buf = AlignedBuf::new();
        for mut chunk in data.chunks(piece) {
            while !chunk.is_empty() {
                let n = buf.fill(chunk);
                chunk = &chunk[n..];
                if buf.is_full() {
                    file.write_block(&mut buf).unwrap();
                    buf.clear();
                }
            }
        }
        (file.finish(&mut buf).unwrap(), direct)
    }

    /// A temporary dir on the machine's disk (ext4 or xfs, where O_DIRECT works), not a tmpfs.
    fn disk_dir() -> tempfile::TempDir {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(&target).unwrap()
    }

    #[test]
    fn files_of_every_awkward_length_come_back_exact() {
        let dir = disk_dir();
        let lengths = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK + 12345,
        ];
        // Both ways: around the page cache, and the ordinary writes used where it is refused.
        for try_direct in [true, false] {
            for (i, len) in lengths.into_iter().enumerate() {
                let data = pattern(len);
                let path = dir.path().join(format!("object-{try_direct}-{i}"));
                let (size, direct) = write_file(&path, &data, 777_777, try_direct);
                assert_eq!(direct, try_direct);
                assert_eq!(size, len as u64, "length {len}");
                assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
            }
        }
    }

    #[test]
    fn uses_o_direct_on_an_ordinary_disk_filesystem() {
        // The benefit this module exists for would otherwise be lost silently.
        let dir = disk_dir();
        let path = dir.path().join("object");
        let (_, direct) = write_file(&path, &pattern(BLOCK + 5), 1 << 20, true);
        assert!(direct, "O_DIRECT was refused on {}", dir.path().display());
    }

    fn read_all(path: &Path, len: usize) -> (Vec<u8>, bool) {
        let mut reader = DirectReader::open(path).unwrap();
        let mut buf = AlignedBuf::new();
        let mut out = Vec::new();
        while out.len() < len {
            let n = (len - out.len()).min(BLOCK);
            reader.read_exact_at(&mut buf, out.len() as u64, n).unwrap();
            out.extend_from_slice(buf.filled());
        }
        (out, reader.is_direct())
    }

    #[test]
    fn reads_back_exactly_what_either_way_wrote() {
        let dir = disk_dir();
        for try_direct in [true, false] {
            for len in [
                1,
                ALIGN - 1,
                ALIGN + 1,
                BLOCK,
                BLOCK + ALIGN + 7,
                2 * BLOCK + 12345,
            ] {
                let data = pattern(len);
                let path = dir.path().join(format!("read-{try_direct}-{len}"));
                write_file(&path, &data, 333_333, try_direct);
                // Written through the page cache or around it, read around it: the same bytes.
                let (read, direct) = read_all(&path, len);
                assert!(direct, "O_DIRECT reads refused on {}", dir.path().display());
                assert_eq!(read, data, "length {len}, written direct: {try_direct}");
            }
        }
        // Past the end is an error, not a short buffer.
        let path = dir.path().join("read-true-1");
        let mut reader = DirectReader::open(&path).unwrap();
        let err = reader
            .read_exact_at(&mut AlignedBuf::new(), 0, 2)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_file_can_go_on_through_the_page_cache() {
        let dir = disk_dir();
        let path = dir.path().join("switched");
        let data = pattern(3 * BLOCK + 777);
        let mut file = DirectFile::create_new(&path).unwrap();
        assert!(file.is_direct());
        let mut buf = AlignedBuf::new();
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            buf.fill(chunk);
            if i == 1 {
                file.stop_direct().unwrap();
                assert!(!file.is_direct());
            }
            if buf.is_full() {
                file.write_block(&mut buf).unwrap();
                buf.clear();
            }
        }
        assert_eq!(file.finish(&mut buf).unwrap(), data.len() as u64);
        assert_eq!(read_all(&path, data.len()).0, data);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        std::fs::write(&path, b"keep me").unwrap();
        let err = DirectFile::create_new(&path).err().expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }
}
