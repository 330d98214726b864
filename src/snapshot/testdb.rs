//! A tiny bbolt *writer*, for test fixtures only: valid files with any buckets, keys and values
//! (nested and inline buckets, overflow pages, multi-level branch pages, a freelist or none), so
//! tests need no etcd. Not for production use: it builds the whole file in memory.
//!
//! Pages are laid out bottom-up (children before parents, nested buckets before the leaf that
//! holds them), then leaked pages, free pages and the freelist; meta page 0 gets `txid` and
//! meta page 1 `txid - 1`, as bbolt's `Tx.WriteTo` (and so etcd's snapshot) writes them.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::bbolt::{
    fnv1a64, BRANCH_PAGE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, FREELIST_PAGE, LEAF_PAGE, MAGIC,
    META_PAGE, NO_FREELIST, PAGE_HEADER_SIZE, VERSION,
};

/// A bucket entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Value(Vec<u8>),
    Bucket(Bucket),
}

/// A bucket: entries in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub entries: BTreeMap<Vec<u8>, Node>,
    pub sequence: u64,
}

impl Bucket {
    pub fn new() -> Bucket {
        Bucket::default()
    }

    /// Sets a key; keys must not be empty.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Bucket {
        let key = key.into();
        assert!(!key.is_empty(), "bbolt keys are never empty");
        self.entries.insert(key, Node::Value(value.into()));
        self
    }

    /// The nested bucket `name`, created empty if missing.
    pub fn bucket(&mut self, name: impl Into<Vec<u8>>) -> &mut Bucket {
        let name = name.into();
        assert!(!name.is_empty(), "bbolt bucket names are never empty");
        let node = self
            .entries
            .entry(name)
            .or_insert_with(|| Node::Bucket(Bucket::new()));
        match node {
            Node::Bucket(b) => b,
            Node::Value(_) => panic!("a value is in the way of a bucket"),
        }
    }
}

/// How to lay the file out.
#[derive(Debug, Clone)]
pub struct Options {
    pub page_size: u32,
    /// At most this many entries per leaf page (to force deep trees with few keys).
    pub max_leaf_entries: usize,
    /// At most this many children per branch page.
    pub max_branch_entries: usize,
    /// Inline small buckets without sub-buckets, as bbolt does (size <= page_size / 4).
    pub inline: bool,
    /// Write a freelist page; otherwise the meta's freelist is `NO_FREELIST`.
    pub freelist: bool,
    /// Extra pages listed in the freelist.
    pub free_pages: u64,
    /// Extra pages neither in use nor free (a corrupt file when there is a freelist).
    pub leaked_pages: u64,
    pub txid: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            page_size: 4096,
            max_leaf_entries: usize::MAX,
            max_branch_entries: usize::MAX,
            inline: true,
            freelist: true,
            free_pages: 0,
            leaked_pages: 0,
            txid: 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Branch,
    Leaf,
    Freelist,
    Free,
    Leaked,
}

/// Where a page went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageInfo {
    pub id: u64,
    pub kind: PageKind,
    pub overflow: u32,
    pub count: u16,
    /// Names from the root bucket down to the bucket the page belongs to (empty: the root).
    pub bucket: Vec<Vec<u8>>,
    /// 0 for leaves, 1 for their parents, and so on.
    pub level: usize,
}

/// A built file.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub pages: Vec<PageInfo>,
    pub page_size: u32,
    /// High-water mark (pages in the file).
    pub hwm: u64,
    pub root: u64,
}

impl Built {
    /// Byte offset of page `id`.
    pub fn offset(&self, id: u64) -> usize {
        id as usize * self.page_size as usize
    }

    /// Pages of `kind` in the bucket named by `path`.
    pub fn pages_of<'a>(
        &'a self,
        kind: PageKind,
        path: &'a [&'a [u8]],
    ) -> impl Iterator<Item = &'a PageInfo> + 'a {
        self.pages.iter().filter(move |p| {
            p.kind == kind
                && p.bucket.len() == path.len()
                && p.bucket.iter().zip(path).all(|(a, b)| a.as_slice() == *b)
        })
    }

    /// The file as `etcdctl snapshot save` would write it: the database and its SHA-256.
    pub fn with_trailer(&self) -> Vec<u8> {
        with_trailer(&self.bytes)
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.bytes).unwrap();
    }

    pub fn write_with_trailer(&self, path: &Path) {
        std::fs::write(path, self.with_trailer()).unwrap();
    }
}

/// `db` followed by its SHA-256.
pub fn with_trailer(db: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(db.len() + 32);
    out.extend_from_slice(db);
    out.extend_from_slice(&Sha256::digest(db));
    out
}

/// Builds a bbolt file whose root bucket is `root` (every top-level entry should be a bucket,
/// as bbolt requires; values are written anyway, for corruption tests).
pub fn build(root: &Bucket, opts: &Options) -> Built {
    assert!(opts.page_size.is_power_of_two() && opts.page_size >= 512);
    assert!(opts.max_leaf_entries >= 1 && opts.max_branch_entries >= 2);
    let mut w = Writer {
        opts,
        ps: opts.page_size as usize,
        bytes: vec![0; 2 * opts.page_size as usize],
        next: 2,
        pages: Vec::new(),
    };
    let items = w.items(root, &[]);
    let root_page = w.tree(&items, &[]);
    for _ in 0..opts.leaked_pages {
        let id = w.zero_page();
        w.pages.push(info(id, PageKind::Leaked, 0, 0, &[], 0));
    }
    let mut free = Vec::new();
    for _ in 0..opts.free_pages {
        let id = w.zero_page();
        free.push(id);
        w.pages.push(info(id, PageKind::Free, 0, 0, &[], 0));
    }
    let freelist = if opts.freelist {
        let big = free.len() >= 0xFFFF;
        let mut image = vec![0u8; PAGE_HEADER_SIZE + usize::from(big) * 8 + free.len() * 8];
        let count = if big { 0xFFFF } else { free.len() as u16 };
        let mut off = PAGE_HEADER_SIZE;
        if big {
            image[off..off + 8].copy_from_slice(&(free.len() as u64).to_le_bytes());
            off += 8;
        }
        for id in &free {
            image[off..off + 8].copy_from_slice(&id.to_le_bytes());
            off += 8;
        }
        w.alloc(image, FREELIST_PAGE, count, PageKind::Freelist, &[], 0)
    } else {
        NO_FREELIST
    };
    let hwm = w.next;
    w.bytes.resize(hwm as usize * w.ps, 0);
    for (id, txid) in [(0u64, opts.txid), (1, opts.txid - 1)] {
        let page = &mut w.bytes[id as usize * w.ps..][..w.ps];
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
        let m = &mut page[PAGE_HEADER_SIZE..];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&opts.page_size.to_le_bytes());
        m[12..16].copy_from_slice(&0u32.to_le_bytes());
        m[16..24].copy_from_slice(&root_page.to_le_bytes());
        m[24..32].copy_from_slice(&root.sequence.to_le_bytes());
        m[32..40].copy_from_slice(&freelist.to_le_bytes());
        m[40..48].copy_from_slice(&hwm.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&m[..56]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
    }
    Built {
        bytes: w.bytes,
        pages: w.pages,
        page_size: opts.page_size,
        hwm,
        root: root_page,
    }
}

/// Rewrites the checksum of meta page `id` of `bytes` after a test edited it.
pub fn reseal_meta(bytes: &mut [u8], page_size: u32, id: u64) {
    let m = &mut bytes[id as usize * page_size as usize + PAGE_HEADER_SIZE..][..64];
    let sum = fnv1a64(&m[..56]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
}

/// An etcd-shaped root bucket: etcd's top-level buckets, `keys` revision keys in bucket `key`
/// (revisions 2..=keys+1, values of `value_len` bytes) and a consistent index in `meta`.
pub fn etcd_like(keys: u64, value_len: usize) -> Bucket {
    let mut root = Bucket::new();
    for name in [
        "alarm",
        "auth",
        "authRoles",
        "authUsers",
        "cluster",
        "key",
        "lease",
        "members",
        "members_removed",
        "meta",
    ] {
        root.bucket(name);
    }
    root.bucket("auth").put("authEnabled", [0u8]);
    root.bucket("cluster").put("clusterVersion", "3.5.0");
    let key = root.bucket("key");
    for i in 0..keys {
        key.put(revision_key(i + 2, 0), fixture_value(i, value_len));
    }
    let meta = root.bucket("meta");
    meta.put("consistent_index", (keys + 10).to_be_bytes());
    meta.put("term", 2u64.to_be_bytes());
    root
}

/// etcd's revision key: main and sub revision, big-endian, joined by `_`.
pub fn revision_key(main: u64, sub: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

fn fixture_value(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i as usize).wrapping_mul(131).wrapping_add(j * 7) as u8)
        .collect()
}

fn info(
    id: u64,
    kind: PageKind,
    overflow: u32,
    count: u16,
    path: &[Vec<u8>],
    level: usize,
) -> PageInfo {
    PageInfo {
        id,
        kind,
        overflow,
        count,
        bucket: path.to_vec(),
        level,
    }
}

/// A leaf item: flags, key, value.
type LeafItem = (u32, Vec<u8>, Vec<u8>);

struct Writer<'o> {
    opts: &'o Options,
    ps: usize,
    bytes: Vec<u8>,
    next: u64,
    pages: Vec<PageInfo>,
}

impl Writer<'_> {
    /// Writes `image` (a page run, header included, id and overflow filled in here) at the next
    /// free page.
    fn alloc(
        &mut self,
        mut image: Vec<u8>,
        flags: u16,
        count: u16,
        kind: PageKind,
        path: &[Vec<u8>],
        level: usize,
    ) -> u64 {
        let pages = image.len().div_ceil(self.ps).max(1);
        let id = self.next;
        self.next += pages as u64;
        image[0..8].copy_from_slice(&id.to_le_bytes());
        image[8..10].copy_from_slice(&flags.to_le_bytes());
        image[10..12].copy_from_slice(&count.to_le_bytes());
        image[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        let start = id as usize * self.ps;
        self.bytes.resize(start + pages * self.ps, 0);
        self.bytes[start..start + image.len()].copy_from_slice(&image);
        self.pages
            .push(info(id, kind, (pages - 1) as u32, count, path, level));
        id
    }

    fn zero_page(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        self.bytes.resize(self.next as usize * self.ps, 0);
        id
    }

    /// The leaf items of a bucket; nested buckets are written (or inlined) first.
    fn items(&mut self, bucket: &Bucket, path: &[Vec<u8>]) -> Vec<LeafItem> {
        bucket
            .entries
            .iter()
            .map(|(k, node)| match node {
                Node::Value(v) => (0, k.clone(), v.clone()),
                Node::Bucket(b) => {
                    let mut inner = path.to_vec();
                    inner.push(k.clone());
                    (BUCKET_LEAF_FLAG, k.clone(), self.bucket_value(b, &inner))
                }
            })
            .collect()
    }

    /// A bucket's value in its parent: its header, and its page when inline.
    fn bucket_value(&mut self, bucket: &Bucket, path: &[Vec<u8>]) -> Vec<u8> {
        let items = self.items(bucket, path);
        let size = leaf_size(&items);
        let mut value = Vec::new();
        if self.opts.inline && items.iter().all(|i| i.0 == 0) && size <= self.ps / 4 {
            value.extend_from_slice(&0u64.to_le_bytes());
            value.extend_from_slice(&bucket.sequence.to_le_bytes());
            let mut page = leaf_image(&items);
            page[8..10].copy_from_slice(&LEAF_PAGE.to_le_bytes());
            page[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
            value.extend_from_slice(&page);
        } else {
            let root = self.tree(&items, path);
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&bucket.sequence.to_le_bytes());
        }
        value
    }

    /// Writes a B+tree holding `items`; returns its root page.
    fn tree(&mut self, items: &[LeafItem], path: &[Vec<u8>]) -> u64 {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut start = 0;
        while start < items.len() || level.is_empty() {
            let mut end = start;
            let mut size = PAGE_HEADER_SIZE;
            while end < items.len() && end - start < self.opts.max_leaf_entries {
                let item = ELEMENT_SIZE + items[end].1.len() + items[end].2.len();
                if end > start && size + item > self.ps {
                    break;
                }
                size += item;
                end += 1;
            }
            let chunk = &items[start..end];
            let id = self.alloc(
                leaf_image(chunk),
                LEAF_PAGE,
                chunk.len() as u16,
                PageKind::Leaf,
                path,
                0,
            );
            level.push((chunk.first().map(|i| i.1.clone()).unwrap_or_default(), id));
            start = end;
        }
        let mut height = 1;
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut start = 0;
            while start < level.len() {
                let mut end = start;
                let mut size = PAGE_HEADER_SIZE;
                while end < level.len() && end - start < self.opts.max_branch_entries {
                    let item = ELEMENT_SIZE + level[end].0.len();
                    if end > start && size + item > self.ps {
                        break;
                    }
                    size += item;
                    end += 1;
                }
                let chunk = &level[start..end];
                let id = self.alloc(
                    branch_image(chunk),
                    BRANCH_PAGE,
                    chunk.len() as u16,
                    PageKind::Branch,
                    path,
                    height,
                );
                up.push((chunk[0].0.clone(), id));
                start = end;
            }
            level = up;
            height += 1;
        }
        level[0].1
    }
}

fn leaf_size(items: &[LeafItem]) -> usize {
    PAGE_HEADER_SIZE
        + items
            .iter()
            .map(|(_, k, v)| ELEMENT_SIZE + k.len() + v.len())
            .sum::<usize>()
}

/// A leaf page image (header left for `alloc`, or the caller for inline pages).
fn leaf_image(items: &[LeafItem]) -> Vec<u8> {
    let mut page = vec![0u8; leaf_size(items)];
    let mut data = PAGE_HEADER_SIZE + items.len() * ELEMENT_SIZE;
    for (i, (flags, k, v)) in items.iter().enumerate() {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        page[e..e + 4].copy_from_slice(&flags.to_le_bytes());
        page[e + 4..e + 8].copy_from_slice(&((data - e) as u32).to_le_bytes());
        page[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
        page[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
        page[data..data + k.len()].copy_from_slice(k);
        data += k.len();
        page[data..data + v.len()].copy_from_slice(v);
        data += v.len();
    }
    page
}

fn branch_image(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let size = PAGE_HEADER_SIZE
        + children
            .iter()
            .map(|(k, _)| ELEMENT_SIZE + k.len())
            .sum::<usize>();
    let mut page = vec![0u8; size];
    let mut data = PAGE_HEADER_SIZE + children.len() * ELEMENT_SIZE;
    for (i, (k, child)) in children.iter().enumerate() {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        page[e..e + 4].copy_from_slice(&((data - e) as u32).to_le_bytes());
        page[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
        page[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
        page[data..data + k.len()].copy_from_slice(k);
        data += k.len();
    }
    page
}
