//! A copy-on-write edit of a few small top-level buckets of a bbolt file, in bounded memory.
//!
//! A restored member's database is the snapshot's database with its membership replaced and
//! its meta keys set. Those buckets (`members`, `members_removed`, `meta`) hold a handful of
//! entries whatever the database size, so the edit reads them whole, and writes:
//! 1. each edited bucket anew: inline in its parent when small (bbolt's rule: no sub-buckets
//!    and a node of at most a quarter page), else as a leaf node on new pages;
//! 2. a new root leaf holding every top-level bucket (the untouched ones keep their headers
//!    and inline bytes verbatim, so their pages are shared with the old tree);
//! 3. all of it on pages appended at the high-water mark, then fsynced;
//! 4. last, a meta page with the next txid into the slot bbolt would use (`txid % 2`), which
//!    leaves the current meta page valid until the new one is durable, then fsynced.
//!
//! The new meta has no freelist (`freelist = NO_FREELIST`): bbolt then derives the free pages
//! from what the tree reaches when it opens the file for writing (and writes a freelist if
//! configured to), so the pages the old root and buckets used are simply free space. Nothing
//! else of the file is read or rewritten: the edit costs a few pages of I/O on any size.
//!
//! The transaction itself lives in [`bolt_append`](super::bolt_append), which can also append
//! to a big bucket's right edge in the same commit; [`patch`] is its case with nothing to append.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::bolt_append::{transact, AppendError, Durability};
use crate::snapshot::bbolt::{
    fnv1a64, PageHeader, BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE,
    LEAF_PAGE, META_PAGE, META_SIZE, NO_FREELIST, PAGE_HEADER_SIZE,
};
use crate::snapshot::{Db, Meta, SnapshotError};

/// Deepest branch nesting followed before the file is called corrupt.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}; the database is damaged: take another backup")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{path}: bucket {bucket:?} holds a nested bucket where etcd keeps plain values; is this an etcd database?")]
    Nested { path: PathBuf, bucket: String },
    #[error(
        "{path}: there is no top-level bucket {bucket:?} to append to; is this an etcd database?"
    )]
    NoBucket { path: PathBuf, bucket: String },
    #[error("{path}: bucket {bucket:?} cannot be both appended to and edited in one transaction; edit it in a separate patch")]
    AppendAndEdit { path: PathBuf, bucket: String },
    #[error("{path}: key {key} cannot be appended to bucket {bucket:?} after key {after}: appended keys must be strictly increasing and newer than the bucket's last key; the file is unchanged")]
    OutOfOrder {
        path: PathBuf,
        bucket: String,
        /// Hex.
        key: String,
        /// Hex.
        after: String,
    },
    #[error("{path}: key {key} cannot be appended to bucket {bucket:?}: {problem}; the file is unchanged")]
    BadEntry {
        path: PathBuf,
        bucket: String,
        /// Hex (cut short when long).
        key: String,
        problem: &'static str,
    },
}

/// A small bucket's entries: key -> value.
pub type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// What to do to one top-level bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketEdit {
    /// Remove every entry first.
    pub clear: bool,
    /// Then set these keys (an empty value is a value).
    pub put: Entries,
}

/// One leaf element as stored: flags (0 or [`BUCKET_LEAF_FLAG`]), key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) flags: u32,
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
}

/// What [`patch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    /// The new high-water mark (pages) and the txid of the new meta page.
    pub pages: u64,
    pub txid: u64,
}

/// Applies `edits` (top-level bucket name -> edit; a missing bucket is created) to the bbolt
/// file at `path`, which must be a sound database with no transaction open on it.
pub fn patch(path: &Path, edits: &BTreeMap<Vec<u8>, BucketEdit>) -> Result<Patched, PatchError> {
    type Nothing = std::iter::Empty<Result<(Vec<u8>, Vec<u8>), Infallible>>;
    match transact::<Infallible, Nothing>(path, None, edits, Durability::Synced) {
        Ok(done) => Ok(Patched {
            pages: done.pages,
            txid: done.txid,
        }),
        Err(AppendError::Patch(e)) => Err(e),
        Err(AppendError::Source(never)) => match never {},
    }
}

/// Applies `edits` to the small buckets of `snapshot` whose root leaf holds `root`, writing
/// each edited bucket through `out` and replacing its entry in `root`.
pub(super) fn apply_edits(
    pages: &Pages<'_>,
    out: &mut Out<'_>,
    root: &mut Vec<Entry>,
    edits: &BTreeMap<Vec<u8>, BucketEdit>,
) -> Result<(), PatchError> {
    let (path, ps) = (pages.path, pages.ps);
    for (name, edit) in edits {
        let (mut contents, sequence) = match root.iter().find(|e| &e.key == name) {
            Some(e) if e.flags & BUCKET_LEAF_FLAG == 0 => {
                return Err(corrupt(
                    path,
                    format!("top-level key {:?} is a value, not a bucket", lossy(name)),
                ))
            }
            Some(e) => (pages.bucket_entries(&e.value, name)?, sequence_of(&e.value)),
            None => (Vec::new(), 0),
        };
        let mut map: BTreeMap<Vec<u8>, Vec<u8>> = if edit.clear {
            BTreeMap::new()
        } else {
            contents.drain(..).map(|e| (e.key, e.value)).collect()
        };
        for (k, v) in &edit.put {
            map.insert(k.clone(), v.clone());
        }
        let entries: Vec<Entry> = map
            .into_iter()
            .map(|(key, value)| Entry {
                flags: 0,
                key,
                value,
            })
            .collect();
        let value = if node_size(&entries) <= ps / 4 {
            inline_bucket(&entries, sequence)
        } else {
            bucket_header(out.leaf(&entries)?, sequence)
        };
        set_bucket(root, name, value);
    }
    Ok(())
}

/// Puts (or replaces) the top-level bucket `name` with header-and-inline-page `value` in `root`.
pub(super) fn set_bucket(root: &mut Vec<Entry>, name: &[u8], value: Vec<u8>) {
    let entry = Entry {
        flags: BUCKET_LEAF_FLAG,
        key: name.to_vec(),
        value,
    };
    match root.binary_search_by(|e| e.key.as_slice().cmp(name)) {
        Ok(i) => root[i] = entry,
        Err(i) => root.insert(i, entry),
    }
}

/// The `sequence` field of a bucket header (0 when the header is short; the reader refuses
/// such a header before this matters).
pub(super) fn sequence_of(value: &[u8]) -> u64 {
    if value.len() >= BUCKET_HEADER_SIZE {
        u64_at(value, 8)
    } else {
        0
    }
}

/// An inline bucket's value: its header (root 0) and its leaf page image, unpadded.
pub(super) fn inline_bucket(entries: &[Entry], sequence: u64) -> Vec<u8> {
    let mut v = bucket_header(0, sequence);
    v.extend_from_slice(&node_image(0, LEAF_PAGE, entries, node_size(entries)));
    v
}

/// Writes the new root leaf through `out`, sets the file's length and fsyncs it (unless the
/// transaction is unsynced); returns the
/// root page. Nothing is visible yet: the meta page still names the old root.
pub(super) fn write_root(out: &mut Out<'_>, root: &[Entry]) -> Result<u64, PatchError> {
    if root.len() > usize::from(u16::MAX) {
        return Err(corrupt(
            out.path,
            format!("{} top-level buckets", root.len()),
        ));
    }
    let root_page = out.leaf(root)?;
    out.flush()?;
    out.file
        .set_len(out.next * out.ps as u64)
        .map_err(|source| io(out.path, "extend", source))?;
    if out.sync {
        out.file
            .sync_all()
            .map_err(|source| io(out.path, "fsync", source))?;
    }
    Ok(root_page)
}

/// Writes the meta page for txid `meta.txid + 1` into slot `txid % 2` (the current meta stays
/// valid until this one is durable), naming `root_page` and high-water mark `pgid`, with no
/// freelist; then fsyncs (with `sync`). Returns the new txid.
pub(super) fn write_meta(
    file: &File,
    path: &Path,
    meta: &Meta,
    ps: usize,
    root_page: u64,
    pgid: u64,
    sync: bool,
) -> Result<u64, PatchError> {
    let txid = meta.txid + 1;
    let slot = txid % 2;
    let mut page = vec![0u8; ps];
    page[0..8].copy_from_slice(&slot.to_le_bytes());
    page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
    let m = &mut page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE];
    m[0..4].copy_from_slice(&meta.magic.to_le_bytes());
    m[4..8].copy_from_slice(&meta.version.to_le_bytes());
    m[8..12].copy_from_slice(&meta.page_size.to_le_bytes());
    m[12..16].copy_from_slice(&meta.flags.to_le_bytes());
    m[16..24].copy_from_slice(&root_page.to_le_bytes());
    m[24..32].copy_from_slice(&meta.sequence.to_le_bytes());
    m[32..40].copy_from_slice(&NO_FREELIST.to_le_bytes());
    m[40..48].copy_from_slice(&pgid.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let checksum = fnv1a64(&m[..META_SIZE - 8]);
    m[56..64].copy_from_slice(&checksum.to_le_bytes());
    file.write_all_at(&page, slot * ps as u64)
        .map_err(|source| io(path, "write the meta page of", source))?;
    if sync {
        file.sync_all()
            .map_err(|source| io(path, "fsync", source))?;
    }
    Ok(txid)
}

/// Writes new nodes at the high-water mark, consecutive ones gathered into one positioned
/// write of up to [`Out::BATCH`] bytes ([`Out::flush`] before anything relies on them).
pub(super) struct Out<'a> {
    pub(super) file: &'a File,
    pub(super) path: &'a Path,
    pub(super) ps: usize,
    /// The next free page (the high-water mark so far).
    pub(super) next: u64,
    /// Pages written but not yet handed to the file, starting at page `buf_page`.
    pub(super) buf: Vec<u8>,
    pub(super) buf_page: u64,
    /// Whether the transaction fsyncs (see `bolt_append::Durability`).
    pub(super) sync: bool,
}

impl<'a> Out<'a> {
    /// Writes a leaf node of `entries` on new pages; returns its first page.
    pub(super) fn leaf(&mut self, entries: &[Entry]) -> Result<u64, PatchError> {
        self.write(node_image(0, LEAF_PAGE, entries, node_size(entries)))
    }

    /// Writes a branch node of (first key, child page) pairs on new pages; returns its first
    /// page.
    pub(super) fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> Result<u64, PatchError> {
        self.write(branch_image(children))
    }

    const BATCH: usize = 1 << 20;

    /// An `Out` writing from page `next` on.
    pub(super) fn new(file: &'a File, path: &'a Path, ps: usize, next: u64) -> Out<'a> {
        Out {
            file,
            path,
            ps,
            next,
            buf: Vec::new(),
            buf_page: next,
            sync: true,
        }
    }

    /// Pads a node image to whole pages, sets its page id and overflow count, and writes it.
    fn write(&mut self, mut image: Vec<u8>) -> Result<u64, PatchError> {
        let n = image.len().div_ceil(self.ps).max(1);
        image.resize(n * self.ps, 0);
        let id = self.next;
        image[0..8].copy_from_slice(&id.to_le_bytes());
        image[12..16].copy_from_slice(&((n - 1) as u32).to_le_bytes());
        if self.buf.is_empty() {
            self.buf_page = id;
        }
        self.buf.extend_from_slice(&image);
        self.next += n as u64;
        if self.buf.len() >= Self::BATCH {
            self.flush()?;
        }
        Ok(id)
    }

    /// Hands every gathered page to the file.
    pub(super) fn flush(&mut self) -> Result<(), PatchError> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.buf_page * self.ps as u64)
                .map_err(|source| io(self.path, "write pages to", source))?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// The names of the top-level buckets (reads only the root's pages).
pub fn top_level_buckets(path: &Path) -> Result<Vec<Vec<u8>>, PatchError> {
    let (_, root) = Snapshot::open(path, false)?;
    Ok(root
        .into_iter()
        .filter(|e| e.flags & BUCKET_LEAF_FLAG != 0)
        .map(|e| e.key)
        .collect())
}

/// The entries of the small top-level bucket `name` (`None`: no such bucket), read without
/// walking the rest of the file.
pub fn read_bucket(path: &Path, name: &[u8]) -> Result<Option<Entries>, PatchError> {
    let (snapshot, root) = Snapshot::open(path, false)?;
    match root.iter().find(|e| e.key == name) {
        None => Ok(None),
        Some(e) if e.flags & BUCKET_LEAF_FLAG == 0 => Err(corrupt(
            path,
            format!("top-level key {:?} is a value, not a bucket", lossy(name)),
        )),
        Some(e) => Ok(Some(
            snapshot
                .pages()
                .bucket_entries(&e.value, name)?
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect(),
        )),
    }
}

/// A file opened for reading its root and small buckets.
pub(super) struct Snapshot<'a> {
    pub(super) file: File,
    pub(super) path: &'a Path,
    pub(super) meta: Meta,
    pub(super) ps: usize,
    pub(super) hwm: u64,
}

impl<'a> Snapshot<'a> {
    /// Opens `path` (both meta pages checked; for writing too when `writable`) and reads the
    /// root bucket's entries.
    pub(super) fn open(
        path: &'a Path,
        writable: bool,
    ) -> Result<(Snapshot<'a>, Vec<Entry>), PatchError> {
        let db = Db::open(path)?;
        let meta = *db.meta();
        let snapshot = Snapshot {
            file: OpenOptions::new()
                .read(true)
                .write(writable)
                .open(path)
                .map_err(|source| io(path, "open", source))?,
            path,
            meta,
            ps: db.page_size() as usize,
            hwm: meta.pgid,
        };
        let mut root = Vec::new();
        snapshot.pages().collect_leaves(meta.root, 0, &mut root)?;
        Ok((snapshot, root))
    }

    pub(super) fn pages(&self) -> Pages<'_> {
        Pages {
            file: &self.file,
            path: self.path,
            ps: self.ps,
            hwm: self.hwm,
        }
    }
}

pub(super) struct Pages<'a> {
    pub(super) file: &'a File,
    pub(super) path: &'a Path,
    pub(super) ps: usize,
    pub(super) hwm: u64,
}

impl Pages<'_> {
    /// Page `id` with its overflow pages.
    pub(super) fn read(&self, id: u64) -> Result<(PageHeader, Vec<u8>), PatchError> {
        if id < 2 || id >= self.hwm {
            return Err(corrupt(
                self.path,
                format!(
                    "page {id} is outside the database (high-water mark {})",
                    self.hwm
                ),
            ));
        }
        let mut buf = vec![0u8; self.ps];
        self.read_at(&mut buf, id)?;
        let header = PageHeader::parse(&buf);
        if header.id != id {
            return Err(corrupt(
                self.path,
                format!("page {id} says it is page {}", header.id),
            ));
        }
        if header.overflow > 0 {
            let len = (header.overflow as u64 + 1)
                .checked_mul(self.ps as u64)
                .filter(|l| id * self.ps as u64 + l <= self.hwm * self.ps as u64)
                .ok_or_else(|| {
                    corrupt(
                        self.path,
                        format!("page {id} overflows past the end of the database"),
                    )
                })?;
            buf = vec![0u8; len as usize];
            self.read_at(&mut buf, id)?;
        }
        Ok((header, buf))
    }

    fn read_at(&self, buf: &mut [u8], id: u64) -> Result<(), PatchError> {
        self.file
            .read_exact_at(buf, id * self.ps as u64)
            .map_err(|source| io(self.path, "read", source))
    }

    /// Every leaf element under page `id`, in key order.
    fn collect_leaves(
        &self,
        id: u64,
        depth: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), PatchError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(
                self.path,
                format!("the tree is deeper than {MAX_DEPTH} at page {id}"),
            ));
        }
        let (header, buf) = self.read(id)?;
        match header.flags {
            LEAF_PAGE => {
                out.extend(
                    leaf_entries(&buf, header.count)
                        .map_err(|p| corrupt(self.path, format!("page {id}: {p}")))?,
                );
                Ok(())
            }
            BRANCH_PAGE => {
                for child in branch_children(&buf, header.count)
                    .map_err(|p| corrupt(self.path, format!("page {id}: {p}")))?
                {
                    self.collect_leaves(child, depth + 1, out)?;
                }
                Ok(())
            }
            other => Err(corrupt(
                self.path,
                format!("page {id} has type {other:#x} where a branch or leaf belongs"),
            )),
        }
    }

    /// The entries of the bucket whose value (header, and page when inline) is `value`.
    pub(super) fn bucket_entries(
        &self,
        value: &[u8],
        name: &[u8],
    ) -> Result<Vec<Entry>, PatchError> {
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(corrupt(
                self.path,
                format!("bucket {:?} has a {}-byte header", lossy(name), value.len()),
            ));
        }
        let root = u64_at(value, 0);
        let entries = if root == 0 {
            let page = &value[BUCKET_HEADER_SIZE..];
            if page.len() < PAGE_HEADER_SIZE {
                return Err(corrupt(
                    self.path,
                    format!("inline bucket {:?} is cut short", lossy(name)),
                ));
            }
            let header = PageHeader::parse(page);
            leaf_entries(page, header.count)
                .map_err(|p| corrupt(self.path, format!("inline bucket {:?}: {p}", lossy(name))))?
        } else {
            let mut out = Vec::new();
            self.collect_leaves(root, 1, &mut out)?;
            out
        };
        if entries.iter().any(|e| e.flags & BUCKET_LEAF_FLAG != 0) {
            return Err(PatchError::Nested {
                path: self.path.to_path_buf(),
                bucket: lossy(name),
            });
        }
        Ok(entries)
    }
}

pub(super) fn leaf_entries(page: &[u8], count: u16) -> Result<Vec<Entry>, String> {
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let el = page
            .get(at..at + ELEMENT_SIZE)
            .ok_or_else(|| format!("element {i} is past the page"))?;
        let flags = u32_at(el, 0);
        let pos = u32_at(el, 4) as usize;
        let ksize = u32_at(el, 8) as usize;
        let vsize = u32_at(el, 12) as usize;
        let start = at + pos;
        let key = page
            .get(start..start + ksize)
            .ok_or_else(|| format!("key {i} is past the page"))?;
        let value = page
            .get(start + ksize..start + ksize + vsize)
            .ok_or_else(|| format!("value {i} is past the page"))?;
        out.push(Entry {
            flags,
            key: key.to_vec(),
            value: value.to_vec(),
        });
    }
    Ok(out)
}

fn branch_children(page: &[u8], count: u16) -> Result<Vec<u64>, String> {
    Ok(branch_elements(page, count)?
        .into_iter()
        .map(|(_, child)| child)
        .collect())
}

/// A branch page's elements: (key, child page).
pub(super) fn branch_elements(page: &[u8], count: u16) -> Result<Vec<(Vec<u8>, u64)>, String> {
    (0..count as usize)
        .map(|i| {
            let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let el = page
                .get(at..at + ELEMENT_SIZE)
                .ok_or_else(|| format!("element {i} is past the page"))?;
            let start = at + u32_at(el, 0) as usize;
            let key = page
                .get(start..start + u32_at(el, 4) as usize)
                .ok_or_else(|| format!("key {i} is past the page"))?;
            Ok((key.to_vec(), u64_at(el, 8)))
        })
        .collect()
}

/// Bytes a leaf node of `entries` takes: header, elements, keys and values.
pub(super) fn node_size(entries: &[Entry]) -> usize {
    PAGE_HEADER_SIZE
        + entries
            .iter()
            .map(|e| ELEMENT_SIZE + e.key.len() + e.value.len())
            .sum::<usize>()
}

/// A leaf node image of `len` bytes (zero-padded) with page id `id`; the overflow count is
/// set from `len` by the caller through [`alloc`].
fn node_image(id: u64, flags: u16, entries: &[Entry], len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    let mut data = PAGE_HEADER_SIZE + entries.len() * ELEMENT_SIZE;
    for (i, e) in entries.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        buf[at..at + 4].copy_from_slice(&e.flags.to_le_bytes());
        buf[at + 4..at + 8].copy_from_slice(&((data - at) as u32).to_le_bytes());
        buf[at + 8..at + 12].copy_from_slice(&(e.key.len() as u32).to_le_bytes());
        buf[at + 12..at + 16].copy_from_slice(&(e.value.len() as u32).to_le_bytes());
        buf[data..data + e.key.len()].copy_from_slice(&e.key);
        data += e.key.len();
        buf[data..data + e.value.len()].copy_from_slice(&e.value);
        data += e.value.len();
    }
    buf
}

/// Bytes a branch node of `children` takes: header, elements and keys.
pub(super) fn branch_size(children: &[(Vec<u8>, u64)]) -> usize {
    PAGE_HEADER_SIZE
        + children
            .iter()
            .map(|(k, _)| ELEMENT_SIZE + k.len())
            .sum::<usize>()
}

/// A branch node image (unpadded, page id 0): elements (key offset, key size, child page),
/// then the keys.
fn branch_image(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut buf = vec![0u8; branch_size(children)];
    buf[8..10].copy_from_slice(&BRANCH_PAGE.to_le_bytes());
    buf[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
    let mut data = PAGE_HEADER_SIZE + children.len() * ELEMENT_SIZE;
    for (i, (key, child)) in children.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        buf[at..at + 4].copy_from_slice(&((data - at) as u32).to_le_bytes());
        buf[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        buf[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
        buf[data..data + key.len()].copy_from_slice(key);
        data += key.len();
    }
    buf
}

pub(super) fn bucket_header(root: u64, sequence: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BUCKET_HEADER_SIZE);
    v.extend_from_slice(&root.to_le_bytes());
    v.extend_from_slice(&sequence.to_le_bytes());
    v
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().unwrap())
}

pub(super) fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().unwrap())
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn io(path: &Path, action: &'static str, source: std::io::Error) -> PatchError {
    PatchError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

pub(super) fn corrupt(path: &Path, problem: String) -> PatchError {
    PatchError::Corrupt {
        path: path.to_path_buf(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::testdb::{self, Bucket, Options};

    /// (bucket, clear, puts) per edited bucket.
    type EditList<'a> = [(&'a str, bool, &'a [(&'a str, &'a str)])];

    fn edits(list: &EditList<'_>) -> BTreeMap<Vec<u8>, BucketEdit> {
        list.iter()
            .map(|(name, clear, puts)| {
                (
                    name.as_bytes().to_vec(),
                    BucketEdit {
                        clear: *clear,
                        put: puts
                            .iter()
                            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                            .collect(),
                    },
                )
            })
            .collect()
    }

    /// Every (bucket, key, value) the reader sees, in order.
    fn contents(path: &Path) -> Vec<(String, String, Option<String>)> {
        let db = Db::open(path).unwrap();
        let mut out = Vec::new();
        let mut bucket = String::new();
        db.walk(|item| {
            match item {
                crate::snapshot::Item::Bucket(b) => bucket = lossy(b),
                crate::snapshot::Item::Entry { key, value } => {
                    out.push((bucket.clone(), lossy(key), value.map(lossy)))
                }
                crate::snapshot::Item::Leaf { .. } => unreachable!(),
            }
            Ok(())
        })
        .unwrap();
        out
    }

    fn fixture(opts: &Options) -> (tempfile::TempDir, PathBuf) {
        let mut root = Bucket::new();
        let key = root.bucket("key");
        for i in 0..2000u32 {
            key.put(format!("{i:08}"), vec![b'v'; 100]);
        }
        root.bucket("members").put("aa", "old-a").put("bb", "old-b");
        root.bucket("members_removed").put("cc", "removed");
        root.bucket("meta")
            .put("consistent_index", [0u8, 0, 0, 0, 0, 0, 0, 9]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, testdb::build(&root, opts).bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn edits_replace_small_buckets_and_keep_the_rest() {
        for opts in [
            Options::default(),
            Options {
                inline: false,
                ..Options::default()
            },
            Options {
                freelist: false,
                max_leaf_entries: 50,
                ..Options::default()
            },
        ] {
            let (_dir, path) = fixture(&opts);
            let before = contents(&path);
            let patched = patch(
                &path,
                &edits(&[
                    ("members", true, &[("1234", "{\"id\":1}")]),
                    ("members_removed", true, &[]),
                    ("meta", false, &[("term", "t"), ("consistent_index", "ci")]),
                    ("brand_new", false, &[("k", "")]),
                ]),
            )
            .unwrap();
            assert_eq!(patched.txid, opts.txid + 1);
            let db = Db::open(&path).unwrap();
            assert_eq!(db.meta().txid, opts.txid + 1);
            assert!(!db.meta().has_freelist());
            db.check().unwrap();
            let after = contents(&path);
            let keys_before: Vec<_> = before.iter().filter(|e| e.0 == "key").collect();
            let keys_after: Vec<_> = after.iter().filter(|e| e.0 == "key").collect();
            assert_eq!(keys_before, keys_after);
            let of = |b: &str| -> Vec<(String, Option<String>)> {
                after
                    .iter()
                    .filter(|e| e.0 == b)
                    .map(|e| (e.1.clone(), e.2.clone()))
                    .collect()
            };
            assert_eq!(
                of("members"),
                vec![("1234".into(), Some("{\"id\":1}".into()))]
            );
            assert_eq!(of("members_removed"), vec![]);
            assert_eq!(
                of("meta"),
                vec![
                    ("consistent_index".into(), Some("ci".into())),
                    ("term".into(), Some("t".into()))
                ]
            );
            assert_eq!(of("brand_new"), vec![("k".into(), Some(String::new()))]);
            let meta = read_bucket(&path, b"meta").unwrap().unwrap();
            assert_eq!(meta.get(b"term".as_slice()), Some(&b"t".to_vec()));
            assert_eq!(read_bucket(&path, b"nope").unwrap(), None);
        }
    }

    #[test]
    fn a_bucket_too_big_to_inline_gets_its_own_pages() {
        let (_dir, path) = fixture(&Options::default());
        let big: Vec<(String, String)> = (0..40)
            .map(|i| (format!("m{i:03}"), "x".repeat(200)))
            .collect();
        let mut e = BTreeMap::new();
        e.insert(
            b"members".to_vec(),
            BucketEdit {
                clear: true,
                put: big
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            },
        );
        let before = Db::open(&path).unwrap().meta().pgid;
        patch(&path, &e).unwrap();
        let db = Db::open(&path).unwrap();
        // 40 * (16 + 4 + 200) bytes: a leaf with overflow, then the root leaf.
        assert_eq!(db.meta().pgid, before + 3 + 1);
        db.check().unwrap();
        let members: Vec<_> = contents(&path)
            .into_iter()
            .filter(|e| e.0 == "members")
            .collect();
        assert_eq!(members.len(), 40);
    }

    #[test]
    fn a_corrupt_root_is_refused_and_the_file_is_not_changed() {
        let (_dir, path) = fixture(&Options::default());
        let db = Db::open(&path).unwrap();
        let root = db.meta().root;
        let ps = db.page_size() as u64;
        drop(db);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(root * ps) as usize + 8] = 0x40; // an unknown page type
        std::fs::write(&path, &bytes).unwrap();
        let err = patch(&path, &edits(&[("meta", false, &[("k", "v")])])).unwrap_err();
        assert!(err.to_string().contains("has type 0x40"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
