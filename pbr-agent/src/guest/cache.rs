//! Which page frames hold which bytes of the files on the guest's
//! read-only disks, and where those bytes sit on the disk.
//!
//! For each file the boot opened or a process maps: `mincore` says which
//! of its pages are cached; each run of cached pages is mapped into a
//! shared mapping (`MADV_POPULATE_READ`, or a read of each page on older
//! kernels; the pages are resident, so nothing is read from the disk),
//! which puts them in this process's page table, where
//! `/proc/self/pagemap` gives their frames; `FS_IOC_FIEMAP` gives where the file's blocks sit on the disk.
//! None of it has to be exact: the host keeps a reference only when the
//! saved page equals the disk's bytes (`spec/agent.md` §3.1).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use pbr_agent::cache::{CachedFile, CachedPage};
use pbr_agent::message::Mount;

const PAGE: u64 = 4096;
/// `FS_IOC_FIEMAP` (`_IOWR('f', 11, struct fiemap)`).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Extents per `FS_IOC_FIEMAP` call.
const EXTENTS: usize = 128;
/// Extent flags whose bytes are not plainly on the disk: unknown place,
/// delayed allocation, encoded, encrypted, not block-aligned, inline in
/// metadata, a packed tail, unwritten (reads as zeros).
const NOT_ON_DISK: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800;
/// Last extent of the file.
const LAST: u32 = 0x1;
/// `MADV_POPULATE_READ` (Linux 5.14): map the pages of a range as reads
/// would, without a fault per page.
const MADV_POPULATE_READ: libc::c_int = 22;
/// Most files looked at.
const MAX_FILES: usize = 50_000;

/// A read-only block mount: its device, disk and where it starts on it.
struct Dev {
    disk: String,
    start: u64,
}

/// The cached pages of `files` (and of every file a process maps) that
/// live on the read-only mounts among `mounts`.
pub fn cached_files(mounts: &[Mount], files: &[String]) -> Vec<CachedFile> {
    let mut devs: HashMap<u64, Dev> = HashMap::new();
    for m in mounts.iter().filter(|m| m.read_only) {
        let Ok(st) = std::fs::metadata(&m.target) else { continue };
        let dev = st.dev();
        let sys = format!("/sys/dev/block/{}:{}/start", libc::major(dev), libc::minor(dev));
        let start = std::fs::read_to_string(sys).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0) * 512;
        devs.insert(dev, Dev { disk: m.disk.name.clone(), start });
    }
    if devs.is_empty() {
        return Vec::new();
    }
    let mut paths: BTreeSet<String> = files.iter().filter(|p| p.starts_with('/')).cloned().collect();
    paths.extend(mapped_files());
    let Ok(pagemap) = File::open("/proc/self/pagemap") else { return Vec::new() };
    // What one message can carry; the files past it are left out.
    let mut budget = pbr_agent::Kind::Cache.max_len() as usize;
    let mut out = Vec::new();
    for f in paths.iter().take(MAX_FILES).filter_map(|p| one_file(p, &devs, &pagemap)) {
        let cost = 2 + f.path.len() + 1 + f.disk.len() + 12 + f.pages.len() * pbr_agent::cache::PAGE_ENTRY;
        if cost > budget {
            break;
        }
        budget -= cost;
        out.push(f);
    }
    out
}

/// Files mapped by any process (`/proc/*/maps`).
fn mapped_files() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(e.path().join("maps")) else { continue };
        for line in maps.lines() {
            // address perms offset dev inode path
            if let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim_start)
                && path.starts_with('/')
                && !path.ends_with(" (deleted)")
            {
                out.insert(path.to_owned());
            }
        }
    }
    out
}

fn one_file(path: &str, devs: &HashMap<u64, Dev>, pagemap: &File) -> Option<CachedFile> {
    let f = File::open(path).ok()?;
    let st = f.metadata().ok()?;
    let dev = devs.get(&st.dev())?;
    if !st.is_file() || st.len() == 0 || path.len() > pbr_agent::limits::MAX_STRING || dev.disk.len() > 255 {
        return None;
    }
    let extents = fiemap(&f, st.len())?;
    let frames = resident_frames(&f, st.len(), pagemap)?;
    let mut pages = Vec::new();
    for (index, pfn) in frames {
        let file_offset = index * PAGE;
        let Some(e) = extents.iter().find(|e| file_offset >= e.0 && file_offset - e.0 < e.2) else { continue };
        let (logical, physical, _) = *e;
        pages.push(CachedPage { file_offset, pfn, disk_offset: dev.start + physical + (file_offset - logical) });
    }
    (!pages.is_empty()).then(|| CachedFile { path: path.to_owned(), disk: dev.disk.clone(), size: st.len(), pages })
}

/// The file's extents that sit plainly on the disk: (logical, physical,
/// length) in bytes, page-aligned ones only.
fn fiemap(f: &File, size: u64) -> Option<Vec<(u64, u64, u64)>> {
    // struct fiemap (32 bytes) then EXTENTS x struct fiemap_extent (56).
    let mut buf = vec![0u64; (32 + EXTENTS * 56) / 8];
    let mut out = Vec::new();
    let mut start = 0u64;
    while start < size {
        let from = start;
        buf.fill(0);
        buf[0] = start;
        buf[1] = u64::MAX - start;
        // fm_flags 0, fm_mapped_extents 0; fm_extent_count at byte 24.
        buf[3] = EXTENTS as u64;
        // SAFETY: `buf` is a struct fiemap with room for EXTENTS extents,
        // as fm_extent_count says; the kernel writes only inside it.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        let mapped = (buf[2] >> 32) as usize;
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for i in 0..mapped.min(EXTENTS) {
            let e = 4 + i * 7;
            let (logical, physical, length) = (buf[e], buf[e + 1], buf[e + 2]);
            let flags = buf[e + 5] as u32;
            if flags & NOT_ON_DISK == 0 && logical % PAGE == 0 && physical % PAGE == 0 {
                out.push((logical, physical, length));
            }
            start = logical.saturating_add(length);
            last |= flags & LAST != 0;
        }
        if last || start <= from {
            break;
        }
    }
    Some(out)
}

/// `(page index, frame)` of the file's pages that are in the page cache.
fn resident_frames(f: &File, size: u64, pagemap: &File) -> Option<Vec<(u64, u64)>> {
    let len = usize::try_from(size).ok()?;
    let pages = size.div_ceil(PAGE) as usize;
    // SAFETY: a new shared read-only mapping of an open file; the kernel
    // picks the address; it is unmapped below before the function returns.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` maps `len` bytes; `vec` has one byte per page of them.
    let ok = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) } == 0;
    let mut out = Vec::new();
    if ok {
        let mut i = 0;
        while i < pages {
            if vec[i] & 1 == 0 {
                i += 1;
                continue;
            }
            let run = vec[i..].iter().take_while(|v| **v & 1 != 0).count();
            let at = i * PAGE as usize;
            // SAFETY: the run lies inside the mapping. The kernel maps its
            // resident pages in one call (no fault per page).
            let populated =
                unsafe { libc::madvise((addr as *mut u8).add(at).cast(), run * PAGE as usize, MADV_POPULATE_READ) }
                    == 0;
            if !populated {
                for p in i..i + run {
                    // SAFETY: page `p` lies inside the mapping; reading one
                    // byte of a resident page maps it without reading the
                    // disk.
                    unsafe { std::ptr::read_volatile((addr as *const u8).add(p * PAGE as usize)) };
                }
            }
            i += run;
        }
        let first = addr as u64 / PAGE;
        let mut entries = vec![0u8; pages * 8];
        if pagemap.read_exact_at(&mut entries, first * 8).is_ok() {
            for (i, e) in entries.chunks_exact(8).enumerate() {
                let word = u64::from_le_bytes(e.try_into().unwrap_or_default());
                let pfn = word & ((1 << 55) - 1);
                if vec[i] & 1 != 0 && word >> 63 == 1 && pfn != 0 {
                    out.push((i as u64, pfn));
                }
            }
        }
    }
    // SAFETY: `addr` and `len` are the mapping made above.
    unsafe { libc::munmap(addr, len) };
    ok.then_some(out)
}
