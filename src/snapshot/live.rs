//! How many keys a restored etcd will serve: the keys whose latest revision in the `key`
//! bucket is a put, not a tombstone. (`Status::total_key` counts every entry of every bucket.)
//!
//! `key` bucket entries are keyed by revision (8-byte main, `_`, 8-byte sub, and a trailing `t`
//! for a tombstone) in revision order; the value is an `mvccpb.KeyValue` whose field 1 is the
//! user key. Keys are remembered by a 64-bit hash, so memory stays small (16 bytes a key).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use super::{Db, Item, SnapshotError};

/// Counts the live keys of a snapshot file.
pub fn live_keys(path: &Path) -> Result<u64, SnapshotError> {
    let db = Db::open(path)?;
    let mut in_key_bucket = false;
    let mut alive: HashMap<u64, bool> = HashMap::new();
    db.walk(|item| {
        match item {
            Item::Bucket(name) => in_key_bucket = name == b"key",
            Item::Entry {
                key,
                value: Some(value),
            } if in_key_bucket => {
                let tombstone = key.len() == 18 && key[17] == b't';
                if let Some(user_key) = protobuf_field_1(value) {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    user_key.hash(&mut h);
                    alive.insert(h.finish(), !tombstone);
                }
            }
            Item::Entry { .. } => {}
            // Only a walk with digests reports whole leaves.
            Item::Leaf { .. } => unreachable!("the plain walk reports every entry"),
        }
        Ok(())
    })?;
    Ok(alive.values().filter(|&&a| a).count() as u64)
}

/// The bytes of field 1 (wire type 2) of a protobuf message, if present.
fn protobuf_field_1(mut msg: &[u8]) -> Option<&[u8]> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    while !msg.is_empty() {
        let tag = varint(&mut msg)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                varint(&mut msg)?;
            }
            1 => msg = msg.get(8..)?,
            5 => msg = msg.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                let data = msg.get(..len)?;
                if field == 1 {
                    return Some(data);
                }
                msg = &msg[len..];
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_key_field() {
        // mvccpb.KeyValue{key: "a/b", create_revision: 2, mod_revision: 3, version: 1, value: "v"}
        let msg = [
            0x0a, 3, b'a', b'/', b'b', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 1, b'v',
        ];
        assert_eq!(protobuf_field_1(&msg), Some(&b"a/b"[..]));
        // Key after another field; truncated input; no key.
        let msg = [0x10, 2, 0x0a, 1, b'k'];
        assert_eq!(protobuf_field_1(&msg), Some(&b"k"[..]));
        assert_eq!(protobuf_field_1(&[0x0a, 5, b'x']), None);
        assert_eq!(protobuf_field_1(&[0x10, 2]), None);
    }
}
