//! etcd's SHA-256 trailer.
//!
//! `Maintenance.Snapshot` streams the bbolt file followed by 32 bytes: the SHA-256 of everything
//! before them, and `etcdctl snapshot save` keeps them in the file. etcd's own test for "this file
//! has a trailer" (used by `snapshot restore`) is `len % 512 == 32`: a bbolt file is a whole
//! number of pages, and pages are multiples of 512 bytes.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::SnapshotError;

/// Length of the trailer: one SHA-256 digest.
pub const TRAILER_LEN: usize = 32;

/// Read size of [`check_trailer`].
const READ_BUF: usize = 1 << 20;

/// A verified trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailerCheck {
    /// Every byte, trailer included.
    pub total_len: u64,
    /// The bbolt part: `total_len - 32`.
    pub db_len: u64,
    /// SHA-256 of the bbolt part, equal to the trailer.
    pub db_sha256: [u8; 32],
    /// SHA-256 of every byte, trailer included (the file as `etcdctl snapshot save` writes it).
    pub stream_sha256: [u8; 32],
}

/// Checks a snapshot as it streams in, without knowing its length: feed every chunk to
/// [`update`](Self::update), then [`finish`](Self::finish). It holds the latest 32 bytes back
/// from the database digest, so at the end they can be compared with the digest of the rest.
/// The digest of the whole stream, trailer included, comes free at the end: SHA-256 is a
/// running state, so it is the database digest's state continued with the 32 held-back bytes.
#[derive(Clone)]
pub struct TrailerHasher {
    db: Sha256,
    /// The latest bytes seen, not yet in `db`; at most 32.
    tail: [u8; TRAILER_LEN],
    tail_len: usize,
    total: u64,
}

impl Default for TrailerHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TrailerHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailerHasher")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl TrailerHasher {
    pub fn new() -> Self {
        TrailerHasher {
            db: Sha256::new(),
            tail: [0; TRAILER_LEN],
            tail_len: 0,
            total: 0,
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER_LEN {
            // Everything held back, and all but the chunk's last 32 bytes, are database bytes.
            self.db.update(&self.tail[..self.tail_len]);
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER_LEN);
            self.db.update(body);
            self.tail.copy_from_slice(tail);
            self.tail_len = TRAILER_LEN;
        } else {
            let spill = (self.tail_len + chunk.len()).saturating_sub(TRAILER_LEN);
            // spill <= tail_len, because chunk.len() < 32.
            self.db.update(&self.tail[..spill]);
            self.tail.copy_within(spill..self.tail_len, 0);
            self.tail_len -= spill;
            self.tail[self.tail_len..self.tail_len + chunk.len()].copy_from_slice(chunk);
            self.tail_len += chunk.len();
        }
    }

    /// Checks the trailer; `path` only names the file in errors.
    pub fn finish(self, path: &Path) -> Result<TrailerCheck, SnapshotError> {
        if !has_trailer(self.total) {
            return Err(SnapshotError::NoTrailer {
                path: path.to_path_buf(),
                len: self.total,
            });
        }
        debug_assert_eq!(self.tail_len, TRAILER_LEN);
        let stored = self.tail;
        let mut stream = self.db.clone();
        stream.update(stored);
        let computed: [u8; 32] = self.db.finalize().into();
        if computed != stored {
            return Err(SnapshotError::TrailerMismatch {
                path: path.to_path_buf(),
                stored,
                computed,
            });
        }
        Ok(TrailerCheck {
            total_len: self.total,
            db_len: self.total - TRAILER_LEN as u64,
            db_sha256: computed,
            stream_sha256: stream.finalize().into(),
        })
    }
}

/// etcdutl's rule for whether a file of `len` bytes carries the trailer: a snapshot made by
/// etcd is a whole number of 512-byte blocks plus the 32-byte SHA-256; anything else is a bare
/// database file.
pub fn has_trailer(len: u64) -> bool {
    len % 512 == TRAILER_LEN as u64
}

/// Checks the trailer of the file at `path`, reading it once, front to back, 1 MiB at a time.
pub fn check_trailer(path: &Path) -> Result<TrailerCheck, SnapshotError> {
    let io = |action, source| SnapshotError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    let mut file = File::open(path).map_err(|e| io("open", e))?;
    let len = file.metadata().map_err(|e| io("stat", e))?.len();
    if !has_trailer(len) {
        return Err(SnapshotError::NoTrailer {
            path: path.to_path_buf(),
            len,
        });
    }
    let mut hasher = TrailerHasher::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read", e)),
        };
        hasher.update(&buf[..n]);
    }
    hasher.finish(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(db: &[u8]) -> Vec<u8> {
        let mut out = db.to_vec();
        out.extend_from_slice(&Sha256::digest(db));
        out
    }

    fn feed(data: &[u8], chunks: &[usize]) -> TrailerHasher {
        let mut h = TrailerHasher::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunks[i % chunks.len()].min(rest.len());
            h.update(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        h
    }

    fn db_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn any_chunking_gives_the_same_answer() {
        let db = db_bytes(4096 * 3);
        let file = with_trailer(&db);
        let expected = TrailerCheck {
            total_len: file.len() as u64,
            db_len: db.len() as u64,
            db_sha256: Sha256::digest(&db).into(),
            stream_sha256: Sha256::digest(&file).into(),
        };
        for chunks in [
            vec![1],
            vec![7],
            vec![31],
            vec![32],
            vec![33],
            vec![1, 40, 3, 100, 31, 32],
            vec![4096],
            vec![1 << 20],
            vec![5, 0, 64],
        ] {
            let got = feed(&file, &chunks).finish(Path::new("x.db")).unwrap();
            assert_eq!(got, expected, "chunks {chunks:?}");
        }
    }

    #[test]
    fn missing_or_wrong_trailer() {
        let db = db_bytes(4096 * 2);
        let path = Path::new("snapshot.db");
        let err = feed(&db, &[1000]).finish(path).unwrap_err();
        assert!(
            matches!(err, SnapshotError::NoTrailer { len: 8192, .. }),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("snapshot.db: no SHA-256 trailer"));
        let err = TrailerHasher::new().finish(path).unwrap_err();
        assert!(matches!(err, SnapshotError::NoTrailer { len: 0, .. }));
        let short = &[0u8; 20];
        let err = feed(short, &[3]).finish(path).unwrap_err();
        assert!(matches!(err, SnapshotError::NoTrailer { .. }));

        let mut file = with_trailer(&db);
        file[100] ^= 1;
        let err = feed(&file, &[333]).finish(path).unwrap_err();
        assert!(matches!(err, SnapshotError::TrailerMismatch { .. }));
        assert_eq!(
            err.to_string(),
            "snapshot.db: SHA-256 trailer does not match the contents: the file is corrupt"
        );
        let mut file = with_trailer(&db);
        let last = file.len() - 1;
        file[last] ^= 0x80;
        assert!(matches!(
            feed(&file, &[4096]).finish(path),
            Err(SnapshotError::TrailerMismatch { .. })
        ));
        // Exactly a trailer and nothing else: the digest of nothing.
        let only = with_trailer(&[]);
        assert_eq!(only.len(), 32);
        let got = feed(&only, &[32]).finish(path).unwrap();
        assert_eq!(got.db_len, 0);
    }

    #[test]
    fn check_trailer_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_bytes(4096 * 300 + 512);
        let file = with_trailer(&db);
        let path = dir.path().join("ok.db");
        std::fs::write(&path, &file).unwrap();
        let got = check_trailer(&path).unwrap();
        assert_eq!(got.total_len, file.len() as u64);
        assert_eq!(got.db_sha256, <[u8; 32]>::from(Sha256::digest(&db)));
        assert_eq!(got.stream_sha256, <[u8; 32]>::from(Sha256::digest(&file)));

        let raw = dir.path().join("raw.db");
        std::fs::write(&raw, &db).unwrap();
        assert!(matches!(
            check_trailer(&raw),
            Err(SnapshotError::NoTrailer { .. })
        ));
        let missing = dir.path().join("missing.db");
        let err = check_trailer(&missing).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { action: "open", .. }));
        assert!(!err.to_string().contains('\n'));
    }
}
