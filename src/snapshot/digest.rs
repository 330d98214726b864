//! Leaf-page digests, computed from a bbolt file's bytes as they stream past, so that the
//! verification after a snapshot stream need not read the leaf pages back.
//!
//! The status hash is one CRC-32C over every top-level bucket's keys and values in key order
//! (see [`super::status`]). bbolt writes a leaf page's elements in order and each element's key
//! and value right after the previous element's value, so a leaf's share of the hash is the
//! CRC of one contiguous byte range of the page run; CRCs of consecutive ranges combine
//! (`crc32c_combine`) without the bytes. A [`DigestBuilder`] sees the file once, front to back,
//! in whole pages, and records for every page that looks like a leaf (its header's id is its
//! own page number and its type is leaf) a [`LeafDigest`]: that CRC, the data length, the
//! element count and the first and last keys. The walk ([`super::Db::walk_with_digests`]) then
//! follows the tree as always, reading branch pages, and takes each leaf it reaches from its
//! digest instead of reading it.
//!
//! A digest is only made where it tells the walk everything a read would: a page whose elements
//! are not laid out contiguously, has a bucket or unknown flag, an empty or long key, keys out
//! of order, elements outside the run, a run longer than its elements need, or a key the caller
//! must see (`must_see`) gets no digest, and the walk reads that page the ordinary way, which
//! reports its problem exactly. Freed pages keep their old contents, so many pages that are no
//! longer in the tree look like leaves too: their digests are simply never used.
//!
//! Memory is bounded: at most [`MAX_OPEN`] page runs are followed at once, each with a table of
//! at most [`MAX_TABLE`] bytes and keys of at most [`MAX_KEY`] bytes, and recording stops (the
//! rest is read back by the walk) once the digests reach [`DigestBuilder::new`]'s budget. They
//! grow a quarter at a time, so they end within a quarter above the budget.

use super::bbolt::{
    validate_meta, PageHeader, ELEMENT_SIZE, LEAF_PAGE, META_SIZE, PAGE_HEADER_SIZE,
};

/// The CRC-32C polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the CRC polynomial, both bit-reflected (the top bit is x^0).
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        bit >>= 1;
    }
    product
}

/// `X2N[k]` is x^(2^k) modulo the CRC polynomial.
const X2N: [u32; 64] = {
    let mut table = [0u32; 64];
    let mut power = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        table[k] = power;
        power = mul_mod_p(power, power);
        k += 1;
    }
    table
};

/// The CRC-32C of `a` followed by `b`, from the CRC of `a`, the CRC of `b` and `b`'s length:
/// `crc_a` is multiplied by x^(8 · len_b) and added to `crc_b`. O(log len_b) small products
/// (the `crc32c` crate's combine is a hundred times slower, and is called once per leaf).
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let mut shift = 1u32 << 31; // x^0
    let mut n = len_b;
    let mut k = 3; // bytes: x^(8n) = x^(2^3 · n)
    while n != 0 {
        if n & 1 != 0 {
            shift = mul_mod_p(X2N[k % 64], shift);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod_p(shift, crc_a) ^ crc_b
}

/// Keys longer than this give their page no digest.
pub const MAX_KEY: usize = 64;
/// Element tables (header included) longer than this give their page no digest.
pub const MAX_TABLE: usize = 64 * 1024;
/// Page runs followed at the same time; a page that starts while this many are open gets no
/// digest. Real files need two or three (a stale leaf's run overlapping live ones).
pub const MAX_OPEN: usize = 16;

/// What the walk needs to know of a leaf page run without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafDigest {
    pub pgid: u64,
    pub overflow: u32,
    pub count: u16,
    /// CRC-32C of the keys and values, in element order.
    pub crc: u32,
    /// Bytes the CRC covers.
    pub len: u64,
    /// Where the first key, then the last key, are in [`Digests`]' key store.
    keys_at: u32,
    first_len: u8,
    last_len: u8,
}

/// The leaf digests of one file, in page order.
#[derive(Debug, Default)]
pub struct Digests {
    page_size: u32,
    leaves: Vec<LeafDigest>,
    keys: Vec<u8>,
    /// Recording stopped at this page (the budget ran out); later pages have no digests.
    stopped_at: Option<u64>,
}

impl Digests {
    /// The digest of the leaf run starting at `pgid`, if one was made.
    pub fn get(&self, pgid: u64) -> Option<&LeafDigest> {
        let i = self.leaves.binary_search_by_key(&pgid, |d| d.pgid).ok()?;
        Some(&self.leaves[i])
    }

    pub fn first_key(&self, digest: &LeafDigest) -> &[u8] {
        let at = digest.keys_at as usize;
        &self.keys[at..at + usize::from(digest.first_len)]
    }

    pub fn last_key(&self, digest: &LeafDigest) -> &[u8] {
        let at = digest.keys_at as usize + usize::from(digest.first_len);
        &self.keys[at..at + usize::from(digest.last_len)]
    }

    /// The page size the builder read from meta page 0 (0 if it found none).
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The page at which the budget ran out, if it did.
    pub fn stopped_at(&self) -> Option<u64> {
        self.stopped_at
    }

    fn bytes(&self) -> usize {
        self.leaves.capacity() * std::mem::size_of::<LeafDigest>() + self.keys.capacity()
    }

    /// Room for one more digest and its keys, grown by a quarter at a time (not doubled), so
    /// the memory stays within a quarter of the budget.
    fn reserve(&mut self, key_bytes: usize) {
        if self.leaves.len() == self.leaves.capacity() {
            self.leaves.reserve_exact(self.leaves.len() / 4 + 1024);
        }
        if self.keys.capacity() - self.keys.len() < key_bytes {
            self.keys.reserve_exact(self.keys.len() / 4 + 64 * 1024);
        }
    }
}

/// `Open::data_end` before the element table is read.
const UNPARSED: u64 = u64::MAX;

/// A leaf run being followed.
struct Open {
    pgid: u64,
    overflow: u32,
    count: u16,
    /// Bytes of the run seen so far.
    seen: u64,
    /// The header and element table, until complete.
    table: Vec<u8>,
    /// Key ranges (start, end) inside the run, from the table.
    keys: Vec<(u32, u32)>,
    data_start: u64,
    data_end: u64,
    /// The element whose key is being collected.
    next: usize,
    key: Vec<u8>,
    first: Vec<u8>,
    prev: Vec<u8>,
    crc: u32,
}

/// What a run said after some more bytes.
enum Step {
    More,
    Done,
    /// No digest for this run.
    Drop,
}

impl Open {
    fn table_len(&self) -> usize {
        PAGE_HEADER_SIZE + usize::from(self.count) * ELEMENT_SIZE
    }

    /// Takes the run's next bytes (`bytes` starts at offset `self.seen` of the run).
    fn feed(&mut self, bytes: &[u8], page_size: u64, must_see: fn(&[u8]) -> bool) -> Step {
        let start = self.seen;
        self.seen += bytes.len() as u64;
        if self.data_end == UNPARSED {
            let want = self.table_len() - self.table.len();
            let take = want.min(bytes.len());
            self.table.extend_from_slice(&bytes[..take]);
            if self.table.len() < self.table_len() {
                return Step::More;
            }
            if !self.parse_table(page_size) {
                return Step::Drop;
            }
        }
        // The data bytes within this piece.
        let end = self.seen.min(self.data_end);
        let from = start.max(self.data_start);
        if from < end {
            let piece = &bytes[(from - start) as usize..(end - start) as usize];
            self.crc = crc32c::crc32c_append(self.crc, piece);
            if !self.collect_keys(piece, from, must_see) {
                return Step::Drop;
            }
        }
        if self.seen >= self.data_end {
            Step::Done
        } else {
            Step::More
        }
    }

    /// Checks the element table as the walk would and finds the key ranges; false: no digest.
    fn parse_table(&mut self, page_size: u64) -> bool {
        let run_len = (u64::from(self.overflow) + 1) * page_size;
        let table_len = self.table_len() as u64;
        if table_len > run_len {
            return false;
        }
        let mut at = table_len;
        for index in 0..usize::from(self.count) {
            let e = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
            let field = |i: usize| {
                u32::from_le_bytes(self.table[e + i..e + i + 4].try_into().expect("4 bytes"))
            };
            let (flags, pos, ksize, vsize) = (field(0), field(4), field(8), field(12));
            // A bucket, an unknown flag, an empty or long key, or a gap or overlap: the walk
            // reads this page.
            if flags != 0 || ksize == 0 || ksize as usize > MAX_KEY {
                return false;
            }
            let key_start = e as u64 + u64::from(pos);
            if key_start != at {
                return false;
            }
            let key_end = key_start + u64::from(ksize);
            at = key_end + u64::from(vsize);
            if at > run_len || at > u64::from(u32::MAX) {
                return false;
            }
            self.keys.push((key_start as u32, key_end as u32));
        }
        // A run longer than its elements need is a corruption the walk names.
        if u64::from(self.overflow) * page_size > at {
            return false;
        }
        self.data_start = table_len;
        self.data_end = at;
        self.table = Vec::new();
        true
    }

    /// Copies key bytes out of `piece` (run offset `from`), checking order as keys complete.
    fn collect_keys(&mut self, piece: &[u8], from: u64, must_see: fn(&[u8]) -> bool) -> bool {
        let to = from + piece.len() as u64;
        while let Some(&(ks, ke)) = self.keys.get(self.next) {
            let (ks, ke) = (u64::from(ks), u64::from(ke));
            if ks >= to {
                break;
            }
            let lo = ks.max(from);
            let hi = ke.min(to);
            self.key
                .extend_from_slice(&piece[(lo - from) as usize..(hi - from) as usize]);
            if hi < ke {
                break;
            }
            let key = std::mem::take(&mut self.key);
            if must_see(&key) || (self.next > 0 && key <= self.prev) {
                return false;
            }
            if self.next == 0 {
                self.first.clone_from(&key);
            }
            self.key = std::mem::replace(&mut self.prev, key);
            self.key.clear();
            self.next += 1;
        }
        true
    }
}

/// Computes [`Digests`] from a file's bytes, given front to back in whole pages.
pub struct DigestBuilder {
    digests: Digests,
    budget: usize,
    must_see: fn(&[u8]) -> bool,
    /// Bytes seen so far.
    offset: u64,
    open: Vec<Open>,
    /// Meta page 0 did not give a usable page size: no digests at all.
    unusable: bool,
}

impl DigestBuilder {
    /// A builder that keeps at most about `budget` bytes of digests and makes none for a page
    /// holding a key `must_see` accepts.
    pub fn new(budget: usize, must_see: fn(&[u8]) -> bool) -> DigestBuilder {
        DigestBuilder {
            digests: Digests::default(),
            budget,
            must_see,
            offset: 0,
            open: Vec::new(),
            unusable: false,
        }
    }

    /// Takes the next bytes of the file. Every call but the last must end on a page boundary
    /// (any multiple of 64 KiB does, for every page size bbolt allows).
    pub fn update(&mut self, bytes: &[u8]) {
        if self.unusable || bytes.is_empty() {
            return;
        }
        if self.offset == 0 && !self.read_page_size(bytes) {
            self.unusable = true;
            return;
        }
        let ps = u64::from(self.digests.page_size);
        let start = self.offset;
        self.offset += bytes.len() as u64;
        // Runs already open take their share first, then each page starting here.
        self.advance(bytes, start, 0);
        let mut page_at = start.next_multiple_of(ps);
        while page_at + PAGE_HEADER_SIZE as u64 <= self.offset {
            let i = (page_at - start) as usize;
            let header = PageHeader::parse(&bytes[i..]);
            let pgid = page_at / ps;
            if header.id == pgid && header.flags == LEAF_PAGE && self.recording(pgid) {
                let table_len = PAGE_HEADER_SIZE + usize::from(header.count) * ELEMENT_SIZE;
                if self.open.len() < MAX_OPEN && table_len <= MAX_TABLE {
                    self.open.push(Open {
                        pgid,
                        overflow: header.overflow,
                        count: header.count,
                        seen: 0,
                        table: Vec::with_capacity(table_len),
                        keys: Vec::with_capacity(usize::from(header.count)),
                        data_start: 0,
                        data_end: UNPARSED,
                        next: 0,
                        key: Vec::new(),
                        first: Vec::new(),
                        prev: Vec::new(),
                        crc: 0,
                    });
                    let last = self.open.len() - 1;
                    self.advance(bytes, start, last);
                }
            }
            page_at += ps;
        }
    }

    /// Feeds the open runs from index `from` on with what `bytes` (file offset `start`) holds
    /// of them; closes the finished ones.
    fn advance(&mut self, bytes: &[u8], start: u64, from: usize) {
        let ps = u64::from(self.digests.page_size);
        let mut i = from;
        while i < self.open.len() {
            let run = &mut self.open[i];
            let run_start = run.pgid * ps + run.seen;
            let skip = (run_start - start) as usize;
            let step = run.feed(&bytes[skip..], ps, self.must_see);
            match step {
                Step::More => i += 1,
                Step::Drop => {
                    self.open.remove(i);
                }
                Step::Done => {
                    let run = self.open.remove(i);
                    self.record(run);
                }
            }
        }
    }

    fn recording(&mut self, pgid: u64) -> bool {
        if self.digests.stopped_at.is_some() {
            return false;
        }
        // Runs already open may still finish: keep room for them.
        let open = MAX_OPEN * (std::mem::size_of::<LeafDigest>() + 2 * MAX_KEY);
        if self.digests.bytes() + open >= self.budget {
            self.digests.stopped_at = Some(pgid);
            return false;
        }
        true
    }

    fn record(&mut self, run: Open) {
        let keys_at = self.digests.keys.len();
        let Ok(keys_at) = u32::try_from(keys_at) else {
            return;
        };
        // Runs finish out of order when they overlap; the digests stay sorted by page.
        self.digests.reserve(run.first.len() + run.prev.len());
        let at = self.digests.leaves.partition_point(|d| d.pgid < run.pgid);
        self.digests.keys.extend_from_slice(&run.first);
        self.digests.keys.extend_from_slice(&run.prev);
        self.digests.leaves.insert(
            at,
            LeafDigest {
                pgid: run.pgid,
                overflow: run.overflow,
                count: run.count,
                crc: run.crc,
                len: run.data_end - run.data_start,
                keys_at,
                first_len: run.first.len() as u8,
                last_len: run.prev.len() as u8,
            },
        );
    }

    /// Meta page 0's page size, if the page is valid (as [`super::Db::open`] requires).
    fn read_page_size(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() < PAGE_HEADER_SIZE + META_SIZE {
            return false;
        }
        match validate_meta(0, bytes) {
            Ok(meta) => {
                self.digests.page_size = meta.page_size;
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the budget ran out: later pages get no digests.
    pub fn stopped(&self) -> bool {
        self.digests.stopped_at.is_some()
    }

    /// The digests made (runs still open at the end, cut by the end of the file, have none).
    pub fn finish(self) -> Digests {
        self.digests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_crcs_equals_hashing_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for (split, end) in [
            (0, 0),
            (0, 10),
            (10, 10),
            (1, 2),
            (100, 5000),
            (4096, 70_000),
            (69_999, 70_000),
        ] {
            let (a, b) = (&data[..split], &data[split..end]);
            let whole = crc32c::crc32c(&data[..end]);
            let combined = crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64);
            assert_eq!(combined, whole, "split {split} end {end}");
            // Appending to a running hash, as the status does.
            let running = crc32c::crc32c_append(0x1234_5678, a);
            assert_eq!(
                crc32c_combine(running, crc32c::crc32c(b), b.len() as u64),
                crc32c::crc32c_append(running, b)
            );
        }
    }
}
