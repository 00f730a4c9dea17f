//! `PAGE_DATA` records: pfn entries, page types, and the *page-data shape*
//! an image keeps so export can write the same records again
//! (`spec/xen.md`).

/// Page-type nibble of a pfn entry (bits 63..60, `XEN_DOMCTL_PFINFO_*`).
pub mod page_type {
    /// An ordinary page.
    pub const NOTAB: u8 = 0x0;
    /// PV level-1 page table.
    pub const L1TAB: u8 = 0x1;
    /// PV level-4 page table.
    pub const L4TAB: u8 = 0x4;
    /// First pinned page-table type (L1TAB_PIN).
    pub const L1TAB_PIN: u8 = 0x9;
    /// Last pinned page-table type (L4TAB_PIN).
    pub const L4TAB_PIN: u8 = 0xc;
    /// A broken page: no data, not populated.
    pub const BROKEN: u8 = 0xd;
    /// Allocate only: populated, no data (zero).
    pub const XALLOC: u8 = 0xe;
    /// Invalid or unpopulated gfn: no data.
    pub const XTAB: u8 = 0xf;
}

/// Highest pfn + 1 accepted: a 52-bit guest-physical address space.
pub const PFN_LIMIT: u64 = 1 << 40;
/// Pages a Xen saver puts in one record at most.
pub const SAVER_BATCH: u32 = 1024;

/// Whether entries of type `t` carry 4096 bytes of page data.
pub fn has_data(t: u8) -> bool {
    !(5..=8).contains(&t) && (t & 7) <= 4
}

/// Whether type `t` is one Xen knows (not 5..=8).
pub fn known_type(t: u8) -> bool {
    !(5..=8).contains(&t)
}

/// Whether a page of type `t` is populated on restore.
pub fn populated(t: u8) -> bool {
    has_data(t) || t == page_type::XALLOC
}

/// Whether type `t` is a PV page table (pinned or not).
pub fn is_page_table(t: u8) -> bool {
    (page_type::L1TAB..=page_type::L4TAB).contains(&t) || (page_type::L1TAB_PIN..=page_type::L4TAB_PIN).contains(&t)
}

/// Splits a pfn entry into `(type, reserved bits 59..52, pfn)`.
pub fn split_entry(e: u64) -> (u8, u8, u64) {
    ((e >> 60) as u8, ((e >> 52) & 0xff) as u8, e & ((1 << 52) - 1))
}

/// A run of pfn entries in one record: `count` pfns from `pfn`, all `ty`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First pfn.
    pub pfn: u64,
    /// Entries.
    pub count: u32,
    /// Page type nibble.
    pub ty: u8,
}

/// The pfn entries of consecutive `PAGE_DATA` records, as runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Per record, its runs in entry order.
    pub records: Vec<Vec<Run>>,
}

/// Bytes of one run in the encoded shape.
const RUN_BYTES: usize = 16;

impl Shape {
    /// Starts a new record.
    pub fn begin_record(&mut self) {
        self.records.push(Vec::new());
    }

    /// Appends an entry to the last record, extending its last run when the
    /// entry continues it.
    pub fn push(&mut self, pfn: u64, ty: u8) {
        if self.records.is_empty() {
            self.begin_record();
        }
        let runs = self.records.last_mut().expect("a record was begun");
        if let Some(r) = runs.last_mut()
            && r.ty == ty
            && r.pfn + u64::from(r.count) == pfn
            && r.count < u32::MAX
        {
            r.count += 1;
            return;
        }
        runs.push(Run { pfn, count: 1, ty });
    }

    /// The encoded shape: `u32 records`, then per record `u32 runs` and
    /// per run `u64 pfn, u32 count, u8 type, u8 pad[3]` (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let runs: usize = self.records.iter().map(Vec::len).sum();
        let mut b = Vec::with_capacity(4 + 4 * self.records.len() + RUN_BYTES * runs);
        b.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        for rec in &self.records {
            b.extend_from_slice(&(rec.len() as u32).to_le_bytes());
            for r in rec {
                b.extend_from_slice(&r.pfn.to_le_bytes());
                b.extend_from_slice(&r.count.to_le_bytes());
                b.extend_from_slice(&[r.ty, 0, 0, 0]);
            }
        }
        b
    }

    /// Decodes an encoded shape, checking every count against the bytes
    /// present, every type, and every pfn against [`PFN_LIMIT`].
    ///
    /// # Errors
    /// A message naming the byte offset that is wrong.
    pub fn decode(b: &[u8]) -> Result<Shape, String> {
        let u32_at = |p: usize| -> Result<u32, String> {
            b.get(p..p + 4)
                .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
                .ok_or_else(|| format!("page-data shape truncated at byte {p}"))
        };
        let n = u32_at(0)? as usize;
        let mut p = 4;
        // Each record needs at least 4 bytes: a lying count cannot allocate.
        let mut records = Vec::with_capacity(n.min(b.len() / 4));
        for i in 0..n {
            let k = u32_at(p)? as usize;
            p += 4;
            if k == 0 || b.len().saturating_sub(p) / RUN_BYTES < k {
                return Err(format!("page-data shape record {i} claims {k} runs at byte {p}"));
            }
            let mut runs = Vec::with_capacity(k);
            let mut entries = 0u64;
            for _ in 0..k {
                let pfn = u64::from_le_bytes(b[p..p + 8].try_into().unwrap_or_default());
                let count = u32::from_le_bytes(b[p + 8..p + 12].try_into().unwrap_or_default());
                let ty = b[p + 12];
                if count == 0 || !known_type(ty) || b[p + 13..p + 16] != [0; 3] {
                    return Err(format!("page-data shape run at byte {p} is invalid"));
                }
                if pfn.checked_add(u64::from(count)).is_none_or(|e| e > PFN_LIMIT) {
                    return Err(format!("page-data shape run at byte {p} leaves the pfn space"));
                }
                entries += u64::from(count);
                runs.push(Run { pfn, count, ty });
                p += RUN_BYTES;
            }
            if entries > u64::from(u32::MAX) {
                return Err(format!("page-data shape record {i} has more than 2^32 entries"));
            }
            records.push(runs);
        }
        if p != b.len() {
            return Err(format!("page-data shape has {} trailing bytes", b.len() - p));
        }
        Ok(Shape { records })
    }
}

/// Runs of pages: `(first pfn, pages)`.
pub type Runs = Vec<(u64, u64)>;

/// Guest-physical runs `(first pfn, pages)` from unsorted, possibly
/// overlapping runs of populated pages: sorted and merged, and, when there
/// are more than `max` of them, the smallest gaps closed (their pages then
/// belong to a region though the stream did not populate them). Returns
/// the runs and the gaps closed.
pub fn layout(mut runs: Runs, max: usize) -> (Runs, Runs) {
    runs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, n) in runs {
        match merged.last_mut() {
            Some((ls, ln)) if s <= *ls + *ln => *ln = (*ln).max(s + n - *ls),
            _ => merged.push((s, n)),
        }
    }
    if merged.len() <= max || max == 0 {
        return (merged, Vec::new());
    }
    let mut gaps: Vec<(u64, u64)> = merged.windows(2).map(|w| (w[0].0 + w[0].1, w[1].0 - (w[0].0 + w[0].1))).collect();
    gaps.sort_unstable_by_key(|g| (g.1, g.0));
    let mut closed: Vec<(u64, u64)> = gaps[..merged.len() - max].to_vec();
    closed.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(max);
    let mut c = closed.iter().peekable();
    for (s, n) in merged {
        match out.last_mut() {
            Some((ls, ln)) if c.peek().is_some_and(|g| g.0 == *ls + *ln && g.0 + g.1 == s) => {
                c.next();
                *ln = s + n - *ls;
            }
            _ => out.push((s, n)),
        }
    }
    (out, closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_types_are_xens() {
        let with: Vec<u8> = (0..16).filter(|&t| has_data(t)).collect();
        assert_eq!(with, [0, 1, 2, 3, 4, 9, 10, 11, 12]);
        assert!(populated(page_type::XALLOC) && !populated(page_type::XTAB) && !populated(page_type::BROKEN));
        assert_eq!(split_entry(0xf000_0000_0000_00a0), (0xf, 0, 0xa0));
        assert_eq!(split_entry(0x0010_0000_0000_0001), (0, 1, 1));
    }

    #[test]
    fn layout_merges_and_closes_smallest_gaps() {
        let (r, closed) = layout(vec![(10, 5), (0, 4), (12, 8), (30, 1), (100, 1)], 8);
        assert_eq!(r, [(0, 4), (10, 10), (30, 1), (100, 1)]);
        assert!(closed.is_empty());
        let (r, closed) = layout(vec![(0, 4), (10, 10), (30, 1), (100, 1)], 2);
        assert_eq!(closed, [(4, 6), (20, 10)]);
        assert_eq!(r, [(0, 31), (100, 1)]);
    }

    #[test]
    fn hostile_shapes_are_refused() {
        assert!(Shape::decode(&[]).is_err());
        assert!(Shape::decode(&u32::MAX.to_le_bytes()).is_err());
        let mut s = Shape::default();
        s.push(PFN_LIMIT - 1, 0);
        let mut b = s.encode();
        assert!(Shape::decode(&b).is_ok());
        b[8..16].copy_from_slice(&PFN_LIMIT.to_le_bytes());
        assert!(Shape::decode(&b).is_err());
    }

    proptest! {
        #[test]
        fn shape_round_trips(records in proptest::collection::vec(
            proptest::collection::vec((0u64..5000, prop_oneof![Just(0u8), Just(1), Just(9), Just(14), Just(15)]), 1..50), 0..20)) {
            let mut s = Shape::default();
            for rec in &records {
                s.begin_record();
                for &(pfn, ty) in rec {
                    s.push(pfn, ty);
                }
            }
            let back = Shape::decode(&s.encode()).unwrap();
            prop_assert_eq!(&back, &s);
            let flat: Vec<Vec<(u64, u8)>> = back.records.iter()
                .map(|r| r.iter().flat_map(|run| (0..u64::from(run.count)).map(move |i| (run.pfn + i, run.ty))).collect())
                .collect();
            prop_assert_eq!(flat, records);
        }
    }
}
