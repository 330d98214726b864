//! A read-only reader for bbolt files (the storage format of etcd and of its snapshots).
//!
//! The file is read with positioned reads (`pread`), one call per page (two for a page with
//! overflow pages: the element table first, so a damaged overflow count cannot make us allocate
//! more than the elements need), into one reusable buffer per tree level. No mmap, no whole-file
//! reads: memory is O(tree depth × page size) plus two bitmaps of one bit per page.
//!
//! Layout (little-endian), as written by go.etcd.io/bbolt:
//!
//! * page header (16 bytes): id u64, flags u16, count u16, overflow u32; a page with overflow N
//!   spans N+1 pages.
//! * meta (pages 0 and 1, after the header): magic u32, version u32, page_size u32, flags u32,
//!   root bucket {root pgid u64, sequence u64}, freelist pgid u64, pgid (high-water mark) u64,
//!   txid u64, checksum u64 (FNV-1a 64 of the 56 bytes before it).
//! * branch element (16 bytes): pos u32, ksize u32, pgid u64; leaf element (16 bytes): flags u32,
//!   pos u32, ksize u32, vsize u32. `pos` counts from the element itself; a leaf value follows
//!   its key.
//! * a bucket's value: {root pgid u64, sequence u64}; root 0 means an inline bucket whose leaf
//!   page follows in the value.
//! * freelist page: `count` page ids (u64) after the header; count 0xFFFF means the real count
//!   is the first u64 and the ids follow it.
//!
//! [`Db::walk`] checks what bbolt's `tx.Check()` checks, and more: both meta pages (magic,
//! version, checksum, header), every page inside the file and below the high-water mark, page
//! ids and types as expected, no page (overflow pages included) reached twice, no page both in
//! use and free, every page in use or free (when the file has a freelist), keys strictly
//! increasing within each page and across the tree, branch keys consistent with their children.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::digest::Digests;
use super::SnapshotError;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
pub const PAGE_HEADER_SIZE: usize = 16;
/// The meta struct, checksum included.
pub const META_SIZE: usize = 64;
pub const ELEMENT_SIZE: usize = 16;
pub const BUCKET_HEADER_SIZE: usize = 16;
pub const BRANCH_PAGE: u16 = 0x01;
pub const LEAF_PAGE: u16 = 0x02;
pub const META_PAGE: u16 = 0x04;
pub const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag: the value is a bucket.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;
/// Freelist pgid of a database that does not sync its freelist (`NoFreelistSync`).
pub const NO_FREELIST: u64 = u64::MAX;
pub const MIN_PAGE_SIZE: u32 = 512;
pub const MAX_PAGE_SIZE: u32 = 64 * 1024;
/// Tree levels plus bucket nesting we follow before calling a file corrupt; real files use a
/// handful. Bounds the recursion (and so the stack).
pub const MAX_DEPTH: usize = 64;

/// bbolt reads this much to find the page size.
const FIRST_READ: u64 = 4096;
/// Freelist ids are read this many at a time.
const FREELIST_CHUNK_IDS: usize = 8192;
/// Page buffers that grew past this (large values) are shrunk back after use.
const KEEP_BUFFER: usize = 4 << 20;

/// What is wrong with a bbolt file, with the page it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("meta page {page}: bad magic number {found:#010x} (bbolt's is 0xed0cdaed)")]
    MetaMagic { page: u64, found: u32 },
    #[error("meta page {page}: unsupported bbolt format version {found} (expected 2)")]
    MetaVersion { page: u64, found: u32 },
    #[error(
        "meta page {page}: checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
    )]
    MetaChecksum {
        page: u64,
        stored: u64,
        computed: u64,
    },
    #[error("meta page {page}: bad page header (id {id}, flags {flags:#x}, count {count}, overflow {overflow})")]
    MetaHeader {
        page: u64,
        id: u64,
        flags: u16,
        count: u16,
        overflow: u32,
    },
    #[error("meta page {page}: unsupported page size {size}")]
    PageSize { page: u64, size: u32 },
    #[error("the meta pages disagree on the page size ({first} and {second})")]
    PageSizeDiffers { first: u32, second: u32 },
    #[error("meta page {page}: high-water mark {hwm} is too small (it must cover the meta pages and the root)")]
    HighWaterMark { page: u64, hwm: u64 },
    #[error("meta page {page}: {what} page {target} is outside the database ({hwm} pages)")]
    MetaPointer {
        page: u64,
        what: &'static str,
        target: u64,
        hwm: u64,
    },
    #[error("page {from} points to page {page}, outside the database ({hwm} pages)")]
    OutOfRange { page: u64, from: u64, hwm: u64 },
    #[error("page {page}: its header says it is page {found}")]
    HeaderId { page: u64, found: u64 },
    #[error("page {page}: expected a {expected} page, found a {found} page (flags {flags:#x})")]
    WrongType {
        page: u64,
        expected: &'static str,
        found: &'static str,
        flags: u16,
    },
    #[error(
        "page {page}: its {overflow} overflow pages run past the end of the database ({hwm} pages)"
    )]
    Overflow { page: u64, overflow: u32, hwm: u64 },
    #[error("page {page}: header claims {overflow} overflow pages but its elements fill only {needed} bytes")]
    OverflowMismatch {
        page: u64,
        overflow: u32,
        needed: u64,
    },
    #[error("page {page}: its {count} elements do not fit in the page")]
    ElementTable { page: u64, count: u16 },
    #[error("page {page}: element {index} lies outside the page")]
    ElementBounds { page: u64, index: usize },
    #[error("page {page}: element {index} has unknown flags {flags:#x}")]
    ElementFlags { page: u64, index: usize, flags: u32 },
    #[error("page {page}: element {index} has an empty key")]
    EmptyKey { page: u64, index: usize },
    #[error("page {page}: branch page without elements")]
    EmptyBranch { page: u64 },
    #[error("page {page}: key {index} is not greater than the key before it (keys out of order)")]
    KeyOrder { page: u64, index: usize },
    #[error("page {page}: key {index} sorts before the branch key that points to the page")]
    KeyBelowParent { page: u64, index: usize },
    #[error("page {page}: key {index} does not sort before the next branch key of its parent")]
    KeyAboveParent { page: u64, index: usize },
    #[error("page {page} is referenced twice")]
    ReachedTwice { page: u64 },
    #[error("page {page} is in use but also listed as free")]
    ReachableFree { page: u64 },
    #[error("page {page} is neither in use nor free (unreachable unfreed){}", more_pages(*more))]
    Unreachable { page: u64, more: u64 },
    #[error("page {page} is listed twice in the freelist")]
    DoubleFree { page: u64 },
    #[error("the freelist lists page {page}, outside the pages it may free (2..{hwm})")]
    FreeOutOfRange { page: u64, hwm: u64 },
    #[error("freelist page {page}: {count} entries do not fit in the page")]
    FreelistSize { page: u64, count: u64 },
    #[error(
        "page {page}: bucket in element {index} has a {len}-byte value (a bucket header needs 16)"
    )]
    BadBucket { page: u64, index: usize, len: usize },
    #[error("page {page}: the inline bucket in element {index} is not a leaf page")]
    InlinePage { page: u64, index: usize },
    #[error("page {page}: top-level element {index} is not a bucket")]
    NotABucket { page: u64, index: usize },
    #[error("page {page}: buckets and trees nest more than {MAX_DEPTH} levels deep")]
    TooDeep { page: u64 },
}

fn more_pages(more: u64) -> String {
    match more {
        0 => String::new(),
        1 => ", and 1 more page".to_string(),
        n => format!(", and {n} more pages"),
    }
}

/// The name bbolt gives a page type.
pub fn page_type(flags: u16) -> &'static str {
    match flags {
        BRANCH_PAGE => "branch",
        LEAF_PAGE => "leaf",
        META_PAGE => "meta",
        FREELIST_PAGE => "freelist",
        _ => "unknown",
    }
}

/// FNV-1a, 64 bits (the meta checksum).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[inline(always)]
fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}

#[inline(always)]
fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().unwrap())
}

#[inline(always)]
fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().unwrap())
}

/// A page header. `buf` must hold at least 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    pub fn parse(buf: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(buf, 0),
            flags: u16_at(buf, 8),
            count: u16_at(buf, 10),
            overflow: u32_at(buf, 12),
        }
    }
}

/// A meta page's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket (whose entries are the top-level buckets).
    pub root: u64,
    pub sequence: u64,
    /// Freelist page, or [`NO_FREELIST`].
    pub freelist: u64,
    /// High-water mark: the number of pages in the database.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

impl Meta {
    /// Parses the meta struct of a meta page; `page` must hold at least 80 bytes.
    pub fn parse(page: &[u8]) -> Meta {
        let m = &page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE];
        Meta {
            magic: u32_at(m, 0),
            version: u32_at(m, 4),
            page_size: u32_at(m, 8),
            flags: u32_at(m, 12),
            root: u64_at(m, 16),
            sequence: u64_at(m, 24),
            freelist: u64_at(m, 32),
            pgid: u64_at(m, 40),
            txid: u64_at(m, 48),
            checksum: u64_at(m, 56),
        }
    }

    /// Whether the file carries a synced freelist.
    pub fn has_freelist(&self) -> bool {
        self.freelist != NO_FREELIST
    }
}

/// Validates meta page `id` (0 or 1) from the first 80 bytes of `page`.
pub(crate) fn validate_meta(id: u64, page: &[u8]) -> Result<Meta, Corruption> {
    let meta = Meta::parse(page);
    if meta.magic != MAGIC {
        return Err(Corruption::MetaMagic {
            page: id,
            found: meta.magic,
        });
    }
    if meta.version != VERSION {
        return Err(Corruption::MetaVersion {
            page: id,
            found: meta.version,
        });
    }
    let computed = fnv1a64(&page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE - 8]);
    if computed != meta.checksum {
        return Err(Corruption::MetaChecksum {
            page: id,
            stored: meta.checksum,
            computed,
        });
    }
    let header = PageHeader::parse(page);
    if header.id != id || header.flags != META_PAGE || header.count != 0 || header.overflow != 0 {
        return Err(Corruption::MetaHeader {
            page: id,
            id: header.id,
            flags: header.flags,
            count: header.count,
            overflow: header.overflow,
        });
    }
    if !meta.page_size.is_power_of_two()
        || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&meta.page_size)
    {
        return Err(Corruption::PageSize {
            page: id,
            size: meta.page_size,
        });
    }
    Ok(meta)
}

/// One step of [`Db::walk`]: top-level buckets and their entries, in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A top-level bucket; its entries follow.
    Bucket(&'a [u8]),
    /// An entry of the latest top-level bucket; `value` is `None` for a nested bucket (as
    /// bbolt's `ForEach` gives `v == nil`). Nested buckets' contents are checked, not listed.
    Entry {
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
    /// A whole leaf page of entries of the latest top-level bucket, taken from its digest (only
    /// [`Db::walk_with_digests`] reports these): `count` entries whose keys and values, in
    /// order, have the CRC-32C `crc` over `len` bytes; `last_key` is the last entry's key. No
    /// key on the page is one the digests' `must_see` accepts.
    Leaf {
        count: u16,
        crc: u32,
        len: u64,
        last_key: &'a [u8],
    },
}

/// An open bbolt file whose meta pages are valid and whose pages are all in the file.
#[derive(Debug)]
pub struct Db {
    file: File,
    path: PathBuf,
    file_len: u64,
    page_size: u32,
    meta: Meta,
    /// The meta page in use (0 or 1).
    meta_page: u64,
}

impl Db {
    /// Opens `path` read-only and validates both meta pages. The meta page with the highest
    /// txid is used (as bbolt does); unlike bbolt, an invalid other meta page is an error too,
    /// since a snapshot's two meta pages are written together.
    pub fn open(path: &Path) -> Result<Db, SnapshotError> {
        let io = |action, source| SnapshotError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        let corrupt = |problem| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            problem,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let file_len = file.metadata().map_err(|e| io("stat", e))?.len();
        if file_len == 0 {
            return Err(SnapshotError::Empty {
                path: path.to_path_buf(),
            });
        }
        if file_len < (PAGE_HEADER_SIZE + META_SIZE) as u64 {
            return Err(SnapshotError::TooShort {
                path: path.to_path_buf(),
                len: file_len,
            });
        }
        let mut first = vec![0u8; file_len.min(FIRST_READ) as usize];
        file.read_exact_at(&mut first, 0)
            .map_err(|e| io("read", e))?;
        let meta0 = match validate_meta(0, &first) {
            Ok(meta) => meta,
            Err(problem @ Corruption::MetaMagic { .. }) => {
                // A damaged meta page 0, or not bbolt at all? Look for meta page 1.
                let mut probe = [0u8; PAGE_HEADER_SIZE + META_SIZE];
                let mut size = MIN_PAGE_SIZE;
                while size <= MAX_PAGE_SIZE {
                    if file.read_exact_at(&mut probe, u64::from(size)).is_ok()
                        && validate_meta(1, &probe).is_ok()
                    {
                        return Err(corrupt(problem));
                    }
                    size *= 2;
                }
                return Err(SnapshotError::NotBbolt {
                    path: path.to_path_buf(),
                });
            }
            Err(problem) => return Err(corrupt(problem)),
        };
        let page_size = meta0.page_size;
        let ps = u64::from(page_size);
        let truncated = |hwm: u64| SnapshotError::Truncated {
            path: path.to_path_buf(),
            file_len,
            needed: hwm.saturating_mul(ps),
            pages_present: file_len / ps,
            pages: hwm,
        };
        if file_len < 2 * ps {
            return Err(truncated(meta0.pgid.max(2)));
        }
        let mut second = [0u8; PAGE_HEADER_SIZE + META_SIZE];
        file.read_exact_at(&mut second, ps)
            .map_err(|e| io("read", e))?;
        let meta1 = validate_meta(1, &second).map_err(corrupt)?;
        if meta1.page_size != page_size {
            return Err(corrupt(Corruption::PageSizeDiffers {
                first: page_size,
                second: meta1.page_size,
            }));
        }
        let (meta, meta_page) = if meta1.txid > meta0.txid {
            (meta1, 1)
        } else {
            (meta0, 0)
        };
        let hwm = meta.pgid;
        if hwm < 3 {
            return Err(corrupt(Corruption::HighWaterMark {
                page: meta_page,
                hwm,
            }));
        }
        match hwm.checked_mul(ps) {
            Some(needed) if needed <= file_len => {}
            _ => return Err(truncated(hwm)),
        }
        if meta.root < 2 || meta.root >= hwm {
            return Err(corrupt(Corruption::MetaPointer {
                page: meta_page,
                what: "root",
                target: meta.root,
                hwm,
            }));
        }
        if meta.has_freelist() && (meta.freelist < 2 || meta.freelist >= hwm) {
            return Err(corrupt(Corruption::MetaPointer {
                page: meta_page,
                what: "freelist",
                target: meta.freelist,
                hwm,
            }));
        }
        Ok(Db {
            file,
            path: path.to_path_buf(),
            file_len,
            page_size,
            meta,
            meta_page,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The meta page in use.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Which meta page is in use (0 or 1).
    pub fn meta_page(&self) -> u64 {
        self.meta_page
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The database's size: high-water mark × page size (bbolt's `tx.Size()`, etcd's
    /// `totalSize`). A snapshot file is this plus the 32-byte trailer.
    pub fn size(&self) -> u64 {
        self.meta.pgid * u64::from(self.page_size)
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The structural check alone.
    pub fn check(&self) -> Result<(), SnapshotError> {
        self.walk(|_| Ok(()))
    }

    /// Walks the whole database in key order, checking its structure, and calls `f` for each
    /// top-level bucket and each of its entries (see [`Item`]). Stops at the first problem, or
    /// the first error `f` returns. Pages that are neither in use nor free are found only after
    /// the last item, so a caller must not trust what it saw until this returns `Ok`.
    pub fn walk<F>(&self, f: F) -> Result<(), SnapshotError>
    where
        F: FnMut(Item<'_>) -> Result<(), SnapshotError>,
    {
        self.walk_inner(None, f)
    }

    /// [`Db::walk`], taking the leaves of top-level buckets that have a digest from `digests`
    /// (reported as [`Item::Leaf`]) instead of reading them. The checks are the same: a leaf
    /// whose digest cannot show it is sound where it is (its keys outside its parent's range)
    /// is read, and so are all pages without a digest. `digests` must come from this file's
    /// bytes; digests for another page size are ignored.
    pub fn walk_with_digests<F>(&self, digests: &Digests, f: F) -> Result<(), SnapshotError>
    where
        F: FnMut(Item<'_>) -> Result<(), SnapshotError>,
    {
        let digests = (digests.page_size() == self.page_size).then_some(digests);
        self.walk_inner(digests, f)
    }

    fn walk_inner<F>(&self, digests: Option<&Digests>, f: F) -> Result<(), SnapshotError>
    where
        F: FnMut(Item<'_>) -> Result<(), SnapshotError>,
    {
        let hwm = self.meta.pgid;
        let mut walker = Walker {
            db: self,
            digests,
            f,
            reachable: Bitmap::new(hwm),
            free: Bitmap::new(hwm),
            pool: Vec::new(),
        };
        walker.reachable.set(0);
        walker.reachable.set(1);
        walker.load_freelist()?;
        walker.tree(self.meta.root, self.meta_page, 0, Mode::Top, None, None)?;
        if self.meta.has_freelist() {
            if let Some((page, more)) = walker.unaccounted() {
                return Err(self.corrupt(Corruption::Unreachable { page, more }));
            }
        }
        Ok(())
    }

    fn corrupt(&self, problem: Corruption) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            problem,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SnapshotError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| SnapshotError::Io {
                path: self.path.clone(),
                action: "read",
                source,
            })
    }
}

/// One bit per page.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize])
    }

    #[inline]
    fn get(&self, bit: u64) -> bool {
        self.0[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Sets `bit`; returns whether it was already set.
    #[inline]
    fn set(&mut self, bit: u64) -> bool {
        let word = &mut self.0[(bit / 64) as usize];
        let mask = 1 << (bit % 64);
        let was = *word & mask != 0;
        *word |= mask;
        was
    }
}

/// What the walk reports for the entries of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The root bucket: every entry must be a bucket; report it, then its entries.
    Top,
    /// A top-level bucket: report every entry.
    Emit,
    /// A nested bucket: check only.
    Silent,
}

struct Walker<'d, F> {
    db: &'d Db,
    digests: Option<&'d Digests>,
    f: F,
    reachable: Bitmap,
    free: Bitmap,
    /// One page buffer per depth, reused.
    pool: Vec<Vec<u8>>,
}

impl<F> Walker<'_, F>
where
    F: FnMut(Item<'_>) -> Result<(), SnapshotError>,
{
    fn corrupt(&self, problem: Corruption) -> SnapshotError {
        self.db.corrupt(problem)
    }

    /// Marks a page in use.
    fn mark(&mut self, page: u64) -> Result<(), SnapshotError> {
        if self.reachable.set(page) {
            return Err(self.corrupt(Corruption::ReachedTwice { page }));
        }
        if self.free.get(page) {
            return Err(self.corrupt(Corruption::ReachableFree { page }));
        }
        Ok(())
    }

    /// Checks a page header read at `pgid` (its id, its type, its overflow run inside the
    /// high-water mark) and marks every page of the run as reached. Returns the run's last page.
    fn claim_run(
        &mut self,
        pgid: u64,
        header: &PageHeader,
        hwm: u64,
        allowed: &[u16],
        expected: &'static str,
    ) -> Result<u64, SnapshotError> {
        if header.id != pgid {
            return Err(self.corrupt(Corruption::HeaderId {
                page: pgid,
                found: header.id,
            }));
        }
        if !allowed.contains(&header.flags) {
            return Err(self.corrupt(Corruption::WrongType {
                page: pgid,
                expected,
                found: page_type(header.flags),
                flags: header.flags,
            }));
        }
        let last = pgid + u64::from(header.overflow);
        if last >= hwm {
            return Err(self.corrupt(Corruption::Overflow {
                page: pgid,
                overflow: header.overflow,
                hwm,
            }));
        }
        for page in pgid..=last {
            self.mark(page)?;
        }
        Ok(last)
    }

    fn load_freelist(&mut self) -> Result<(), SnapshotError> {
        let meta = self.db.meta;
        if !meta.has_freelist() {
            return Ok(());
        }
        let pgid = meta.freelist;
        let hwm = meta.pgid;
        let ps = u64::from(self.db.page_size);
        let mut first = vec![0u8; self.db.page_size as usize];
        self.db.read_at(&mut first, pgid * ps)?;
        let header = PageHeader::parse(&first);
        let last = self.claim_run(pgid, &header, hwm, &[FREELIST_PAGE], "freelist")?;
        let run_len = (last - pgid + 1) * ps;
        let (count, start) = if header.count == 0xFFFF {
            (
                u64_at(&first, PAGE_HEADER_SIZE),
                PAGE_HEADER_SIZE as u64 + 8,
            )
        } else {
            (u64::from(header.count), PAGE_HEADER_SIZE as u64)
        };
        let fits = count
            .checked_mul(8)
            .and_then(|bytes| bytes.checked_add(start))
            .is_some_and(|end| end <= run_len);
        if !fits || count > hwm {
            return Err(self.corrupt(Corruption::FreelistSize { page: pgid, count }));
        }
        let mut chunk = vec![0u8; (count as usize).min(FREELIST_CHUNK_IDS) * 8];
        let mut offset = pgid * ps + start;
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(FREELIST_CHUNK_IDS);
            let bytes = &mut chunk[..n * 8];
            self.db.read_at(bytes, offset)?;
            for id in bytes.chunks_exact(8) {
                let id = u64::from_le_bytes(id.try_into().unwrap());
                if !(2..hwm).contains(&id) {
                    return Err(self.corrupt(Corruption::FreeOutOfRange { page: id, hwm }));
                }
                if self.free.set(id) {
                    return Err(self.corrupt(Corruption::DoubleFree { page: id }));
                }
            }
            offset += (n * 8) as u64;
            left -= n;
        }
        for page in pgid..=last {
            if self.free.get(page) {
                return Err(self.corrupt(Corruption::ReachableFree { page }));
            }
        }
        Ok(())
    }

    /// The first page in [2, hwm) neither in use nor free, and how many more there are.
    fn unaccounted(&self) -> Option<(u64, u64)> {
        let hwm = self.db.meta.pgid;
        let mut first = None;
        let mut count = 0u64;
        for (i, (r, f)) in self.reachable.0.iter().zip(&self.free.0).enumerate() {
            let mut missing = !(r | f);
            let base = i as u64 * 64;
            if base + 64 > hwm {
                missing &= (1u64 << (hwm - base)) - 1;
            }
            if missing != 0 {
                first.get_or_insert(base + u64::from(missing.trailing_zeros()));
                count += u64::from(missing.count_ones());
            }
        }
        first.map(|page| (page, count - 1))
    }

    /// Walks the tree whose root is page `pgid` (referenced from page `from`); its keys must lie
    /// in [lo, hi).
    fn tree(
        &mut self,
        pgid: u64,
        from: u64,
        depth: usize,
        mode: Mode,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<(), SnapshotError> {
        let hwm = self.db.meta.pgid;
        if !(2..hwm).contains(&pgid) {
            return Err(self.corrupt(Corruption::OutOfRange {
                page: pgid,
                from,
                hwm,
            }));
        }
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(Corruption::TooDeep { page: from }));
        }
        if mode == Mode::Emit && self.digested_leaf(pgid, lo, hi)? {
            return Ok(());
        }
        if self.pool.len() <= depth {
            self.pool.resize_with(depth + 1, Vec::new);
        }
        let mut buf = std::mem::take(&mut self.pool[depth]);
        let result = self.tree_page(&mut buf, pgid, depth, mode, lo, hi);
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
        self.pool[depth] = buf;
        result
    }

    fn tree_page(
        &mut self,
        buf: &mut Vec<u8>,
        pgid: u64,
        depth: usize,
        mode: Mode,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<(), SnapshotError> {
        let ps = self.db.page_size as usize;
        let hwm = self.db.meta.pgid;
        buf.resize(ps, 0);
        self.db.read_at(buf, pgid * ps as u64)?;
        let header = PageHeader::parse(buf);
        self.claim_run(
            pgid,
            &header,
            hwm,
            &[BRANCH_PAGE, LEAF_PAGE],
            "branch or leaf",
        )?;
        if header.overflow > 0 {
            self.load_overflow(buf, pgid, &header)?;
        }
        if header.flags == BRANCH_PAGE {
            self.branch(buf, pgid, depth, mode, lo, hi)
        } else {
            self.leaf(buf, pgid, depth, mode, lo, hi)
        }
    }

    /// Takes leaf `pgid` from its digest, if it has one that shows the page sound in [lo, hi);
    /// false: read the page instead.
    fn digested_leaf(
        &mut self,
        pgid: u64,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<bool, SnapshotError> {
        let Some(digests) = self.digests else {
            return Ok(false);
        };
        let Some(digest) = digests.get(pgid) else {
            return Ok(false);
        };
        let last_key = digests.last_key(digest);
        // Keys are in order within the page (or it would have no digest), so the first key and
        // the last bound them all. Outside the range, the read reports exactly what is wrong.
        if digest.count > 0
            && (lo.is_some_and(|lo| digests.first_key(digest) < lo)
                || hi.is_some_and(|hi| last_key >= hi))
        {
            return Ok(false);
        }
        let header = PageHeader {
            id: pgid,
            flags: LEAF_PAGE,
            count: digest.count,
            overflow: digest.overflow,
        };
        let hwm = self.db.meta.pgid;
        self.claim_run(pgid, &header, hwm, &[LEAF_PAGE], "branch or leaf")?;
        (self.f)(Item::Leaf {
            count: digest.count,
            crc: digest.crc,
            len: digest.len,
            last_key,
        })?;
        Ok(true)
    }

    /// Reads the rest of a page run whose first page is in `buf`, after checking that its
    /// elements need the pages the header claims (so a damaged overflow count is caught
    /// before it costs memory).
    fn load_overflow(
        &mut self,
        buf: &mut Vec<u8>,
        pgid: u64,
        header: &PageHeader,
    ) -> Result<(), SnapshotError> {
        let ps = self.db.page_size as usize;
        let offset = pgid * ps as u64;
        let run_len = (u64::from(header.overflow) + 1) * ps as u64;
        let count = usize::from(header.count);
        let table_end = PAGE_HEADER_SIZE + count * ELEMENT_SIZE;
        if table_end as u64 > run_len {
            return Err(self.corrupt(Corruption::ElementTable {
                page: pgid,
                count: header.count,
            }));
        }
        if table_end > buf.len() {
            let have = buf.len();
            buf.resize(table_end, 0);
            self.db.read_at(&mut buf[have..], offset + have as u64)?;
        }
        let mut needed = table_end as u64;
        for index in 0..count {
            let e = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
            let end = if header.flags == BRANCH_PAGE {
                (e as u64) + u64::from(u32_at(buf, e)) + u64::from(u32_at(buf, e + 4))
            } else {
                (e as u64)
                    + u64::from(u32_at(buf, e + 4))
                    + u64::from(u32_at(buf, e + 8))
                    + u64::from(u32_at(buf, e + 12))
            };
            if end > run_len {
                return Err(self.corrupt(Corruption::ElementBounds { page: pgid, index }));
            }
            needed = needed.max(end);
        }
        if u64::from(header.overflow) * ps as u64 > needed {
            return Err(self.corrupt(Corruption::OverflowMismatch {
                page: pgid,
                overflow: header.overflow,
                needed,
            }));
        }
        let have = buf.len();
        let run_len = usize::try_from(run_len).expect("a page run inside the file fits in memory");
        buf.resize(run_len, 0);
        self.db.read_at(&mut buf[have..], offset + have as u64)
    }

    fn branch(
        &mut self,
        page: &[u8],
        pgid: u64,
        depth: usize,
        mode: Mode,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<(), SnapshotError> {
        let count = usize::from(u16_at(page, 10));
        if count == 0 {
            return Err(self.corrupt(Corruption::EmptyBranch { page: pgid }));
        }
        check_table(page, pgid, count).map_err(|p| self.corrupt(p))?;
        let mut prev: Option<&[u8]> = None;
        let mut next = branch_element(page, pgid, 0).map_err(|p| self.corrupt(p))?;
        for index in 0..count {
            let (key, child) = next;
            check_order(pgid, index, key, prev, lo, hi).map_err(|p| self.corrupt(p))?;
            let child_hi = if index + 1 < count {
                next = branch_element(page, pgid, index + 1).map_err(|p| self.corrupt(p))?;
                Some(next.0)
            } else {
                hi
            };
            self.tree(child, pgid, depth + 1, mode, Some(key), child_hi)?;
            prev = Some(key);
        }
        Ok(())
    }

    /// A leaf page: a tree page, or an inline bucket's page inside a value of page `pgid`.
    fn leaf(
        &mut self,
        page: &[u8],
        pgid: u64,
        depth: usize,
        mode: Mode,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<(), SnapshotError> {
        let count = usize::from(u16_at(page, 10));
        check_table(page, pgid, count).map_err(|p| self.corrupt(p))?;
        let mut prev: Option<&[u8]> = None;
        for index in 0..count {
            let e = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
            let flags = u32_at(page, e);
            let key_start = e + u32_at(page, e + 4) as usize;
            let key_end = key_start + u32_at(page, e + 8) as usize;
            let value_end = key_end + u32_at(page, e + 12) as usize;
            if value_end > page.len() {
                return Err(self.corrupt(Corruption::ElementBounds { page: pgid, index }));
            }
            if flags & !BUCKET_LEAF_FLAG != 0 {
                return Err(self.corrupt(Corruption::ElementFlags {
                    page: pgid,
                    index,
                    flags,
                }));
            }
            let key = &page[key_start..key_end];
            let value = &page[key_end..value_end];
            check_order(pgid, index, key, prev, lo, hi).map_err(|p| self.corrupt(p))?;
            prev = Some(key);
            if flags & BUCKET_LEAF_FLAG != 0 {
                let inner = match mode {
                    Mode::Top => {
                        (self.f)(Item::Bucket(key))?;
                        Mode::Emit
                    }
                    Mode::Emit => {
                        (self.f)(Item::Entry { key, value: None })?;
                        Mode::Silent
                    }
                    Mode::Silent => Mode::Silent,
                };
                self.bucket(value, pgid, index, depth + 1, inner)?;
            } else {
                match mode {
                    Mode::Top => {
                        return Err(self.corrupt(Corruption::NotABucket { page: pgid, index }))
                    }
                    Mode::Emit => (self.f)(Item::Entry {
                        key,
                        value: Some(value),
                    })?,
                    Mode::Silent => {}
                }
            }
        }
        Ok(())
    }

    /// A bucket whose header is `value`, found in element `index` of page `pgid`.
    fn bucket(
        &mut self,
        value: &[u8],
        pgid: u64,
        index: usize,
        depth: usize,
        mode: Mode,
    ) -> Result<(), SnapshotError> {
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(self.corrupt(Corruption::BadBucket {
                page: pgid,
                index,
                len: value.len(),
            }));
        }
        let root = u64_at(value, 0);
        if root != 0 {
            return self.tree(root, pgid, depth, mode, None, None);
        }
        let inline = &value[BUCKET_HEADER_SIZE..];
        if inline.len() < PAGE_HEADER_SIZE || u16_at(inline, 8) != LEAF_PAGE {
            return Err(self.corrupt(Corruption::InlinePage { page: pgid, index }));
        }
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(Corruption::TooDeep { page: pgid }));
        }
        self.leaf(inline, pgid, depth, mode, None, None)
    }
}

/// Checks that `count` elements fit after the header of `page`.
fn check_table(page: &[u8], pgid: u64, count: usize) -> Result<(), Corruption> {
    if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > page.len() {
        return Err(Corruption::ElementTable {
            page: pgid,
            count: count as u16,
        });
    }
    Ok(())
}

/// Branch element `index`: its key and child page. The table must have been checked.
fn branch_element(page: &[u8], pgid: u64, index: usize) -> Result<(&[u8], u64), Corruption> {
    let e = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
    let key_start = e + u32_at(page, e) as usize;
    let key_end = key_start + u32_at(page, e + 4) as usize;
    if key_end > page.len() {
        return Err(Corruption::ElementBounds { page: pgid, index });
    }
    Ok((&page[key_start..key_end], u64_at(page, e + 8)))
}

/// Key `index` of page `pgid` must be non-empty, follow `prev` (the key before it on the
/// page), and lie in [lo, hi) (the branch keys around the page).
#[inline]
fn check_order(
    pgid: u64,
    index: usize,
    key: &[u8],
    prev: Option<&[u8]>,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
) -> Result<(), Corruption> {
    if key.is_empty() {
        return Err(Corruption::EmptyKey { page: pgid, index });
    }
    match prev {
        Some(prev) if key <= prev => return Err(Corruption::KeyOrder { page: pgid, index }),
        None if lo.is_some_and(|lo| key < lo) => {
            return Err(Corruption::KeyBelowParent { page: pgid, index })
        }
        _ => {}
    }
    if hi.is_some_and(|hi| key >= hi) {
        return Err(Corruption::KeyAboveParent { page: pgid, index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::digest::{DigestBuilder, Digests};
    use crate::snapshot::testdb::{self, build, Bucket, Built, Node, Options, PageKind};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Bucket(Vec<u8>),
        Entry(Vec<u8>, Option<Vec<u8>>),
    }

    fn expected(root: &Bucket) -> Vec<Owned> {
        let mut out = Vec::new();
        for (name, node) in &root.entries {
            let Node::Bucket(b) = node else {
                panic!("top-level value")
            };
            out.push(Owned::Bucket(name.clone()));
            for (k, v) in &b.entries {
                out.push(Owned::Entry(
                    k.clone(),
                    match v {
                        Node::Value(v) => Some(v.clone()),
                        Node::Bucket(_) => None,
                    },
                ));
            }
        }
        out
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.db");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    fn walk_bytes(bytes: &[u8]) -> Result<Vec<Owned>, SnapshotError> {
        let (_dir, path) = write(bytes);
        let db = Db::open(&path)?;
        let mut items = Vec::new();
        db.walk(|item| {
            items.push(match item {
                Item::Bucket(name) => Owned::Bucket(name.to_vec()),
                Item::Entry { key, value } => Owned::Entry(key.to_vec(), value.map(<[u8]>::to_vec)),
                Item::Leaf { .. } => unreachable!("the plain walk reports every entry"),
            });
            Ok(())
        })?;
        Ok(items)
    }

    /// What a walk saw, reduced to what leaf digests keep: per top-level bucket, its name, the
    /// CRC-32C of its entries' keys and values, their count and the last key.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Summary(Vec<(Vec<u8>, u32, u64, Vec<u8>)>);

    fn summarize(
        (_dir, path): &(tempfile::TempDir, PathBuf),
        digests: Option<&Digests>,
    ) -> Result<(Summary, usize), SnapshotError> {
        let db = Db::open(path)?;
        let mut buckets: Vec<(Vec<u8>, u32, u64, Vec<u8>)> = Vec::new();
        let mut leaves = 0;
        let each = |item: Item<'_>| {
            match item {
                Item::Bucket(name) => buckets.push((name.to_vec(), 0, 0, Vec::new())),
                Item::Entry { key, value } => {
                    let b = buckets.last_mut().unwrap();
                    b.1 = crc32c::crc32c_append(b.1, key);
                    b.1 = crc32c::crc32c_append(b.1, value.unwrap_or_default());
                    b.2 += 1;
                    b.3 = key.to_vec();
                }
                Item::Leaf {
                    count,
                    crc,
                    len,
                    last_key,
                } => {
                    let b = buckets.last_mut().unwrap();
                    b.1 = super::super::digest::crc32c_combine(b.1, crc, len);
                    b.2 += u64::from(count);
                    if count > 0 {
                        b.3 = last_key.to_vec();
                    }
                    leaves += 1;
                }
            }
            Ok(())
        };
        match digests {
            Some(digests) => db.walk_with_digests(digests, each)?,
            None => db.walk(each)?,
        }
        Ok((Summary(buckets), leaves))
    }

    /// Digests of `bytes`, given to the builder `chunk` bytes at a time.
    fn digests_of(bytes: &[u8], chunk: usize) -> Digests {
        let mut builder = DigestBuilder::new(usize::MAX, |_| false);
        for piece in bytes.chunks(chunk) {
            builder.update(piece);
        }
        builder.finish()
    }

    /// Walks `bytes` plainly and with digests (made in chunks of one page, three pages and
    /// the whole file); both must give the same result, or the same error. Returns the plain
    /// walk's result and how many leaves the digests stood in for.
    fn walk_both_ways(bytes: &[u8]) -> Result<(Summary, usize), SnapshotError> {
        let file = write(bytes);
        let plain = summarize(&file, None);
        let page_size = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
        let mut used = 0;
        if page_size == 0 {
            return plain;
        }
        for chunk in [page_size, 3 * page_size, bytes.len().max(1)] {
            let digests = digests_of(bytes, chunk);
            let digested = summarize(&file, Some(&digests));
            match (&plain, &digested) {
                (Ok((a, _)), Ok((b, n))) => {
                    assert_eq!(a, b, "with digests made in chunks of {chunk}");
                    used = used.max(*n);
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "chunks of {chunk}")
                }
                (a, b) => panic!("plain walk {a:?}, with digests (chunks of {chunk}) {b:?}"),
            }
        }
        plain.map(|(summary, _)| (summary, used))
    }

    fn problem(bytes: &[u8]) -> Corruption {
        if bytes.len() >= 28 {
            // The walk with digests must find the very same problem.
            let _ = walk_both_ways(bytes);
        }
        match walk_bytes(bytes) {
            Err(SnapshotError::Corrupt { problem, .. }) => problem,
            other => panic!("expected a corruption, got {other:?}"),
        }
    }

    /// A database with everything: empty, inline, nested, large and deep buckets.
    fn rich() -> Bucket {
        let mut root = Bucket::new();
        root.bucket("empty");
        root.bucket("inline").put("a", "1").put("b", "2");
        let nested = root.bucket("nested");
        nested.put("before", "x");
        nested.bucket("child").put("k", "v");
        nested
            .bucket("child")
            .bucket("grandchild")
            .put("deep", vec![7u8; 3000]);
        nested.bucket("emptychild");
        nested.put("z-after", "y");
        let big = root.bucket("big");
        big.put("huge", vec![0xAB; 20_000]);
        big.put("huger", vec![0xCD; 70_000]);
        big.put("small", "s");
        let many = root.bucket("many");
        for i in 0..3000u32 {
            many.put(
                format!("key-{i:08}"),
                format!("value-{i}").repeat(i as usize % 5 + 1),
            );
        }
        root
    }

    fn deep_options() -> Options {
        Options {
            max_leaf_entries: 8,
            max_branch_entries: 4,
            ..Options::default()
        }
    }

    #[test]
    fn walks_everything_in_order() {
        let root = rich();
        for opts in [
            Options::default(),
            deep_options(),
            Options {
                page_size: 512,
                ..Options::default()
            },
            Options {
                page_size: 65536,
                ..Options::default()
            },
            Options {
                inline: false,
                freelist: false,
                free_pages: 3,
                ..Options::default()
            },
            Options {
                free_pages: 5,
                ..deep_options()
            },
        ] {
            let built = build(&root, &opts);
            let items = walk_bytes(&built.bytes).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
            assert_eq!(items, expected(&root), "{opts:?}");
            let (_, digested) = walk_both_ways(&built.bytes).unwrap();
            assert!(digested > 0, "{opts:?}: no leaf was taken from a digest");
            // A trailer changes nothing.
            assert_eq!(walk_bytes(&built.with_trailer()).unwrap(), items);
        }
    }

    #[test]
    fn fixtures_have_the_shapes_we_test() {
        let built = build(&rich(), &deep_options());
        let max_level = built.pages.iter().map(|p| p.level).max().unwrap();
        assert!(max_level >= 3, "3 levels of branch pages, got {max_level}");
        assert!(
            built.pages.iter().any(|p| p.overflow >= 4),
            "overflow pages"
        );
        assert!(built
            .pages_of(PageKind::Leaf, &[b"nested", b"child", b"grandchild"])
            .next()
            .is_some());
        // "inline" and "empty" take no pages of their own.
        assert!(built
            .pages_of(PageKind::Leaf, &[b"inline"])
            .next()
            .is_none());
        assert!(built.pages_of(PageKind::Leaf, &[b"empty"]).next().is_none());
        let db_path = write(&built.bytes);
        let db = Db::open(&db_path.1).unwrap();
        assert_eq!(db.size(), built.bytes.len() as u64);
        assert_eq!(db.meta().txid, 7);
        assert_eq!(db.meta_page(), 0);
    }

    #[test]
    fn empty_database() {
        let built = build(&Bucket::new(), &Options::default());
        assert_eq!(walk_bytes(&built.bytes).unwrap(), vec![]);
        let mut root = Bucket::new();
        root.bucket("a");
        root.bucket("b");
        let built = build(
            &root,
            &Options {
                inline: false,
                ..Options::default()
            },
        );
        assert_eq!(
            walk_bytes(&built.bytes).unwrap(),
            vec![Owned::Bucket(b"a".to_vec()), Owned::Bucket(b"b".to_vec())]
        );
    }

    #[test]
    fn meta_page_one_wins_with_a_higher_txid() {
        let built = build(&rich(), &Options::default());
        let mut bytes = built.bytes.clone();
        let ps = built.page_size as usize;
        bytes[ps + 16 + 48..ps + 16 + 56].copy_from_slice(&100u64.to_le_bytes());
        testdb::reseal_meta(&mut bytes, built.page_size, 1);
        let (_dir, path) = write(&bytes);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.meta_page(), 1);
        assert_eq!(db.meta().txid, 100);
        db.check().unwrap();
    }

    #[test]
    fn empty_short_and_foreign_files() {
        assert!(matches!(walk_bytes(&[]), Err(SnapshotError::Empty { .. })));
        assert!(matches!(
            walk_bytes(&[0; 79]),
            Err(SnapshotError::TooShort { len: 79, .. })
        ));
        assert!(matches!(
            walk_bytes(&[0; 100_000]),
            Err(SnapshotError::NotBbolt { .. })
        ));
        let mut state = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..50_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(matches!(
            walk_bytes(&random),
            Err(SnapshotError::NotBbolt { .. })
        ));
        let mut sqlite = b"SQLite format 3\0".to_vec();
        sqlite.resize(8192, 0);
        assert!(matches!(
            walk_bytes(&sqlite),
            Err(SnapshotError::NotBbolt { .. })
        ));
    }

    #[test]
    fn truncated_files() {
        let built = build(&rich(), &Options::default());
        let len = built.bytes.len();
        let ps = built.page_size as usize;
        for cut in [
            80,
            100,
            ps - 1,
            ps,
            ps + 79,
            ps + 80,
            2 * ps,
            3 * ps + 7,
            len / 2,
            len - ps,
            len - 1,
        ] {
            match walk_bytes(&built.bytes[..cut]) {
                Err(SnapshotError::Truncated {
                    file_len,
                    needed,
                    pages,
                    pages_present,
                    ..
                }) => {
                    assert_eq!(file_len, cut as u64);
                    assert_eq!(needed, len as u64);
                    assert_eq!(pages, built.hwm);
                    assert_eq!(pages_present, (cut / ps) as u64);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let err = walk_bytes(&built.bytes[..len - ps])
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn every_meta_byte_matters() {
        let built = build(&rich(), &Options::default());
        let ps = built.page_size as usize;
        for page in [0, 1] {
            for off in 0..PAGE_HEADER_SIZE + META_SIZE {
                for flip in [0x01u8, 0x80, 0xFF] {
                    let mut bytes = built.bytes.clone();
                    bytes[page * ps + off] ^= flip;
                    let result = walk_bytes(&bytes);
                    assert!(
                        result.is_err(),
                        "page {page} byte {off} ^ {flip:#x} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn meta_problems_are_named() {
        let built = build(&rich(), &Options::default());
        let ps = built.page_size as usize;
        let mut bytes = built.bytes.clone();
        bytes[ps + 16] ^= 1;
        assert!(matches!(
            problem(&bytes),
            Corruption::MetaMagic { page: 1, .. }
        ));
        let mut bytes = built.bytes.clone();
        bytes[16] ^= 1;
        assert!(matches!(
            problem(&bytes),
            Corruption::MetaMagic { page: 0, .. }
        ));
        let mut bytes = built.bytes.clone();
        bytes[20] = 3;
        assert!(matches!(
            problem(&bytes),
            Corruption::MetaVersion { page: 0, found: 3 }
        ));
        let mut bytes = built.bytes.clone();
        bytes[16 + 40] ^= 4;
        assert!(matches!(
            problem(&bytes),
            Corruption::MetaChecksum { page: 0, .. }
        ));
        let mut bytes = built.bytes.clone();
        bytes[0] = 9;
        assert!(matches!(
            problem(&bytes),
            Corruption::MetaHeader { page: 0, id: 9, .. }
        ));
        // A valid checksum over nonsense: a root outside the database.
        let mut bytes = built.bytes.clone();
        bytes[16 + 16..16 + 24].copy_from_slice(&(built.hwm + 3).to_le_bytes());
        testdb::reseal_meta(&mut bytes, built.page_size, 0);
        assert!(matches!(
            problem(&bytes),
            Corruption::MetaPointer { what: "root", .. }
        ));
        let mut bytes = built.bytes.clone();
        bytes[16 + 8..16 + 12].copy_from_slice(&1000u32.to_le_bytes());
        testdb::reseal_meta(&mut bytes, built.page_size, 0);
        assert!(matches!(
            problem(&bytes),
            Corruption::PageSize { size: 1000, .. }
        ));
        // A high-water mark beyond the file reads as a truncated file.
        let mut bytes = built.bytes.clone();
        bytes[16 + 40..16 + 48].copy_from_slice(&(built.hwm + 1).to_le_bytes());
        testdb::reseal_meta(&mut bytes, built.page_size, 0);
        assert!(matches!(
            walk_bytes(&bytes),
            Err(SnapshotError::Truncated { .. })
        ));
    }

    fn leaf_of<'a>(built: &'a Built, path: &'a [&'a [u8]]) -> &'a testdb::PageInfo {
        built
            .pages_of(PageKind::Leaf, path)
            .nth(1)
            .expect("a second leaf")
    }

    fn branch_child_offset(built: &Built, branch: u64, index: usize) -> usize {
        built.offset(branch) + PAGE_HEADER_SIZE + index * ELEMENT_SIZE + 8
    }

    fn root_branch(built: &Built, path: &[&[u8]]) -> u64 {
        built
            .pages_of(PageKind::Branch, path)
            .max_by_key(|p| p.level)
            .unwrap()
            .id
    }

    #[test]
    fn pages_out_of_range() {
        let built = build(&rich(), &deep_options());
        let branch = root_branch(&built, &[b"many"]);
        for bad in [built.hwm, built.hwm + 100, u64::MAX, 0, 1] {
            let mut bytes = built.bytes.clone();
            let off = branch_child_offset(&built, branch, 1);
            bytes[off..off + 8].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(
                problem(&bytes),
                Corruption::OutOfRange {
                    page: bad,
                    from: branch,
                    hwm: built.hwm
                }
            );
        }
    }

    #[test]
    fn page_referenced_twice() {
        let built = build(&rich(), &deep_options());
        let branch = root_branch(&built, &[b"many"]);
        let mut bytes = built.bytes.clone();
        let first = branch_child_offset(&built, branch, 0);
        let second = branch_child_offset(&built, branch, 1);
        let child0 = u64::from_le_bytes(bytes[first..first + 8].try_into().unwrap());
        bytes.copy_within(first..first + 8, second);
        // The copy breaks key order or is reached twice; both are errors, never a panic.
        let p = problem(&bytes);
        assert!(
            matches!(p, Corruption::ReachedTwice { page } if page == child0)
                || matches!(
                    p,
                    Corruption::KeyAboveParent { .. } | Corruption::KeyBelowParent { .. }
                ),
            "{p}"
        );
        // Two buckets sharing a root page: pure double reference.
        let mut root = Bucket::new();
        root.bucket("a").put("k", vec![1u8; 2000]);
        root.bucket("b").put("k", vec![1u8; 2000]);
        let built = build(&root, &Options::default());
        let a = built.pages_of(PageKind::Leaf, &[b"a"]).next().unwrap().id;
        let b = built.pages_of(PageKind::Leaf, &[b"b"]).next().unwrap().id;
        let mut bytes = built.bytes.clone();
        let needle = b.to_le_bytes();
        let root_off = built.offset(built.root);
        let pos = bytes[root_off..root_off + built.page_size as usize]
            .windows(8)
            .position(|w| w == needle)
            .unwrap();
        bytes[root_off + pos..root_off + pos + 8].copy_from_slice(&a.to_le_bytes());
        assert_eq!(problem(&bytes), Corruption::ReachedTwice { page: a });
    }

    #[test]
    fn keys_out_of_order() {
        let built = build(&rich(), &deep_options());
        let leaf = leaf_of(&built, &[b"many"]);
        let off = built.offset(leaf.id);
        let key = |bytes: &[u8], i: usize| {
            let e = off + PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let pos = u32_at(bytes, e + 4) as usize;
            let ksize = u32_at(bytes, e + 8) as usize;
            (e + pos, ksize)
        };
        // Two equal keys in one page.
        let mut bytes = built.bytes.clone();
        let (k0, n) = key(&bytes, 0);
        let (k1, _) = key(&bytes, 1);
        bytes.copy_within(k0..k0 + n, k1);
        assert_eq!(
            problem(&bytes),
            Corruption::KeyOrder {
                page: leaf.id,
                index: 1
            }
        );
        // The first key below its branch key.
        let mut bytes = built.bytes.clone();
        bytes[k0 + n - 1] = b'0' - 1;
        assert_eq!(
            problem(&bytes),
            Corruption::KeyBelowParent {
                page: leaf.id,
                index: 0
            }
        );
        // The last key at or above the next branch key.
        let mut bytes = built.bytes.clone();
        let (klast, n) = key(&bytes, leaf.count as usize - 1);
        bytes[klast + n - 5] = b'9' + 1;
        assert_eq!(
            problem(&bytes),
            Corruption::KeyAboveParent {
                page: leaf.id,
                index: leaf.count as usize - 1
            }
        );
        // Out of order in an inline bucket.
        let mut root = Bucket::new();
        root.bucket("b").put("x", "1").put("y", "2");
        let built = build(&root, &Options::default());
        let mut bytes = built.bytes.clone();
        let off = built.offset(built.root);
        let pos = bytes[off..].windows(2).position(|w| w == b"y2").unwrap();
        bytes[off + pos] = b'a';
        assert_eq!(
            problem(&bytes),
            Corruption::KeyOrder {
                page: built.root,
                index: 1
            }
        );
    }

    #[test]
    fn freelist_accounting() {
        let mut root = Bucket::new();
        root.bucket("b").put("k", "v");
        // Leaked pages: an error with a freelist, free space without one.
        let leaky = Options {
            leaked_pages: 3,
            ..Options::default()
        };
        let built = build(&root, &leaky);
        let first_leak = built
            .pages
            .iter()
            .find(|p| p.kind == PageKind::Leaked)
            .unwrap()
            .id;
        assert_eq!(
            problem(&built.bytes),
            Corruption::Unreachable {
                page: first_leak,
                more: 2
            }
        );
        let built = build(
            &root,
            &Options {
                freelist: false,
                ..leaky
            },
        );
        walk_bytes(&built.bytes).unwrap();

        let built = build(
            &root,
            &Options {
                free_pages: 3,
                ..Options::default()
            },
        );
        walk_bytes(&built.bytes).unwrap();
        let freelist = built
            .pages
            .iter()
            .find(|p| p.kind == PageKind::Freelist)
            .unwrap()
            .id;
        let ids = built.offset(freelist) + PAGE_HEADER_SIZE;
        // A page in use listed as free.
        let mut bytes = built.bytes.clone();
        bytes[ids..ids + 8].copy_from_slice(&built.root.to_le_bytes());
        assert_eq!(
            problem(&bytes),
            Corruption::ReachableFree { page: built.root }
        );
        // The freelist listing itself.
        let mut bytes = built.bytes.clone();
        bytes[ids..ids + 8].copy_from_slice(&freelist.to_le_bytes());
        assert_eq!(
            problem(&bytes),
            Corruption::ReachableFree { page: freelist }
        );
        // Twice the same page.
        let mut bytes = built.bytes.clone();
        bytes.copy_within(ids..ids + 8, ids + 8);
        assert!(matches!(problem(&bytes), Corruption::DoubleFree { .. }));
        // Pages that do not exist.
        for bad in [0u64, 1, built.hwm, u64::MAX] {
            let mut bytes = built.bytes.clone();
            bytes[ids..ids + 8].copy_from_slice(&bad.to_le_bytes());
            assert!(
                matches!(problem(&bytes), Corruption::FreeOutOfRange { page, .. } if page == bad)
            );
        }
        // A count larger than the page.
        let mut bytes = built.bytes.clone();
        let count = built.offset(freelist) + 10;
        bytes[count..count + 2].copy_from_slice(&5000u16.to_le_bytes());
        assert!(matches!(problem(&bytes), Corruption::FreelistSize { .. }));
        let mut bytes = built.bytes.clone();
        bytes[count..count + 2].copy_from_slice(&0xFFFFu16.to_le_bytes());
        bytes[ids..ids + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(problem(&bytes), Corruption::FreelistSize { .. }));
    }

    #[test]
    fn freelist_with_a_64k_overflow_count() {
        let mut root = Bucket::new();
        root.bucket("b").put("k", "v");
        let built = build(
            &root,
            &Options {
                page_size: 512,
                free_pages: 0xFFFF + 2,
                ..Options::default()
            },
        );
        let freelist = built
            .pages
            .iter()
            .find(|p| p.kind == PageKind::Freelist)
            .unwrap();
        assert_eq!(freelist.count, 0xFFFF);
        assert!(freelist.overflow > 1000);
        walk_bytes(&built.bytes).unwrap();
    }

    #[test]
    fn damaged_page_headers() {
        let built = build(&rich(), &deep_options());
        let big = built
            .pages
            .iter()
            .find(|p| p.overflow >= 4 && p.kind == PageKind::Leaf)
            .unwrap()
            .clone();
        let off = built.offset(big.id);
        // Wrong type.
        for flags in [0u16, 0x04, 0x10, 0x03, 0xFF] {
            let mut bytes = built.bytes.clone();
            bytes[off + 8..off + 10].copy_from_slice(&flags.to_le_bytes());
            assert!(
                matches!(problem(&bytes), Corruption::WrongType { page, .. } if page == big.id)
            );
        }
        // Wrong id.
        let mut bytes = built.bytes.clone();
        bytes[off] ^= 0x40;
        assert!(matches!(problem(&bytes), Corruption::HeaderId { page, .. } if page == big.id));
        // Overflow counts: more than the elements need, past the end, fewer than they need.
        for (overflow, ok) in [
            (big.overflow + 1, false),
            (big.overflow + (1 << 20), false),
            (u32::MAX, false),
            (big.overflow - 1, false),
            (0, false),
        ] {
            let mut bytes = built.bytes.clone();
            bytes[off + 12..off + 16].copy_from_slice(&overflow.to_le_bytes());
            let p = problem(&bytes);
            assert!(!ok);
            assert!(
                matches!(
                    p,
                    Corruption::OverflowMismatch { .. }
                        | Corruption::Overflow { .. }
                        | Corruption::ElementBounds { .. }
                        | Corruption::ReachedTwice { .. }
                        | Corruption::HeaderId { .. }
                ),
                "overflow {overflow}: {p}"
            );
        }
        // Element count beyond the page.
        let mut bytes = built.bytes.clone();
        bytes[off + 10..off + 12].copy_from_slice(&0xFFFEu16.to_le_bytes());
        assert!(matches!(
            problem(&bytes),
            Corruption::ElementTable { .. } | Corruption::ElementBounds { .. }
        ));
        // A value running past the page.
        let mut bytes = built.bytes.clone();
        let e = off + PAGE_HEADER_SIZE;
        bytes[e + 12..e + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(problem(&bytes), Corruption::ElementBounds { .. }));
        // Unknown element flags.
        let mut bytes = built.bytes.clone();
        bytes[e] = 0x02;
        assert!(matches!(
            problem(&bytes),
            Corruption::ElementFlags { flags: 2, .. }
        ));
        // An empty branch page.
        let branch = root_branch(&built, &[b"many"]);
        let mut bytes = built.bytes.clone();
        let b = built.offset(branch) + 10;
        bytes[b..b + 2].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(problem(&bytes), Corruption::EmptyBranch { page: branch });
    }

    #[test]
    fn damaged_bucket_values() {
        let mut root = Bucket::new();
        root.bucket("b").put("k", "v");
        root.put("plain", "value");
        let built = build(&root, &Options::default());
        // The root leaf: "b" (inline bucket), then "plain" (not a bucket).
        assert_eq!(
            problem(&built.bytes),
            Corruption::NotABucket {
                page: built.root,
                index: 1
            }
        );

        let mut root = Bucket::new();
        root.bucket("b").put("k", "v");
        let built = build(&root, &Options::default());
        let off = built.offset(built.root);
        let e = off + PAGE_HEADER_SIZE;
        // Value too short for a bucket header.
        let mut bytes = built.bytes.clone();
        bytes[e + 12..e + 16].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            problem(&bytes),
            Corruption::BadBucket { len: 10, .. }
        ));
        // The inline page is not a leaf.
        let mut bytes = built.bytes.clone();
        let pos = u32_at(&bytes, e + 4) as usize;
        let value = e + pos + 1;
        bytes[value + 16 + 8] = 0x01;
        assert!(matches!(problem(&bytes), Corruption::InlinePage { .. }));
        // The inline page claims more elements than it holds.
        let mut bytes = built.bytes.clone();
        bytes[value + 16 + 10] = 50;
        assert!(matches!(problem(&bytes), Corruption::ElementTable { .. }));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut root = Bucket::new();
        let mut b = root.bucket("top");
        for _ in 0..MAX_DEPTH + 5 {
            b = b.bucket("n");
        }
        b.put("k", "v");
        let built = build(&root, &Options::default());
        assert!(matches!(problem(&built.bytes), Corruption::TooDeep { .. }));
        let mut root = Bucket::new();
        let mut b = root.bucket("top");
        for _ in 0..20 {
            b = b.bucket("n");
        }
        b.put("k", "v");
        let built = build(&root, &Options::default());
        walk_bytes(&built.bytes).unwrap();
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
