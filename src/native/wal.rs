//! The WAL and `.snap` file of a freshly restored member, as `etcdutl snapshot restore`
//! (etcd 3.5) writes them.
//!
//! WAL file format (etcd `server/wal/{wal.go,encoder.go,decoder.go}`, `walpb/record.proto`):
//! a sequence of frames, each an 8-byte little-endian length field followed by a marshalled
//! `walpb.Record{type, crc, data}` padded with zeros to a multiple of 8 bytes. When padding is
//! needed, the length field's top byte is `0x80 | pad` (the low 56 bits are the unpadded
//! length). `crc` is a rolling CRC-32C (Castagnoli): starting from 0 (the CRC record's value),
//! updated with each record's `data`. The first (and here only) segment is
//! `0000000000000000-0000000000000000.wal`, preallocated to 64,000,000 bytes; a reader stops
//! at the first zero length field.
//!
//! Records a restore writes, in order: CRC (type 4, crc 0, no data); metadata (type 1,
//! `etcdserverpb.Metadata{NodeID, ClusterID}`); the empty snapshot (type 5,
//! `walpb.Snapshot{}`); one entry (type 2) per member in ascending id order, `raftpb.Entry
//! {Type: EntryConfChange, Term: 1, Index: i}` holding `raftpb.ConfChange{Type: AddNode,
//! NodeID, Context: member JSON}`; the hard state (type 3, `{Term: 1, Vote: lowest id, Commit:
//! n}`); and the snapshot at the commit (type 5, `walpb.Snapshot{Index: n, Term: 1,
//! ConfState: voters}`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::membership::{Membership, MembershipError};
use super::pb;
use super::snapfile;

/// `walpb.Record` types (etcd `server/wal/wal.go`).
pub const METADATA_TYPE: i64 = 1;
pub const ENTRY_TYPE: i64 = 2;
pub const STATE_TYPE: i64 = 3;
pub const CRC_TYPE: i64 = 4;
pub const SNAPSHOT_TYPE: i64 = 5;

/// etcd's `wal.SegmentSizeBytes`: each segment is preallocated to this size.
pub const SEGMENT_SIZE_BYTES: u64 = 64 * 1000 * 1000;
/// The name of the first WAL segment.
pub const FIRST_WAL_NAME: &str = "0000000000000000-0000000000000000.wal";

/// Where raft starts on the restored member: the bbolt `consistent_index` must be `commit` and
/// (3.5) the `term` key `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStart {
    pub commit: u64,
    pub term: u64,
}

/// A failure writing or reading a restored member's WAL / snap files.
#[derive(Debug, Error)]
pub enum WalError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("the WAL directory {} already exists and is not empty: restore into a new data dir (or remove it)", path.display())]
    WalDirNotEmpty { path: PathBuf },
    #[error("the snap file {} already exists: restore into a new data dir (or remove it)", path.display())]
    SnapExists { path: PathBuf },
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WAL record at byte {offset} is malformed: {what}")]
    Malformed { offset: usize, what: String },
    #[error("WAL record at byte {offset} has CRC {stored:#010x}, expected {expected:#010x}: the WAL is corrupt")]
    Crc {
        offset: usize,
        stored: u32,
        expected: u32,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { what, path, source }
}

/// The 8-byte length field and the number of zero bytes padding a record of `len` bytes.
pub fn encode_frame_size(len: usize) -> (u64, usize) {
    let pad = (8 - len % 8) % 8;
    let mut field = len as u64;
    if pad != 0 {
        field |= (0x80 | pad as u64) << 56;
    }
    (field, pad)
}

/// Builds WAL frames with etcd's rolling CRC.
#[derive(Debug, Default)]
pub struct WalEncoder {
    buf: Vec<u8>,
    crc: u32,
}

impl WalEncoder {
    /// An encoder whose rolling CRC starts at `prev_crc` (0 for the first segment).
    pub fn new(prev_crc: u32) -> WalEncoder {
        WalEncoder {
            buf: Vec::new(),
            crc: prev_crc,
        }
    }

    /// Appends one record.
    pub fn encode(&mut self, record_type: i64, data: Option<&[u8]>) {
        self.crc = crc32c::crc32c_append(self.crc, data.unwrap_or_default());
        let rec = pb::wal_record(record_type, self.crc, data);
        let (len_field, pad) = encode_frame_size(rec.len());
        self.buf.extend_from_slice(&len_field.to_le_bytes());
        self.buf.extend_from_slice(&rec);
        self.buf.resize(self.buf.len() + pad, 0);
    }

    /// The frames written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// One record read back from a WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub record_type: i64,
    pub crc: u32,
    pub data: Option<Vec<u8>>,
}

/// Reads the records of a WAL segment (stopping at the first zero length field or the end, as
/// etcd's decoder does) and checks the rolling CRC. Returns the records and the offset just
/// past the last one.
pub fn read_records(bytes: &[u8]) -> Result<(Vec<WalRecord>, usize), WalError> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut crc = 0u32;
    while pos + 8 <= bytes.len() {
        let field = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap());
        if field == 0 {
            break;
        }
        let (len, pad) = if field >> 63 == 1 {
            (
                (field & 0x00ff_ffff_ffff_ffff) as usize,
                ((field >> 56) & 0x7) as usize,
            )
        } else {
            (field as usize, 0)
        };
        let start = pos + 8;
        let end = start
            .checked_add(len)
            .filter(|e| e + pad <= bytes.len())
            .ok_or_else(|| WalError::Malformed {
                offset: pos,
                what: format!("length {len} runs past the end of the file"),
            })?;
        let fields = pb::decode(&bytes[start..end]).map_err(|e| WalError::Malformed {
            offset: pos,
            what: e.to_string(),
        })?;
        let record_type = pb::field(&fields, 1).and_then(|v| v.as_u64()).unwrap_or(0) as i64;
        let stored = pb::field(&fields, 2).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let data = pb::field(&fields, 3)
            .and_then(|v| v.as_bytes())
            .map(<[u8]>::to_vec);
        if record_type == CRC_TYPE {
            // A CRC record carries the CRC of everything before it (the previous segment).
            if pos != 0 && stored != crc {
                return Err(WalError::Crc {
                    offset: pos,
                    stored,
                    expected: crc,
                });
            }
            crc = stored;
        } else {
            crc = crc32c::crc32c_append(crc, data.as_deref().unwrap_or_default());
            if stored != crc {
                return Err(WalError::Crc {
                    offset: pos,
                    stored,
                    expected: crc,
                });
            }
        }
        records.push(WalRecord {
            record_type,
            crc: stored,
            data,
        });
        pos = end + pad;
    }
    Ok((records, pos))
}

/// The WAL records and the marshalled `raftpb.Snapshot` a restore writes for the member
/// `local`.
pub struct RestoreImage {
    pub wal: Vec<u8>,
    pub raft_snapshot: Vec<u8>,
    pub start: RaftStart,
}

/// Computes (without touching the disk) what `write_wal_and_snap` writes.
pub fn restore_image(membership: &Membership, local: &str) -> Result<RestoreImage, WalError> {
    let me = membership.local(local)?;
    let term = 1u64;
    let commit = membership.members.len() as u64;
    let ids = membership.ids();

    let mut enc = WalEncoder::new(0);
    enc.encode(CRC_TYPE, None);
    enc.encode(
        METADATA_TYPE,
        Some(&pb::metadata(me.id, membership.cluster_id)),
    );
    enc.encode(SNAPSHOT_TYPE, Some(&pb::wal_snapshot(0, 0, None)));
    for (i, m) in membership.members.iter().enumerate() {
        let cc = pb::conf_change(0, pb::CONF_CHANGE_ADD_NODE, m.id, Some(&m.json()));
        let entry = pb::entry(pb::ENTRY_CONF_CHANGE, term, (i + 1) as u64, Some(&cc));
        enc.encode(ENTRY_TYPE, Some(&entry));
    }
    enc.encode(STATE_TYPE, Some(&pb::hard_state(term, ids[0], commit)));
    let cs = pb::conf_state(&ids, &[]);
    enc.encode(
        SNAPSHOT_TYPE,
        Some(&pb::wal_snapshot(commit, term, Some(&cs))),
    );

    Ok(RestoreImage {
        wal: enc.into_bytes(),
        raft_snapshot: snapfile::raft_snapshot(membership, commit, term),
        start: RaftStart { commit, term },
    })
}

fn create_dir_all_private(path: &Path) -> Result<(), WalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create the directory", path))
}

fn sync_dir(path: &Path) -> Result<(), WalError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", path))
}

fn dir_is_empty_or_missing(path: &Path) -> Result<bool, WalError> {
    match fs::read_dir(path) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err("read the directory", path)(e)),
    }
}

/// Extends `f` to `len` bytes with allocated blocks (fallocate), or by setting its length
/// where the filesystem cannot allocate.
fn preallocate(f: &File, len: u64, path: &Path) -> Result<(), WalError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on an open, owned file descriptor with in-range arguments.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINTR) => {}
            _ => return Err(io_err("preallocate", path)(err)),
        }
    }
    f.set_len(len).map_err(io_err("preallocate", path))
}

fn write_new_file(path: &Path, bytes: &[u8], prealloc: Option<u64>) -> Result<(), WalError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    if let Some(len) = prealloc {
        preallocate(&f, len.max(bytes.len() as u64), path)?;
    }
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

/// Writes `member/snap/<term>-<index>.snap` and the WAL (in `wal_dir`, default
/// `member/wal`) under `data_dir` for the member named `local`, as `etcdutl snapshot restore`
/// does, and fsyncs the files and directories. The `.snap` file is written first and the WAL
/// directory is built as `<wal_dir>.tmp` and renamed into place, so a WAL directory only
/// exists once everything is on disk (etcd treats a data dir with a WAL as an initialized
/// member).
///
/// The caller writes `member/snap/db` with `consistent_index` = `commit` (and, for 3.5,
/// `term`) from the returned [`RaftStart`].
pub fn write_wal_and_snap(
    data_dir: &Path,
    wal_dir: Option<&Path>,
    membership: &Membership,
    local: &str,
) -> Result<RaftStart, WalError> {
    let image = restore_image(membership, local)?;
    let member_dir = data_dir.join("member");
    let snap_dir = member_dir.join("snap");
    let wal_dir = wal_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| member_dir.join("wal"));
    if !dir_is_empty_or_missing(&wal_dir)? {
        return Err(WalError::WalDirNotEmpty { path: wal_dir });
    }

    // The .snap file.
    create_dir_all_private(&snap_dir)?;
    let snap_path = snap_dir.join(snapfile::snap_file_name(
        image.start.term,
        image.start.commit,
    ));
    if snap_path.exists() {
        return Err(WalError::SnapExists { path: snap_path });
    }
    write_new_file(
        &snap_path,
        &snapfile::snap_file_bytes(&image.raft_snapshot),
        None,
    )?;
    sync_dir(&snap_dir)?;
    sync_dir(&member_dir)?;

    // The WAL, built in <wal_dir>.tmp and renamed into place.
    let mut tmp = wal_dir.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err("remove the stale directory", &tmp))?;
    }
    create_dir_all_private(&tmp)?;
    write_new_file(
        &tmp.join(FIRST_WAL_NAME),
        &image.wal,
        Some(SEGMENT_SIZE_BYTES),
    )?;
    sync_dir(&tmp)?;
    if wal_dir.exists() {
        // Empty (checked above); rename cannot replace a directory on every platform.
        fs::remove_dir(&wal_dir).map_err(io_err("remove the empty directory", &wal_dir))?;
    }
    fs::rename(&tmp, &wal_dir).map_err(io_err("rename the WAL directory into", &wal_dir))?;
    let parent = wal_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)?;
    sync_dir(&wal_dir)?;
    if let Some(grand) = parent.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Make the parent's own entry durable when it was created here (member/).
        sync_dir(grand)?;
    }
    Ok(image.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_and_padding() {
        assert_eq!(encode_frame_size(8), (8, 0));
        assert_eq!(encode_frame_size(0), (0, 0));
        assert_eq!(encode_frame_size(4), (4 | (0x84u64 << 56), 4));
        assert_eq!(encode_frame_size(13), (13 | (0x83u64 << 56), 3));
        assert_eq!(encode_frame_size(15), (15 | (0x81u64 << 56), 1));
    }

    #[test]
    fn first_frame_is_the_crc_record() {
        let mut enc = WalEncoder::new(0);
        enc.encode(CRC_TYPE, None);
        // len 4 | 0x84 << 56, LE; record 08 04 10 00; 4 zero bytes.
        assert_eq!(
            enc.bytes(),
            [4, 0, 0, 0, 0, 0, 0, 0x84, 0x08, 0x04, 0x10, 0x00, 0, 0, 0, 0]
        );
    }

    #[test]
    fn rolling_crc_and_read_back() {
        let mut enc = WalEncoder::new(0);
        enc.encode(CRC_TYPE, None);
        enc.encode(METADATA_TYPE, Some(b"meta"));
        enc.encode(ENTRY_TYPE, Some(b"entry-data"));
        let bytes = enc.into_bytes();
        assert_eq!(bytes.len() % 8, 0);
        let (recs, end) = read_records(&bytes).unwrap();
        assert_eq!(end, bytes.len());
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].crc, crc32c::crc32c(b"meta"));
        assert_eq!(recs[2].crc, crc32c::crc32c(b"metaentry-data"));
        // Known CRC-32C check value ("123456789" -> e3069283), split over two records.
        let mut enc = WalEncoder::new(0);
        enc.encode(METADATA_TYPE, Some(b"1234"));
        enc.encode(METADATA_TYPE, Some(b"56789"));
        let (recs, _) = read_records(enc.bytes()).unwrap();
        assert_eq!(recs[1].crc, 0xe306_9283);

        // Trailing zeros (preallocation) end the log; a flipped byte breaks the CRC.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 64, 0);
        assert_eq!(read_records(&padded).unwrap().1, bytes.len());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 9] ^= 0x01;
        assert!(read_records(&bad).is_err());
    }

    #[test]
    fn image_records() {
        let m = Membership::from_flags(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
            "tok",
        )
        .unwrap();
        let img = restore_image(&m, "b").unwrap();
        assert_eq!(img.start, RaftStart { commit: 3, term: 1 });
        let (recs, _) = read_records(&img.wal).unwrap();
        let types: Vec<i64> = recs.iter().map(|r| r.record_type).collect();
        assert_eq!(types, [4, 1, 5, 2, 2, 2, 3, 5]);
        assert_eq!(
            recs[1].data.as_deref().unwrap(),
            pb::metadata(m.member("b").unwrap().id, m.cluster_id)
        );
        assert_eq!(
            recs[6].data.as_deref().unwrap(),
            pb::hard_state(1, m.members[0].id, 3)
        );
        assert!(matches!(
            restore_image(&m, "zz"),
            Err(WalError::Membership(MembershipError::UnknownName { .. }))
        ));
    }

    #[test]
    fn writes_files_and_refuses_existing_wal() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::from_flags("a=http://127.0.0.1:1", "tok").unwrap();
        let start = write_wal_and_snap(dir.path(), None, &m, "a").unwrap();
        assert_eq!(start, RaftStart { commit: 1, term: 1 });
        let wal = dir.path().join("member/wal").join(FIRST_WAL_NAME);
        assert_eq!(fs::metadata(&wal).unwrap().len(), SEGMENT_SIZE_BYTES);
        assert!(dir
            .path()
            .join("member/snap/0000000000000001-0000000000000001.snap")
            .is_file());
        assert!(!dir.path().join("member/wal.tmp").exists());
        let err = write_wal_and_snap(dir.path(), None, &m, "a").unwrap_err();
        assert!(matches!(err, WalError::WalDirNotEmpty { .. }), "{err}");
    }

    #[test]
    fn separate_wal_dir() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::from_flags("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "t").unwrap();
        let data = dir.path().join("data");
        let wal_dir = dir.path().join("elsewhere/wal");
        let start = write_wal_and_snap(&data, Some(&wal_dir), &m, "b").unwrap();
        assert_eq!(start, RaftStart { commit: 2, term: 1 });
        let bytes = fs::read(wal_dir.join(FIRST_WAL_NAME)).unwrap();
        let img = restore_image(&m, "b").unwrap();
        assert_eq!(&bytes[..img.wal.len()], &img.wal[..]);
        assert!(bytes[img.wal.len()..].iter().all(|&b| b == 0));
        assert!(!data.join("member/wal").exists());
        let snap =
            fs::read(data.join("member/snap/0000000000000001-0000000000000002.snap")).unwrap();
        assert_eq!(
            snapfile::read_snap_file(&snap).unwrap(),
            &img.raft_snapshot[..]
        );
    }
}
