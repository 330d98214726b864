//! A tiny protobuf encoder for the handful of etcd/raft messages a restored member needs.
//!
//! etcd's messages are proto2 compiled with gogoproto. Their marshallers write fields in field
//! number order; a field marked `(gogoproto.nullable) = false` is written even when it is zero,
//! an `optional bytes` field is written only when it is set (non-nil in Go, `Some` here), and a
//! `repeated uint64` field is not packed (one tag + varint per element). The message builders
//! below follow exactly those rules, so their output is byte-identical to etcd's `Marshal()`.

/// Wire type 0 (varint).
const VARINT: u8 = 0;
/// Wire type 2 (length-delimited).
const LEN: u8 = 2;

/// Appends `v` as a base-128 varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a field key (tag). Field numbers here are all < 16, but any number works.
fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

/// Appends a varint field (always written, as for gogoproto non-nullable scalars).
pub fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, VARINT);
    put_varint(buf, v);
}

/// Appends a bool field (always written).
pub fn put_bool(buf: &mut Vec<u8>, field: u32, v: bool) {
    put_uint(buf, field, u64::from(v));
}

/// Appends a length-delimited field.
pub fn put_bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_key(buf, field, LEN);
    put_varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

/// Appends an `optional bytes` field only when it is set.
pub fn put_opt_bytes(buf: &mut Vec<u8>, field: u32, v: Option<&[u8]>) {
    if let Some(v) = v {
        put_bytes(buf, field, v);
    }
}

/// `etcdserverpb.Metadata` (api/etcdserverpb/etcdserver.proto): NodeID = 1, ClusterID = 2.
pub fn metadata(node_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(22);
    put_uint(&mut b, 1, node_id);
    put_uint(&mut b, 2, cluster_id);
    b
}

/// `raftpb.ConfState`: repeated voters = 1, learners = 2, voters_outgoing = 3,
/// learners_next = 4 (all unpacked), auto_leave = 5 (always written).
pub fn conf_state(voters: &[u64], learners: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    for &v in voters {
        put_uint(&mut b, 1, v);
    }
    for &l in learners {
        put_uint(&mut b, 2, l);
    }
    put_bool(&mut b, 5, false);
    b
}

/// `raftpb.ConfChange`: ID = 1, Type = 2, NodeID = 3, Context = 4 (optional bytes).
pub fn conf_change(id: u64, change_type: u64, node_id: u64, context: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::new();
    put_uint(&mut b, 1, id);
    put_uint(&mut b, 2, change_type);
    put_uint(&mut b, 3, node_id);
    put_opt_bytes(&mut b, 4, context);
    b
}

/// `raftpb.ConfChangeType.ConfChangeAddNode`.
pub const CONF_CHANGE_ADD_NODE: u64 = 0;
/// `raftpb.EntryType.EntryConfChange`.
pub const ENTRY_CONF_CHANGE: u64 = 1;

/// `raftpb.Entry`: Type = 1, Term = 2, Index = 3, Data = 4 (optional bytes).
pub fn entry(entry_type: u64, term: u64, index: u64, data: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::new();
    put_uint(&mut b, 1, entry_type);
    put_uint(&mut b, 2, term);
    put_uint(&mut b, 3, index);
    put_opt_bytes(&mut b, 4, data);
    b
}

/// `raftpb.HardState`: term = 1, vote = 2, commit = 3.
pub fn hard_state(term: u64, vote: u64, commit: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_uint(&mut b, 1, term);
    put_uint(&mut b, 2, vote);
    put_uint(&mut b, 3, commit);
    b
}

/// `raftpb.Snapshot`: data = 1 (optional bytes), metadata = 2 (non-nullable message
/// `SnapshotMetadata`: conf_state = 1 (non-nullable), index = 2, term = 3).
pub fn raft_snapshot(data: Option<&[u8]>, conf_state: &[u8], index: u64, term: u64) -> Vec<u8> {
    let mut meta = Vec::new();
    put_bytes(&mut meta, 1, conf_state);
    put_uint(&mut meta, 2, index);
    put_uint(&mut meta, 3, term);
    let mut b = Vec::with_capacity(data.map_or(0, <[u8]>::len) + meta.len() + 16);
    put_opt_bytes(&mut b, 1, data);
    put_bytes(&mut b, 2, &meta);
    b
}

/// `walpb.Snapshot`: index = 1, term = 2, conf_state = 3 (nullable; etcd 3.5 writes it on every
/// snapshot record after the initial empty one, 3.4's schema has no such field).
pub fn wal_snapshot(index: u64, term: u64, conf_state: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::new();
    put_uint(&mut b, 1, index);
    put_uint(&mut b, 2, term);
    if let Some(cs) = conf_state {
        put_bytes(&mut b, 3, cs);
    }
    b
}

/// `walpb.Record`: type = 1 (int64), crc = 2 (uint32), data = 3 (optional bytes).
pub fn wal_record(record_type: i64, crc: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(data.map_or(0, <[u8]>::len) + 20);
    // int64 is encoded as the two's-complement u64 varint; WAL types are all small positives.
    put_uint(&mut b, 1, record_type as u64);
    put_uint(&mut b, 2, u64::from(crc));
    put_opt_bytes(&mut b, 3, data);
    b
}

/// `snappb.snapshot`: crc = 1 (uint32), data = 2 (optional bytes).
pub fn snap_file(crc: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(data.len() + 16);
    put_uint(&mut b, 1, u64::from(crc));
    put_bytes(&mut b, 2, data);
    b
}

/// A field value as read back by [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    /// The varint value, if this is one.
    pub fn as_u64(self) -> Option<u64> {
        match self {
            Value::Varint(v) | Value::Fixed64(v) => Some(v),
            Value::Fixed32(v) => Some(u64::from(v)),
            Value::Bytes(_) => None,
        }
    }

    /// The bytes, if this is a length-delimited field.
    pub fn as_bytes(self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// A protobuf message that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed protobuf at byte {offset}: {what}")]
pub struct DecodeError {
    pub offset: usize,
    pub what: &'static str,
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(DecodeError {
            offset: *pos,
            what: "truncated varint",
        })?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(DecodeError {
        offset: *pos,
        what: "varint longer than 10 bytes",
    })
}

/// Splits a message into its fields (field number, value), in wire order.
pub fn decode(buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>, DecodeError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = get_varint(buf, &mut pos)?;
        let field = u32::try_from(key >> 3).map_err(|_| DecodeError {
            offset: start,
            what: "field number too large",
        })?;
        let take = |pos: &mut usize, n: usize| -> Result<&[u8], DecodeError> {
            let end = pos
                .checked_add(n)
                .filter(|&e| e <= buf.len())
                .ok_or(DecodeError {
                    offset: *pos,
                    what: "field runs past the end",
                })?;
            let s = &buf[*pos..end];
            *pos = end;
            Ok(s)
        };
        let value = match key & 7 {
            0 => Value::Varint(get_varint(buf, &mut pos)?),
            1 => Value::Fixed64(u64::from_le_bytes(take(&mut pos, 8)?.try_into().unwrap())),
            2 => {
                let n = get_varint(buf, &mut pos)?;
                let n = usize::try_from(n).map_err(|_| DecodeError {
                    offset: pos,
                    what: "length too large",
                })?;
                Value::Bytes(take(&mut pos, n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap())),
            _ => {
                return Err(DecodeError {
                    offset: start,
                    what: "unsupported wire type",
                })
            }
        };
        out.push((field, value));
    }
    Ok(out)
}

/// The last value of `field` in decoded fields (proto semantics for a non-repeated field).
pub fn field<'a>(fields: &[(u32, Value<'a>)], number: u32) -> Option<Value<'a>> {
    fields
        .iter()
        .rev()
        .find(|(n, _)| *n == number)
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let enc = |v| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(
            enc(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn zero_scalars_are_written_and_unset_bytes_are_not() {
        // walpb.Snapshot{} as etcd's WAL Create writes it: 08 00 10 00.
        assert_eq!(wal_snapshot(0, 0, None), [0x08, 0x00, 0x10, 0x00]);
        // The CRC record: Record{Type: 4, Crc: 0}, no data field.
        assert_eq!(wal_record(4, 0, None), [0x08, 0x04, 0x10, 0x00]);
        // Set but empty bytes are written (Go: non-nil empty slice).
        assert_eq!(
            wal_record(1, 0, Some(b"")),
            [0x08, 0x01, 0x10, 0x00, 0x1a, 0x00]
        );
    }

    #[test]
    fn messages() {
        assert_eq!(metadata(1, 2), [0x08, 0x01, 0x10, 0x02]);
        assert_eq!(
            hard_state(1, 300, 3),
            [0x08, 0x01, 0x10, 0xac, 0x02, 0x18, 0x03]
        );
        assert_eq!(
            conf_state(&[1, 2], &[]),
            [0x08, 0x01, 0x08, 0x02, 0x28, 0x00]
        );
        assert_eq!(
            conf_change(0, CONF_CHANGE_ADD_NODE, 5, Some(b"ab")),
            [0x08, 0x00, 0x10, 0x00, 0x18, 0x05, 0x22, 0x02, b'a', b'b']
        );
        assert_eq!(
            entry(ENTRY_CONF_CHANGE, 1, 2, Some(b"x")),
            [0x08, 0x01, 0x10, 0x01, 0x18, 0x02, 0x22, 0x01, b'x']
        );
        let cs = conf_state(&[7], &[]);
        assert_eq!(
            raft_snapshot(Some(b"d"), &cs, 3, 1),
            [
                0x0a, 0x01, b'd', 0x12, 0x0a, 0x0a, 0x04, 0x08, 0x07, 0x28, 0x00, 0x10, 0x03, 0x18,
                0x01
            ]
        );
        assert_eq!(
            wal_snapshot(3, 1, Some(&cs)),
            [0x08, 0x03, 0x10, 0x01, 0x1a, 0x04, 0x08, 0x07, 0x28, 0x00]
        );
        assert_eq!(
            snap_file(0x01020304, b"z")[..6],
            [0x08, 0x84, 0x86, 0x88, 0x08, 0x12]
        );
    }

    #[test]
    fn decode_round_trip() {
        let cs = conf_state(&[7, u64::MAX], &[]);
        let b = raft_snapshot(Some(b"data"), &cs, 3, 1);
        let f = decode(&b).unwrap();
        assert_eq!(field(&f, 1).unwrap().as_bytes(), Some(&b"data"[..]));
        let meta = decode(field(&f, 2).unwrap().as_bytes().unwrap()).unwrap();
        assert_eq!(field(&meta, 2).unwrap().as_u64(), Some(3));
        assert_eq!(field(&meta, 3).unwrap().as_u64(), Some(1));
        let cs = decode(field(&meta, 1).unwrap().as_bytes().unwrap()).unwrap();
        let voters: Vec<u64> = cs
            .iter()
            .filter(|(n, _)| *n == 1)
            .map(|(_, v)| v.as_u64().unwrap())
            .collect();
        assert_eq!(voters, [7, u64::MAX]);
        assert!(decode(&[0x0a, 0x05, 0x00]).is_err());
        assert!(decode(&[0x80]).is_err());
    }
}
