//! A delta segment: the plain record stream (before zstd and age), its manifest, and where
//! both live in the store.
//!
//! Store layout (all under `deltas/`, beside the full backups):
//! - `deltas/<first:020>.json`: the segment's manifest, written last and exclusively: a segment
//!   exists only when its manifest does, and of two writers starting a segment at the same
//!   revision exactly one publishes it.
//! - `deltas/<first:020>-<last:020>-<nonce>.seg.zst.age`: the events, `age(zstd(records))`.
//! - `deltas/<first:020>-<last:020>-<nonce>.json.sig`: the manifest's SSHSIG signature when
//!   signing is on, written before the manifest, named after its writer's object so two
//!   instances racing for one first revision never overwrite each other's.
//! - `deltas/breaks/<after:020>.json`: a chain break: capture could not go on after revision
//!   `after` (the reason says why); the next chain starts at a later full backup.
//!
//! The record stream: the magic line [`MAGIC`], then records `kind: u8`, `len: u32 LE`, body:
//! - [`PUT`]: `revision i64 BE`, `sub u32 BE`, `received_ms i64 BE`, then the `mvccpb.KeyValue`
//!   exactly as etcd stores it in its `key` bucket (key, create/mod revision, version, value,
//!   lease; proto3, zero fields left out).
//! - [`DELETE`]: the same three numbers, then the deleted key.
//! - [`END`]: `count u64 BE`, the number of events: a cut stream is never taken for a whole one.

use std::io::{self, Read, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The first bytes of every plain segment.
pub const MAGIC: &[u8] = b"ETCDSAFE-DELTA/1\n";
pub const PUT: u8 = 1;
pub const DELETE: u8 = 2;
pub const END: u8 = 0xff;
/// Every delta object lives under this prefix.
pub const PREFIX: &str = "deltas/";
pub const BREAKS_PREFIX: &str = "deltas/breaks/";
pub const DATA_SUFFIX: &str = ".seg.zst.age";
pub const MANIFEST_SUFFIX: &str = ".json";
/// The version of the segment manifest this etcdsafe writes and reads.
pub const SEGMENT_FORMAT: u32 = 1;
/// The biggest record body accepted when reading (etcd's own request limit is 1.5 MiB by
/// default and at most a few MiB; a longer length is a damaged stream, not a big value).
const MAX_RECORD: u32 = 64 << 20;

/// One change, as captured from the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: i64,
    /// The change's position within its revision (a txn makes several).
    pub sub: u32,
    /// When etcdsafe received it (unix milliseconds).
    pub received_ms: i64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The new `mvccpb.KeyValue`, encoded as etcd stores it.
    Put {
        kv: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl Event {
    /// The `key` bucket entry etcd writes for this change: revision key (`main_sub`, with `t`
    /// for a tombstone) and value.
    pub fn bucket_entry(&self) -> (Vec<u8>, Vec<u8>) {
        let mut key = Vec::with_capacity(18);
        key.extend_from_slice(&self.revision.to_be_bytes());
        key.push(b'_');
        key.extend_from_slice(&i64::from(self.sub).to_be_bytes());
        match &self.kind {
            EventKind::Put { kv } => (key, kv.clone()),
            EventKind::Delete { key: deleted } => {
                key.push(b't');
                let mut value = Vec::with_capacity(deleted.len() + 6);
                crate::native::pb::put_bytes(&mut value, 1, deleted);
                (key, value)
            }
        }
    }
}

/// Feeds one event into a segment's witness (the SHA-256 of every event at its last revision,
/// `lastRevisionSha256`): its revision, sub-revision and change, length-prefixed. A watch from
/// that revision must feed etcd's events at it to the same digest, or etcd's history is not
/// the one the chain recorded.
pub fn witness_update(hasher: &mut sha2::Sha256, event: &Event) {
    use sha2::Digest;
    hasher.update(event.revision.to_be_bytes());
    hasher.update(i64::from(event.sub).to_be_bytes());
    let (tag, bytes) = match &event.kind {
        EventKind::Put { kv } => (b'p', kv),
        EventKind::Delete { key } => (b'd', key),
    };
    hasher.update([tag]);
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// Encodes an `mvccpb.KeyValue` as etcd stores it (fields in order, zero values left out).
pub fn encode_kv(
    key: &[u8],
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    value: &[u8],
    lease: i64,
) -> Vec<u8> {
    use crate::native::pb::{put_bytes, put_uint};
    let mut b = Vec::with_capacity(key.len() + value.len() + 40);
    if !key.is_empty() {
        put_bytes(&mut b, 1, key);
    }
    for (field, n) in [(2, create_revision), (3, mod_revision), (4, version)] {
        if n != 0 {
            put_uint(&mut b, field, n as u64);
        }
    }
    if !value.is_empty() {
        put_bytes(&mut b, 5, value);
    }
    if lease != 0 {
        put_uint(&mut b, 6, lease as u64);
    }
    b
}

/// Writes records; [`RecordWriter::finish`] writes the end record.
pub struct RecordWriter<W: Write> {
    out: W,
    count: u64,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(RecordWriter { out, count: 0 })
    }

    /// Appends one event; returns the bytes written.
    pub fn write(&mut self, event: &Event) -> io::Result<u64> {
        let (kind, payload) = match &event.kind {
            EventKind::Put { kv } => (PUT, kv),
            EventKind::Delete { key } => (DELETE, key),
        };
        let len = 20 + payload.len();
        let mut head = Vec::with_capacity(25);
        head.push(kind);
        head.extend_from_slice(&(len as u32).to_le_bytes());
        head.extend_from_slice(&event.revision.to_be_bytes());
        head.extend_from_slice(&event.sub.to_be_bytes());
        head.extend_from_slice(&event.received_ms.to_be_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.count += 1;
        Ok(5 + len as u64)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the end record and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[END])?;
        self.out.write_all(&8u32.to_le_bytes())?;
        self.out.write_all(&self.count.to_be_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What is wrong with a record stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("it is not a delta segment (no {MAGIC:?} header)")]
    NotASegment,
    #[error("it ends before its end record (cut short after {0} events)")]
    Truncated(u64),
    #[error("record {index} has unknown kind {kind:#x}")]
    UnknownKind { index: u64, kind: u8 },
    #[error("record {index} is {len} bytes long, which no etcd change is")]
    BadLength { index: u64, len: u32 },
    #[error("its end record counts {said} events but it holds {found}")]
    CountMismatch { said: u64, found: u64 },
    #[error("event {index} at revision {revision}.{sub} is out of order (after {prev_revision}.{prev_sub})")]
    OutOfOrder {
        index: u64,
        revision: i64,
        sub: u32,
        prev_revision: i64,
        prev_sub: u32,
    },
}

/// Reads records back, checking order and the end record.
pub struct RecordReader<R: Read> {
    input: R,
    index: u64,
    last: Option<(i64, u32)>,
    done: bool,
}

/// A read failure: the bytes could not be read, or they are not a sound segment.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Record(#[from] RecordError),
}

impl<R: Read> RecordReader<R> {
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut magic = vec![0u8; MAGIC.len()];
        read_exact_or(&mut input, &mut magic, RecordError::NotASegment)?;
        if magic != MAGIC {
            return Err(RecordError::NotASegment.into());
        }
        Ok(RecordReader {
            input,
            index: 0,
            last: None,
            done: false,
        })
    }

    /// The next event; `None` after a sound end record.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        read_exact_or(
            &mut self.input,
            &mut head,
            RecordError::Truncated(self.index),
        )?;
        let kind = head[0];
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
        if kind == END {
            if len != 8 {
                return Err(RecordError::BadLength {
                    index: self.index,
                    len,
                }
                .into());
            }
            let mut count = [0u8; 8];
            read_exact_or(
                &mut self.input,
                &mut count,
                RecordError::Truncated(self.index),
            )?;
            let said = u64::from_be_bytes(count);
            if said != self.index {
                return Err(RecordError::CountMismatch {
                    said,
                    found: self.index,
                }
                .into());
            }
            self.done = true;
            return Ok(None);
        }
        if kind != PUT && kind != DELETE {
            return Err(RecordError::UnknownKind {
                index: self.index,
                kind,
            }
            .into());
        }
        if !(20..=MAX_RECORD).contains(&len) {
            return Err(RecordError::BadLength {
                index: self.index,
                len,
            }
            .into());
        }
        let mut body = vec![0u8; len as usize];
        read_exact_or(
            &mut self.input,
            &mut body,
            RecordError::Truncated(self.index),
        )?;
        let revision = i64::from_be_bytes(body[0..8].try_into().expect("8 bytes"));
        let sub = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
        let received_ms = i64::from_be_bytes(body[12..20].try_into().expect("8 bytes"));
        if let Some((prev_revision, prev_sub)) = self.last {
            if (revision, sub) <= (prev_revision, prev_sub) {
                return Err(RecordError::OutOfOrder {
                    index: self.index,
                    revision,
                    sub,
                    prev_revision,
                    prev_sub,
                }
                .into());
            }
        }
        self.last = Some((revision, sub));
        self.index += 1;
        let payload = body.split_off(20);
        let kind = if kind == PUT {
            EventKind::Put { kv: payload }
        } else {
            EventKind::Delete { key: payload }
        };
        Ok(Some(Event {
            revision,
            sub,
            received_ms,
            kind,
        }))
    }
}

fn read_exact_or<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    short: RecordError,
) -> Result<(), ReadError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(short.into()),
        Err(e) => Err(e.into()),
    }
}

/// A lease as recorded at a seal: its id and the TTL it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl: i64,
}

/// The manifest of one sealed segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentManifest {
    pub format_version: u32,
    pub first_revision: i64,
    pub last_revision: i64,
    /// When the first and last events were received.
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
    pub sealed_at: DateTime<Utc>,
    pub events: u64,
    /// The stored object: key, size, SHA-256 of its bytes as stored.
    pub object: SegmentObject,
    /// The previous segment's `object.sha256`; `None` starts a chain (at a full backup).
    pub previous_sha256: Option<String>,
    /// The full backup the chain this segment belongs to started from.
    pub chain_base: String,
    /// etcd's compaction revision as seen at the seal (0: never compacted).
    pub compact_revision: i64,
    /// Every lease etcd held at the seal, with its granted TTL.
    pub leases: Vec<LeaseRecord>,
    /// The age recipients the object is encrypted to.
    pub recipients: Vec<String>,
    /// Who captured it (the instance's identity), for the record.
    pub captured_by: String,
    pub tool_version: String,
    /// The SHA-256 of the events at `lastRevision` ([`witness_update`]): capture resuming after
    /// this segment first checks that etcd still has them (absent in older segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revision_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// A chain break: capture could not continue after `after_revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainBreak {
    pub after_revision: i64,
    /// `compacted` | `canceled` | `rewound`.
    pub reason: String,
    pub detail: String,
    pub at: DateTime<Utc>,
    /// After a `rewound` break: the full backup the new chain starts from (taken by the
    /// capture once etcd passed everything stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_chain_base: Option<String>,
}

pub fn manifest_key(first: i64) -> String {
    format!("{PREFIX}{first:020}{MANIFEST_SUFFIX}")
}

/// The signature id of a segment, from its data object's key (its signature is
/// `<id>.json.sig`).
pub fn signature_id(object_key: &str) -> String {
    object_key
        .strip_suffix(DATA_SUFFIX)
        .unwrap_or(object_key)
        .to_string()
}

pub fn data_key(first: i64, last: i64, nonce: &str) -> String {
    format!("{PREFIX}{first:020}-{last:020}-{nonce}{DATA_SUFFIX}")
}

pub fn break_key(after: i64) -> String {
    format!("{BREAKS_PREFIX}{after:020}.json")
}

/// The first revision a manifest key names (`deltas/<first>.json`).
pub fn manifest_first(key: &str) -> Option<i64> {
    let name = key.strip_prefix(PREFIX)?.strip_suffix(MANIFEST_SUFFIX)?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, sub: u32, key: &str, value: &str) -> Event {
        Event {
            revision,
            sub,
            received_ms: 1_700_000_000_000 + revision,
            kind: EventKind::Put {
                kv: encode_kv(key.as_bytes(), 2, revision, 1, value.as_bytes(), 0),
            },
        }
    }

    #[test]
    fn records_round_trip_and_a_cut_stream_is_refused() {
        let events = vec![
            put(5, 0, "a", "1"),
            put(6, 0, "b", ""),
            Event {
                revision: 6,
                sub: 1,
                received_ms: 7,
                kind: EventKind::Delete { key: b"a".to_vec() },
            },
        ];
        let mut w = RecordWriter::new(Vec::new()).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = RecordReader::new(bytes.as_slice()).unwrap();
        let mut back = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            back.push(e);
        }
        assert_eq!(back, events);
        for cut in [bytes.len() - 1, bytes.len() - 13, MAGIC.len() + 3] {
            let mut r = RecordReader::new(&bytes[..cut]).unwrap();
            let err = loop {
                match r.next_event() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a stream cut at {cut} was taken whole"),
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(err, ReadError::Record(RecordError::Truncated(_))),
                "{err}"
            );
        }
        assert!(matches!(
            RecordReader::new(&b"something else entirely"[..]),
            Err(ReadError::Record(RecordError::NotASegment))
        ));
    }

    #[test]
    fn out_of_order_events_are_refused() {
        let mut w = RecordWriter::new(Vec::new()).unwrap();
        w.write(&put(6, 0, "a", "1")).unwrap();
        w.write(&put(5, 0, "b", "1")).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = RecordReader::new(bytes.as_slice()).unwrap();
        r.next_event().unwrap();
        assert!(matches!(
            r.next_event(),
            Err(ReadError::Record(RecordError::OutOfOrder {
                revision: 5,
                ..
            }))
        ));
    }

    #[test]
    fn bucket_entries_are_etcds_revision_keys() {
        let (k, v) = put(0x0102, 3, "k", "v").bucket_entry();
        assert_eq!(k, b"\0\0\0\0\0\0\x01\x02_\0\0\0\0\0\0\0\x03".to_vec());
        // key=k, create=2, mod=0x102, version=1, value=v
        assert_eq!(
            v,
            b"\x0a\x01k\x10\x02\x18\x82\x02\x20\x01\x2a\x01v".to_vec()
        );
        let tomb = Event {
            revision: 9,
            sub: 0,
            received_ms: 0,
            kind: EventKind::Delete {
                key: b"gone".to_vec(),
            },
        };
        let (k, v) = tomb.bucket_entry();
        assert_eq!(k.len(), 18);
        assert_eq!(k[17], b't');
        assert_eq!(v, b"\x0a\x04gone".to_vec());
    }

    #[test]
    fn keys_sort_by_revision_and_parse_back() {
        assert!(manifest_key(99) < manifest_key(100));
        assert_eq!(manifest_first(&manifest_key(12345)), Some(12345));
        assert_eq!(
            manifest_first("deltas/breaks/00000000000000000001.json"),
            None
        );
        assert_eq!(manifest_first("deltas/12.json"), None);
        assert!(data_key(1, 2, "x").starts_with("deltas/00000000000000000001-"));
    }
}
