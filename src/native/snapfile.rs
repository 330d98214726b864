//! The `member/snap/<term>-<index>.snap` file of a freshly restored member.
//!
//! Format (etcd `server/etcdserver/api/snap/snapshotter.go`, `snap/snappb/snap.proto`):
//! the file is a `snappb.snapshot{crc, data}` where `data` is a marshalled `raftpb.Snapshot`
//! and `crc` is CRC-32C (Castagnoli) of `data` starting from 0. The file name is
//! `%016x-%016x.snap` of the snapshot's term and index.
//!
//! The raft snapshot's `data` is the v2 store as `v2store.Save()` writes it: Go's
//! `json.Marshal` of the store (`Root`, `WatcherHub`, `CurrentIndex`, `Stats`,
//! `CurrentVersion`), after the restore tool created `/0/members/<id hex>/raftAttributes` for
//! every member in ascending id order (store indexes 1..=n). Go marshals struct fields in
//! declaration order and map keys sorted, so the JSON is deterministic and is produced here
//! byte for byte.

use super::membership::{go_json_string, id_hex, Membership};
use super::pb;

/// The capacity of the v2 store's event history (`newWatchHub(1000)`).
const EVENT_HISTORY_CAPACITY: usize = 1000;
/// Go's zero `time.Time` as `encoding/json` writes it (v2store.Permanent).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `%016x-%016x.snap`.
pub fn snap_file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

fn node_json(out: &mut String, path: &str, index: u64, value: &str, children: Option<&str>) {
    out.push_str("{\"Path\":");
    go_json_string(out, path);
    out.push_str(&format!(
        ",\"CreatedIndex\":{index},\"ModifiedIndex\":{index},\"ExpireTime\":\"{ZERO_TIME}\",\"Value\":"
    ));
    go_json_string(out, value);
    out.push_str(",\"Children\":");
    match children {
        Some(c) => out.push_str(c),
        None => out.push_str("null"),
    }
    out.push('}');
}

/// The v2 store JSON `etcdutl snapshot restore` / `etcdctl snapshot restore` writes into the
/// `.snap` file for this membership.
pub fn v2_store_json(membership: &Membership) -> Vec<u8> {
    let n = membership.members.len();
    // Store index of each member: its position in ascending-id order, from 1.
    let indexed: Vec<(u64, String, String)> = membership
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| ((i + 1) as u64, id_hex(m.id), m.raft_attributes_json()))
        .collect();

    // /0/members children, keyed by hex id, sorted as strings (Go map key order).
    let mut by_key: Vec<&(u64, String, String)> = indexed.iter().collect();
    by_key.sort_by(|a, b| a.1.cmp(&b.1));
    let mut members_children = String::from("{");
    for (i, (index, hex, attrs)) in by_key.iter().enumerate() {
        if i > 0 {
            members_children.push(',');
        }
        go_json_string(&mut members_children, hex);
        members_children.push(':');
        let dir = format!("/0/members/{hex}");
        let mut leaf = String::from("{\"raftAttributes\":");
        node_json(
            &mut leaf,
            &format!("{dir}/raftAttributes"),
            *index,
            attrs,
            None,
        );
        leaf.push('}');
        node_json(&mut members_children, &dir, *index, "", Some(&leaf));
    }
    members_children.push('}');

    let mut zero_children = String::from("{");
    if n > 0 {
        zero_children.push_str("\"members\":");
        // Created (by the first member's create) at index 1.
        node_json(
            &mut zero_children,
            "/0/members",
            1,
            "",
            Some(&members_children),
        );
    }
    zero_children.push('}');

    let mut root_children = String::from("{\"0\":");
    node_json(&mut root_children, "/0", 0, "", Some(&zero_children));
    root_children.push_str(",\"1\":");
    node_json(&mut root_children, "/1", 0, "", Some("{}"));
    root_children.push('}');

    let mut out = String::with_capacity(8192 + 400 * n);
    out.push_str("{\"Root\":");
    node_json(&mut out, "/", 0, "", Some(&root_children));

    // Event history: a ring of 1000 slots; event k (1-based) lands in slot (k-1) % 1000.
    let mut slots: Vec<Option<String>> = vec![None; EVENT_HISTORY_CAPACITY];
    for (index, hex, attrs) in &indexed {
        let mut e = String::from("{\"action\":\"create\",\"node\":{\"key\":");
        go_json_string(&mut e, &format!("/0/members/{hex}/raftAttributes"));
        e.push_str(",\"value\":");
        go_json_string(&mut e, attrs);
        e.push_str(&format!(
            ",\"modifiedIndex\":{index},\"createdIndex\":{index}}}}}"
        ));
        slots[((*index - 1) as usize) % EVENT_HISTORY_CAPACITY] = Some(e);
    }
    let size = n.min(EVENT_HISTORY_CAPACITY);
    let back = n % EVENT_HISTORY_CAPACITY;
    let front = if n >= EVENT_HISTORY_CAPACITY { back } else { 0 };
    let start_index = if n == 0 { 0 } else { (n - size + 1) as u64 };
    out.push_str(",\"WatcherHub\":{\"EventHistory\":{\"Queue\":{\"Events\":[");
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(slot.as_deref().unwrap_or("null"));
    }
    out.push_str(&format!(
        "],\"Size\":{size},\"Front\":{front},\"Back\":{back},\"Capacity\":{EVENT_HISTORY_CAPACITY}}},\"StartIndex\":{start_index},\"LastIndex\":{n}}}}}"
    ));
    out.push_str(&format!(",\"CurrentIndex\":{n}"));
    out.push_str(&format!(
        ",\"Stats\":{{\"getsSuccess\":0,\"getsFail\":0,\"setsSuccess\":0,\"setsFail\":0,\"deleteSuccess\":0,\"deleteFail\":0,\"updateSuccess\":0,\"updateFail\":0,\"createSuccess\":{n},\"createFail\":0,\"compareAndSwapSuccess\":0,\"compareAndSwapFail\":0,\"compareAndDeleteSuccess\":0,\"compareAndDeleteFail\":0,\"expireCount\":0,\"watchers\":0}}"
    ));
    out.push_str(",\"CurrentVersion\":2}");
    out.into_bytes()
}

/// The marshalled `raftpb.Snapshot` for this membership at `index`/`term` (voters = all
/// members, ascending).
pub fn raft_snapshot(membership: &Membership, index: u64, term: u64) -> Vec<u8> {
    let data = v2_store_json(membership);
    let cs = pb::conf_state(&membership.ids(), &[]);
    pb::raft_snapshot(Some(&data), &cs, index, term)
}

/// The whole `.snap` file around a marshalled `raftpb.Snapshot`.
pub fn snap_file_bytes(raft_snapshot: &[u8]) -> Vec<u8> {
    pb::snap_file(crc32c::crc32c(raft_snapshot), raft_snapshot)
}

/// A `.snap` file that could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapDecodeError {
    #[error("the .snap file is not a snappb.snapshot: {0}")]
    Protobuf(#[from] pb::DecodeError),
    #[error("the .snap file has no data field")]
    NoData,
    #[error("the .snap file's CRC is {stored:#010x} but its data has CRC {computed:#010x}: the file is corrupt")]
    Crc { stored: u32, computed: u32 },
}

/// Checks a `.snap` file's CRC and returns the marshalled `raftpb.Snapshot` inside it.
pub fn read_snap_file(bytes: &[u8]) -> Result<&[u8], SnapDecodeError> {
    let fields = pb::decode(bytes)?;
    let data = pb::field(&fields, 2)
        .and_then(|v| v.as_bytes())
        .ok_or(SnapDecodeError::NoData)?;
    let stored = pb::field(&fields, 1).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    let computed = crc32c::crc32c(data);
    if stored != computed {
        return Err(SnapDecodeError::Crc { stored, computed });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name() {
        assert_eq!(
            snap_file_name(1, 3),
            "0000000000000001-0000000000000003.snap"
        );
    }

    #[test]
    fn store_json_shape() {
        let m = Membership::from_flags(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
            "tok",
        )
        .unwrap();
        let json = v2_store_json(&m);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["CurrentIndex"], 3);
        assert_eq!(v["CurrentVersion"], 2);
        assert_eq!(v["Stats"]["createSuccess"], 3);
        let q = &v["WatcherHub"]["EventHistory"]["Queue"];
        assert_eq!(q["Events"].as_array().unwrap().len(), 1000);
        assert_eq!(q["Size"], 3);
        assert_eq!(q["Back"], 3);
        assert_eq!(v["WatcherHub"]["EventHistory"]["StartIndex"], 1);
        for (i, member) in m.members.iter().enumerate() {
            let hex = id_hex(member.id);
            let node = &v["Root"]["Children"]["0"]["Children"]["members"]["Children"][&hex];
            assert_eq!(node["CreatedIndex"], i as u64 + 1);
            let leaf = &node["Children"]["raftAttributes"];
            assert_eq!(leaf["Value"], member.raft_attributes_json());
            assert!(leaf["Children"].is_null());
            assert_eq!(
                q["Events"][i]["node"]["key"],
                format!("/0/members/{hex}/raftAttributes")
            );
        }
        assert_eq!(
            v["Root"]["Children"]["1"]["Children"],
            serde_json::json!({})
        );
    }

    #[test]
    fn snap_round_trip_and_crc() {
        let m = Membership::from_flags("a=http://127.0.0.1:1", "tok").unwrap();
        let rs = raft_snapshot(&m, 1, 1);
        let file = snap_file_bytes(&rs);
        assert_eq!(read_snap_file(&file).unwrap(), &rs[..]);
        let mut bad = file.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read_snap_file(&bad),
            Err(SnapDecodeError::Crc { .. })
        ));
    }
}
