//! A streaming, copy-on-write append to the right edge of one top-level bucket of a bbolt file,
//! in bounded memory, in the same transaction as a [`patch`](super::bolt_patch::patch) of small
//! buckets.
//!
//! etcd's `key` bucket is keyed by revision, so the change events that follow a snapshot all
//! sort after the bucket's last key: applying them at their original revisions is an append to
//! the rightmost edge of the bucket's B+tree. The append:
//! 1. reads the bucket's rightmost path (root to rightmost leaf; or its inline page), keeps
//!    every element of it except the links along the path itself, and abandons those pages
//!    (free space: the new meta has no freelist, so bbolt recomputes it);
//! 2. keeps only the right edge in memory: the leaf being filled and one node per branch level.
//!    A node that reaches bbolt's fill target for sequential writes (90% of a page) goes out on
//!    new pages at the high-water mark, and its (first key, page) goes into its parent level;
//!    one element bigger than that target goes alone in its node, on as many pages as it needs;
//! 3. at the end flushes every level bottom-up (a new root level when the top one splits; a
//!    root branch with one child gives way to that child), or writes the bucket inline again
//!    when it still fits bbolt's rule (a single leaf of at most a quarter page, no sub-buckets);
//! 4. then writes the small-bucket edits, the new root leaf, fsyncs, and commits with one meta
//!    page, exactly as `patch` does. On any failure before that meta page the appended pages
//!    are cut off again and the file's visible state is the old one.

use std::collections::BTreeMap;
use std::path::Path;

use super::bolt_patch::{
    apply_edits, branch_elements, bucket_header, corrupt, inline_bucket, io, leaf_entries, lossy,
    node_size, sequence_of, set_bucket, u64_at, write_meta, write_root, BucketEdit, Entry, Out,
    Pages, PatchError, Snapshot,
};
use crate::snapshot::bbolt::{
    PageHeader, BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, LEAF_PAGE,
    MAX_DEPTH, PAGE_HEADER_SIZE,
};

/// bbolt's largest key (`bolt.MaxKeySize`).
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt's largest value (`bolt.MaxValueSize`).
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
/// The most elements a page header can count.
const MAX_COUNT: usize = u16::MAX as usize;

/// Why [`append`] failed: the file (which names itself), or the entries it was given (the
/// first error the iterator yielded, as is; the file is then left unchanged). It is an
/// [`Error`](std::error::Error) when `E` is one.
#[derive(Debug, thiserror::Error)]
pub enum AppendError<E> {
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(
        "the entries to append to the database could not be read; the database was left unchanged"
    )]
    Source(#[source] E),
}

/// What [`append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The new high-water mark (pages) and the txid of the new meta page.
    pub pages: u64,
    pub txid: u64,
    /// Entries appended.
    pub appended: u64,
    /// The bucket's last key now (`None`: the bucket is empty).
    pub last_key: Option<Vec<u8>>,
}

/// Appends `entries` (strictly increasing keys, all after the bucket's last key) to the
/// existing top-level bucket `bucket` of the bbolt file at `path`, and applies `edits` to other
/// top-level buckets (as [`patch`](super::bolt_patch::patch) does), in one transaction. The
/// file must be a sound database with no transaction open on it. Memory stays bounded by the
/// right edge of the tree whatever the number of entries and the size of the bucket.
pub fn append<E, I>(
    path: &Path,
    bucket: &[u8],
    entries: I,
    edits: &BTreeMap<Vec<u8>, BucketEdit>,
) -> Result<Appended, AppendError<E>>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    transact(path, Some((bucket, entries)), edits, Durability::Synced)
}

/// [`append`] into a scratch file: nothing is fsynced, so a crash may leave it unreadable. For
/// a caller that syncs the result itself and discards the file on any failure (a
/// point-in-time fetch, whose base was just streamed in: syncing it twice on the way costs a
/// second per GiB).
pub fn append_unsynced<E, I>(
    path: &Path,
    bucket: &[u8],
    entries: I,
    edits: &BTreeMap<Vec<u8>, BucketEdit>,
) -> Result<Appended, AppendError<E>>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    transact(path, Some((bucket, entries)), edits, Durability::Unsynced)
}

/// Whether a transaction fsyncs its pages before its meta page, and its meta page (bbolt's
/// commit), or leaves both to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    Synced,
    Unsynced,
}

/// One transaction: the optional append, then the edits, the root leaf and the meta page.
pub(super) fn transact<E, I>(
    path: &Path,
    append: Option<(&[u8], I)>,
    edits: &BTreeMap<Vec<u8>, BucketEdit>,
    durability: Durability,
) -> Result<Appended, AppendError<E>>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    let (snapshot, root) = Snapshot::open(path, true)?;
    let len = snapshot
        .file
        .metadata()
        .map_err(|source| io(path, "stat", source))?
        .len();
    let mut out = Out::new(&snapshot.file, path, snapshot.ps, snapshot.meta.pgid);
    out.sync = durability == Durability::Synced;
    let staged = stage(&snapshot, &mut out, root, append, edits);
    let (root_page, appended, last_key) = match staged {
        Ok(done) => done,
        Err(e) => {
            // Nothing names the new pages yet: cut them off again (best effort; they are
            // past the high-water mark, so the file's visible state is the old one anyway).
            let _ = snapshot.file.set_len(len);
            return Err(e);
        }
    };
    let txid = write_meta(
        &snapshot.file,
        path,
        &snapshot.meta,
        snapshot.ps,
        root_page,
        out.next,
        out.sync,
    )?;
    Ok(Appended {
        pages: out.next,
        txid,
        appended,
        last_key,
    })
}

/// Everything before the meta page: the appended pages, the edited buckets and the new root
/// leaf, written and fsynced. Returns the root page, the entries appended and the last key.
#[allow(clippy::type_complexity)]
fn stage<E, I>(
    snapshot: &Snapshot<'_>,
    out: &mut Out<'_>,
    mut root: Vec<Entry>,
    append: Option<(&[u8], I)>,
    edits: &BTreeMap<Vec<u8>, BucketEdit>,
) -> Result<(u64, u64, Option<Vec<u8>>), AppendError<E>>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    let path = snapshot.path;
    let pages = snapshot.pages();
    let mut appended = 0;
    let mut last_key = None;
    if let Some((name, entries)) = append {
        if edits.contains_key(name) {
            return Err(PatchError::AppendAndEdit {
                path: path.to_path_buf(),
                bucket: lossy(name),
            }
            .into());
        }
        let value = match root.iter().find(|e| e.key == name) {
            None => {
                return Err(PatchError::NoBucket {
                    path: path.to_path_buf(),
                    bucket: lossy(name),
                }
                .into())
            }
            Some(e) if e.flags & BUCKET_LEAF_FLAG == 0 => {
                return Err(corrupt(
                    path,
                    format!("top-level key {:?} is a value, not a bucket", lossy(name)),
                )
                .into())
            }
            Some(e) => e.value.clone(),
        };
        let mut edge = Edge::load(&pages, &value, name)?;
        for entry in entries {
            let (key, value) = entry.map_err(AppendError::Source)?;
            edge.push(out, key, value)?;
        }
        appended = edge.appended;
        last_key = edge.last.clone();
        let value = edge.finish(out)?;
        set_bucket(&mut root, name, value);
    }
    apply_edits(&pages, out, &mut root, edits)?;
    let root_page = write_root(out, &root)?;
    Ok((root_page, appended, last_key))
}

/// A branch element: a child's first key and its page.
type Link = (Vec<u8>, u64);

/// The right edge of one bucket's tree while it is being appended to.
struct Edge<'a> {
    path: &'a Path,
    bucket: &'a [u8],
    /// The leaf being filled, and its node size.
    leaf: Vec<Entry>,
    leaf_size: usize,
    /// One node per branch level above the leaf (0: the leaf's parent), each with its size.
    branches: Vec<(Vec<Link>, usize)>,
    /// A node is full when its size would pass this.
    fill: usize,
    /// Bucket header: the sequence is kept.
    sequence: u64,
    /// The bucket's last key so far.
    last: Option<Vec<u8>>,
    appended: u64,
    /// The page size (a bucket of at most a quarter page is written inline).
    ps: usize,
}

impl<'a> Edge<'a> {
    /// Reads the bucket whose header (and inline page) is `value`: its rightmost path is
    /// loaded into the edge, all but the path's own links.
    fn load(pages: &Pages<'a>, value: &[u8], name: &'a [u8]) -> Result<Edge<'a>, PatchError> {
        let path = pages.path;
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(corrupt(
                path,
                format!("bucket {:?} has a {}-byte header", lossy(name), value.len()),
            ));
        }
        let mut edge = Edge {
            path,
            bucket: name,
            leaf: Vec::new(),
            leaf_size: PAGE_HEADER_SIZE,
            branches: Vec::new(),
            fill: pages.ps * 9 / 10,
            sequence: sequence_of(value),
            last: None,
            appended: 0,
            ps: pages.ps,
        };
        let mut id = u64_at(value, 0);
        if id == 0 {
            // Inline: one leaf page inside the value.
            let page = &value[BUCKET_HEADER_SIZE..];
            if page.len() < PAGE_HEADER_SIZE {
                return Err(corrupt(
                    path,
                    format!("inline bucket {:?} is cut short", lossy(name)),
                ));
            }
            let header = PageHeader::parse(page);
            edge.leaf = leaf_entries(page, header.count)
                .map_err(|p| corrupt(path, format!("inline bucket {:?}: {p}", lossy(name))))?;
        } else {
            // Top-down; `branches` is reversed at the end (0: the leaf's parent).
            let mut path_keys: Option<Vec<u8>> = None;
            loop {
                if edge.branches.len() >= MAX_DEPTH {
                    return Err(corrupt(
                        path,
                        format!("the tree is deeper than {MAX_DEPTH} at page {id}"),
                    ));
                }
                let (header, buf) = pages.read(id)?;
                match header.flags {
                    LEAF_PAGE => {
                        edge.leaf = leaf_entries(&buf, header.count)
                            .map_err(|p| corrupt(path, format!("page {id}: {p}")))?;
                        break;
                    }
                    BRANCH_PAGE => {
                        let mut children = branch_elements(&buf, header.count)
                            .map_err(|p| corrupt(path, format!("page {id}: {p}")))?;
                        let Some((key, child)) = children.pop() else {
                            return Err(corrupt(path, format!("branch page {id} is empty")));
                        };
                        let size = PAGE_HEADER_SIZE
                            + children
                                .iter()
                                .map(|(k, _)| ELEMENT_SIZE + k.len())
                                .sum::<usize>();
                        edge.branches.push((children, size));
                        path_keys = Some(key);
                        id = child;
                    }
                    other => {
                        return Err(corrupt(
                            path,
                            format!("page {id} has type {other:#x} where a branch or leaf belongs"),
                        ))
                    }
                }
            }
            edge.branches.reverse();
            // An empty rightmost leaf: the bucket's last key bound is its link's key.
            edge.last = path_keys;
        }
        edge.leaf_size = node_size(&edge.leaf);
        if let Some(e) = edge.leaf.last() {
            edge.last = Some(e.key.clone());
        }
        Ok(edge)
    }

    /// Appends one entry, writing out the nodes it fills.
    fn push(&mut self, out: &mut Out<'_>, key: Vec<u8>, value: Vec<u8>) -> Result<(), PatchError> {
        let bad = |problem| PatchError::BadEntry {
            path: self.path.to_path_buf(),
            bucket: lossy(self.bucket),
            key: short_hex(&key),
            problem,
        };
        if key.is_empty() {
            return Err(bad("bbolt keys cannot be empty"));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(bad("the key is longer than bbolt's 32768 bytes"));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(bad("the value is longer than bbolt's 2 GiB"));
        }
        if let Some(last) = &self.last {
            if key <= *last {
                return Err(PatchError::OutOfOrder {
                    path: self.path.to_path_buf(),
                    bucket: lossy(self.bucket),
                    key: short_hex(&key),
                    after: short_hex(last),
                });
            }
        }
        let size = ELEMENT_SIZE + key.len() + value.len();
        if !self.leaf.is_empty()
            && (self.leaf_size + size > self.fill || self.leaf.len() >= MAX_COUNT)
        {
            self.flush_leaf(out)?;
        }
        self.last = Some(key.clone());
        self.leaf_size += size;
        self.leaf.push(Entry {
            flags: 0,
            key,
            value,
        });
        self.appended += 1;
        Ok(())
    }

    /// Writes the leaf out and links it into its parent level.
    fn flush_leaf(&mut self, out: &mut Out<'_>) -> Result<(), PatchError> {
        let leaf = std::mem::take(&mut self.leaf);
        self.leaf_size = PAGE_HEADER_SIZE;
        let Some(first) = leaf.first().map(|e| e.key.clone()) else {
            return Ok(());
        };
        let id = out.leaf(&leaf)?;
        self.link(out, 0, first, id)
    }

    /// Adds (first key, page) to branch level `level`, writing that level's node out first
    /// when it is full.
    fn link(
        &mut self,
        out: &mut Out<'_>,
        level: usize,
        key: Vec<u8>,
        child: u64,
    ) -> Result<(), PatchError> {
        if level == self.branches.len() {
            self.branches.push((Vec::new(), PAGE_HEADER_SIZE));
        }
        let size = ELEMENT_SIZE + key.len();
        let (node, node_size) = &self.branches[level];
        if !node.is_empty() && (node_size + size > self.fill || node.len() >= MAX_COUNT) {
            let (node, _) =
                std::mem::replace(&mut self.branches[level], (Vec::new(), PAGE_HEADER_SIZE));
            let first = node[0].0.clone();
            let id = out.branch(&node)?;
            self.link(out, level + 1, first, id)?;
        }
        let (node, node_size) = &mut self.branches[level];
        node.push((key, child));
        *node_size += size;
        Ok(())
    }

    /// Flushes every level and returns the bucket's new value (header, and page if inline).
    fn finish(mut self, out: &mut Out<'_>) -> Result<Vec<u8>, PatchError> {
        if self.branches.iter().all(|(node, _)| node.is_empty()) {
            // A single leaf: inline again if bbolt would, else the root on its own pages.
            let nested = self.leaf.iter().any(|e| e.flags & BUCKET_LEAF_FLAG != 0);
            if !nested && self.leaf_size <= self.ps / 4 {
                return Ok(inline_bucket(&self.leaf, self.sequence));
            }
            return Ok(bucket_header(out.leaf(&self.leaf)?, self.sequence));
        }
        self.flush_leaf(out)?;
        let mut level = 0;
        loop {
            let top = level + 1 == self.branches.len();
            let (node, _) =
                std::mem::replace(&mut self.branches[level], (Vec::new(), PAGE_HEADER_SIZE));
            if top {
                let root = match node.as_slice() {
                    // A root branch with one child gives way to the child.
                    [(_, child)] => *child,
                    [] => {
                        return Err(corrupt(
                            self.path,
                            format!("bucket {:?} lost its tree", lossy(self.bucket)),
                        ))
                    }
                    _ => out.branch(&node)?,
                };
                return Ok(bucket_header(root, self.sequence));
            }
            if let Some((first, _)) = node.first() {
                let first = first.clone();
                let id = out.branch(&node)?;
                self.link(out, level + 1, first, id)?;
            }
            level += 1;
        }
    }
}

/// A key in hex, cut short past 64 bytes.
fn short_hex(key: &[u8]) -> String {
    if key.len() > 64 {
        format!("{}… ({} bytes)", hex::encode(&key[..64]), key.len())
    } else {
        hex::encode(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::testdb::{self, revision_key, Bucket, Options};
    use crate::snapshot::{Db, Item};
    use std::convert::Infallible;
    use std::path::PathBuf;

    type Kv = (Vec<u8>, Vec<u8>);

    fn ok(list: Vec<Kv>) -> impl Iterator<Item = Result<Kv, Infallible>> {
        list.into_iter().map(Ok)
    }

    fn write(root: &Bucket, opts: &Options) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, testdb::build(root, opts).bytes).unwrap();
        (dir, path)
    }

    /// Every entry of top-level bucket `name`, in the order the reader walks them, after the
    /// structural check of the whole file.
    fn bucket(path: &Path, name: &str) -> Vec<Kv> {
        let db = Db::open(path).unwrap();
        db.check().unwrap();
        let mut out = Vec::new();
        let mut current = Vec::new();
        db.walk(|item| {
            match item {
                Item::Bucket(b) => current = b.to_vec(),
                Item::Entry { key, value } if current == name.as_bytes() => {
                    out.push((key.to_vec(), value.unwrap().to_vec()))
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap();
        out
    }

    /// The header (root page, sequence) of top-level bucket `name`, and its depth (0: inline,
    /// 1: a root leaf, 2: a branch over leaves, ...) following the rightmost path.
    fn shape(path: &Path, name: &[u8]) -> (u64, u64, usize) {
        let (snapshot, root) = Snapshot::open(path, false).unwrap();
        let e = root.iter().find(|e| e.key == name).unwrap();
        let (mut id, sequence) = (u64_at(&e.value, 0), sequence_of(&e.value));
        let root_page = id;
        let mut depth = 0;
        while id != 0 {
            depth += 1;
            let (header, buf) = snapshot.pages().read(id).unwrap();
            id = if header.flags == BRANCH_PAGE {
                branch_elements(&buf, header.count)
                    .unwrap()
                    .last()
                    .unwrap()
                    .1
            } else {
                0
            };
        }
        (root_page, sequence, depth)
    }

    fn kv(main: u64, sub: u64, value: &str) -> Kv {
        (revision_key(main, sub), value.as_bytes().to_vec())
    }

    fn small_key_bucket(n: u64) -> Bucket {
        let mut root = Bucket::new();
        let key = root.bucket("key");
        key.sequence = 42;
        for i in 1..=n {
            key.put(revision_key(i, 0), format!("v{i}"));
        }
        root.bucket("meta")
            .put("consistent_index", 5u64.to_be_bytes());
        root
    }

    #[test]
    fn an_inline_bucket_stays_inline_when_it_still_fits() {
        let (_dir, path) = write(&small_key_bucket(3), &Options::default());
        assert_eq!(shape(&path, b"key"), (0, 42, 0));
        let mut expected = bucket(&path, "key");
        let new = vec![kv(4, 0, "a"), kv(4, 1, "b"), kv(5, 0, "c")];
        expected.extend(new.clone());
        let done = append(&path, b"key", ok(new), &BTreeMap::new()).unwrap();
        assert_eq!(done.appended, 3);
        assert_eq!(done.txid, Options::default().txid + 1);
        assert_eq!(done.last_key, Some(revision_key(5, 0)));
        assert_eq!(
            shape(&path, b"key"),
            (0, 42, 0),
            "still inline, same sequence"
        );
        assert_eq!(bucket(&path, "key"), expected);
        assert_eq!(Db::open(&path).unwrap().meta().txid, done.txid);
    }

    #[test]
    fn an_inline_bucket_becomes_paged_when_it_grows() {
        let (_dir, path) = write(&small_key_bucket(3), &Options::default());
        let mut expected = bucket(&path, "key");
        let new: Vec<Kv> = (4..400).map(|i| kv(i, 0, &"x".repeat(100))).collect();
        expected.extend(new.clone());
        let mut edits = BTreeMap::new();
        edits.insert(
            b"meta".to_vec(),
            BucketEdit {
                clear: false,
                put: [(b"term".to_vec(), b"7".to_vec())].into_iter().collect(),
            },
        );
        let done = append(&path, b"key", ok(new), &edits).unwrap();
        assert_eq!(done.appended, 396);
        let (root, sequence, depth) = shape(&path, b"key");
        assert!(
            root >= 2 && depth == 2,
            "a branch over leaves: {root} {depth}"
        );
        assert_eq!(sequence, 42);
        assert_eq!(bucket(&path, "key"), expected);
        let meta = bucket(&path, "meta");
        assert_eq!(meta.len(), 2);
        assert_eq!(meta[1], (b"term".to_vec(), b"7".to_vec()));
        assert!(!Db::open(&path).unwrap().meta().has_freelist());
    }

    #[test]
    fn a_deep_tree_takes_100k_entries_with_leaf_and_branch_splits_and_new_root_levels() {
        // A deep tree to start with: 20 entries a leaf, 4 children a branch.
        let root = testdb::etcd_like(2000, 100);
        let opts = Options {
            max_leaf_entries: 20,
            max_branch_entries: 4,
            ..Options::default()
        };
        let (_dir, path) = write(&root, &opts);
        let (_, _, depth_before) = shape(&path, b"key");
        let before = crate::snapshot::status(&path).unwrap();
        assert_eq!(before.revision, 2001);
        let mut expected = bucket(&path, "key");
        // Several sub-revisions in some main revisions, and values of varied sizes.
        let mut new = Vec::new();
        let mut main = 2002;
        while new.len() < 100_000 {
            for sub in 0..(main % 3 + 1) {
                new.push(kv(main, sub, &"v".repeat((main % 40) as usize)));
            }
            main += 1;
        }
        let head = main - 1;
        expected.extend(new.clone());
        let n = new.len() as u64;
        let done = append(&path, b"key", ok(new), &BTreeMap::new()).unwrap();
        assert_eq!(done.appended, n);
        let (_, _, depth) = shape(&path, b"key");
        assert!(depth >= 3, "a branch level over branches: {depth}");
        // The old tree was 4-wide; the new edge is as wide as pages allow, so the tree is
        // not deeper than before plus a level.
        assert!(depth <= depth_before + 1, "{depth} vs {depth_before}");
        let got = bucket(&path, "key");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "every key reads back, in order");
        let after = crate::snapshot::status(&path).unwrap();
        assert_eq!(after.revision, head as i64);
        assert_eq!(after.total_key, before.total_key + n);

        // And again on top of what the append wrote itself.
        let more: Vec<Kv> = (head + 1..head + 5000).map(|i| kv(i, 0, "again")).collect();
        expected.extend(more.clone());
        let again = append(&path, b"key", ok(more), &BTreeMap::new()).unwrap();
        assert_eq!(again.txid, done.txid + 1);
        assert!(bucket(&path, "key") == expected);
    }

    #[test]
    fn a_single_leaf_grows_two_new_root_levels() {
        let opts = Options {
            inline: false,
            ..Options::default()
        };
        let (_dir, path) = write(&small_key_bucket(10), &opts);
        assert_eq!(shape(&path, b"key").2, 1, "a root leaf");
        let mut expected = bucket(&path, "key");
        let new: Vec<Kv> = (11..100_011).map(|i| kv(i, 0, "0123456789")).collect();
        expected.extend(new.clone());
        append(&path, b"key", ok(new), &BTreeMap::new()).unwrap();
        // ~43 bytes an entry: ~1200 leaves, 33 bytes a link: ~11 branches, then one root.
        let (_, sequence, depth) = shape(&path, b"key");
        assert_eq!((sequence, depth), (42, 3));
        assert!(bucket(&path, "key") == expected);
    }

    #[test]
    fn a_value_of_three_pages_gets_a_node_of_its_own_with_overflow() {
        let root = testdb::etcd_like(50, 100);
        let (_dir, path) = write(&root, &Options::default());
        let mut expected = bucket(&path, "key");
        let big: Vec<u8> = (0..3 * 4096 - 200).map(|i| (i % 251) as u8).collect();
        let new = vec![
            kv(60, 0, "before"),
            (revision_key(61, 0), big.clone()),
            kv(62, 0, "after"),
        ];
        expected.extend(new.clone());
        let pages_before = Db::open(&path).unwrap().meta().pgid;
        let done = append(&path, b"key", ok(new), &BTreeMap::new()).unwrap();
        assert_eq!(bucket(&path, "key"), expected);
        // The big value's leaf: 3 pages (overflow 2), found as the middle leaf's page run.
        let (snapshot, _) = Snapshot::open(&path, false).unwrap();
        let mut found = false;
        for id in pages_before..done.pages {
            let Ok((header, buf)) = snapshot.pages().read(id) else {
                continue;
            };
            if header.flags == LEAF_PAGE && header.overflow == 2 {
                let entries = leaf_entries(&buf, header.count).unwrap();
                assert_eq!(entries.len(), 1, "alone in its node");
                assert_eq!(entries[0].value, big);
                found = true;
            }
        }
        assert!(found, "a leaf with two overflow pages");
    }

    #[test]
    fn an_out_of_order_key_is_refused_and_the_file_is_unchanged() {
        let root = testdb::etcd_like(500, 100);
        let (_dir, path) = write(&root, &Options::default());
        let bytes = std::fs::read(&path).unwrap();
        // Many good entries first (pages get written), then one going backwards.
        let mut new: Vec<Kv> = (600..5000).map(|i| kv(i, 0, "x")).collect();
        new.push(kv(4000, 0, "back"));
        let err = append(&path, b"key", ok(new), &BTreeMap::new()).unwrap_err();
        let AppendError::Patch(PatchError::OutOfOrder { key, after, .. }) = &err else {
            panic!("{err}")
        };
        assert_eq!(key, &hex::encode(revision_key(4000, 0)));
        assert_eq!(after, &hex::encode(revision_key(4999, 0)));
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // Not after the bucket's last key (revision 501 is in the file).
        let err = append(&path, b"key", ok(vec![kv(501, 0, "dup")]), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&hex::encode(revision_key(501, 0))) && err.contains("after key"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // A tombstone of the last revision sorts after it: accepted.
        let mut tomb = revision_key(501, 0);
        tomb.push(b't');
        let done = append(
            &path,
            b"key",
            ok(vec![(tomb.clone(), vec![])]),
            &BTreeMap::new(),
        );
        assert_eq!(done.unwrap().last_key, Some(tomb));
    }

    #[test]
    fn a_failing_source_bad_keys_and_bad_buckets_leave_the_file_unchanged() {
        let root = testdb::etcd_like(500, 100);
        let (_dir, path) = write(&root, &Options::default());
        let bytes = std::fs::read(&path).unwrap();
        let source = (600..3000)
            .map(|i| Ok(kv(i, 0, "x")))
            .chain(std::iter::once(Err(std::io::Error::other(
                "segment 3 is bad",
            ))));
        let err = append(&path, b"key", source, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, AppendError::Source(_)), "{err}");
        let chained = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(chained, "segment 3 is bad");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        let empty = append(&path, b"key", ok(vec![(vec![], vec![])]), &BTreeMap::new());
        assert!(matches!(
            empty,
            Err(AppendError::Patch(PatchError::BadEntry { .. }))
        ));
        let long = append(
            &path,
            b"key",
            ok(vec![(vec![0xff; MAX_KEY_SIZE + 1], vec![])]),
            &BTreeMap::new(),
        );
        assert!(matches!(
            long,
            Err(AppendError::Patch(PatchError::BadEntry { .. }))
        ));
        let missing = append(&path, b"nope", ok(vec![kv(1, 0, "x")]), &BTreeMap::new());
        assert!(matches!(
            missing,
            Err(AppendError::Patch(PatchError::NoBucket { .. }))
        ));
        let mut edits = BTreeMap::new();
        edits.insert(b"key".to_vec(), BucketEdit::default());
        let both = append(&path, b"key", ok(vec![kv(999, 0, "x")]), &edits);
        assert!(matches!(
            both,
            Err(AppendError::Patch(PatchError::AppendAndEdit { .. }))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn any_source_error_type_comes_back_as_is() {
        // A plain index (not an `Error`), as a caller that knows which input failed sends it.
        let root = testdb::etcd_like(10, 10);
        let (_dir, path) = write(&root, &Options::default());
        let bytes = std::fs::read(&path).unwrap();
        let source = vec![Ok(kv(100, 0, "x")), Err(3usize)].into_iter();
        match append(&path, b"key", source, &BTreeMap::new()) {
            Err(AppendError::Source(3)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        fn is_error<T: std::error::Error>() {}
        is_error::<AppendError<std::io::Error>>();
    }

    #[test]
    fn appending_nothing_or_into_an_empty_bucket() {
        let root = testdb::etcd_like(0, 0);
        let (_dir, path) = write(&root, &Options::default());
        let done = append(&path, b"key", ok(vec![]), &BTreeMap::new()).unwrap();
        assert_eq!((done.appended, done.last_key), (0, None));
        assert_eq!(shape(&path, b"key").2, 0, "an empty bucket stays inline");
        assert!(bucket(&path, "key").is_empty());
        let new: Vec<Kv> = (2..1000).map(|i| kv(i, 0, "value")).collect();
        append(&path, b"key", ok(new.clone()), &BTreeMap::new()).unwrap();
        assert_eq!(bucket(&path, "key"), new);
        assert_eq!(crate::snapshot::status(&path).unwrap().revision, 999);
    }

    #[test]
    fn a_paged_bucket_with_big_pages_and_no_freelist() {
        let root = testdb::etcd_like(3000, 300);
        let opts = Options {
            page_size: 16384,
            freelist: false,
            inline: false,
            ..Options::default()
        };
        let (_dir, path) = write(&root, &opts);
        let mut expected = bucket(&path, "key");
        let new: Vec<Kv> = (4000..20_000)
            .map(|i| kv(i, 0, &"y".repeat((i % 700) as usize)))
            .collect();
        expected.extend(new.clone());
        append(&path, b"key", ok(new), &BTreeMap::new()).unwrap();
        assert!(bucket(&path, "key") == expected);
    }
}
