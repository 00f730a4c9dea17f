//! A stored image's RAM served as a file, fetched as it is read: a FUSE
//! mount holding one read-only file, `ram`, the bytes of the image's
//! `pc.ram` block from its offset 0. QEMU maps it (`memory-backend-file`,
//! private), so a page comes from the store when the guest first touches
//! it. Every read is served from chunks checked against their names: a
//! missing or damaged chunk fails the read (QEMU then stops on a bus
//! error), it never yields other bytes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use pbr_format::{Image, PageClass};

use crate::error::{Error, Result};
use crate::pages::{ChunkReader, Fetched, Page, PageMap};

/// The name of the one file of the mount.
pub const RAM_FILE: &str = "ram";
/// The RAM block the file holds.
pub const MAIN_RAM: &str = "pc.ram";
/// Bytes of the file read at once when the whole RAM is brought in: what
/// the kernel reads around a fault in a mapping QEMU asks huge pages for
/// (two 2 MiB huge pages).
const WINDOW: u64 = 4 << 20;
/// Threads reading it.
const FILLERS: usize = 2;
/// How long the kernel may keep what it was told.
const TTL: Duration = Duration::from_secs(3600);
const RAM_INO: INodeNo = INodeNo(2);

/// What the mount serves: the `pc.ram` block of one stored image.
#[derive(Debug)]
struct Served {
    map: PageMap,
    reader: ChunkReader,
    /// Per `pc.ram` region: its offset in the block, length, first frame.
    ram: Vec<(u64, u64, u64)>,
    size: u64,
    page_size: u64,
    /// Reads served, and the first read that failed.
    reads: AtomicU64,
    failed: Mutex<Option<String>>,
    /// Set once what is served is of no use ([`RamMount::stop`]).
    stopped: AtomicBool,
}

impl Served {
    /// The frame at byte `off` of the block, if a region holds it.
    fn gfn_at(&self, off: u64) -> Option<u64> {
        self.ram
            .iter()
            .find(|&&(src, len, _)| off >= src && off - src < len)
            .map(|&(src, _, first)| first + (off - src) / self.page_size)
    }

    /// Bytes `offset .. offset + size` of the block (fewer past its end).
    fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Error::Served("the mount was stopped".into()));
        }
        let end = offset.saturating_add(u64::from(size)).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let ps = self.page_size;
        let (first, last) = (offset / ps, (end - 1) / ps);
        let places: Vec<Page> =
            (first..=last).map(|p| self.gfn_at(p * ps).map_or(Page::Zero, |g| self.map.locate(g))).collect();
        let mut buf = self.reader.gather(&places)?;
        let skip = (offset - first * self.page_size) as usize;
        buf.drain(..skip);
        buf.truncate((end - offset) as usize);
        Ok(buf)
    }

    /// The offsets of the file's [`WINDOW`]s, those holding the most
    /// urgent pages first: kernel, user, unclassified, page cache, free,
    /// then the rest (only zero pages), in order within a rank.
    fn urgent_windows(&self) -> Vec<u64> {
        let rank = |c: PageClass| match c {
            PageClass::Kernel => 0u8,
            PageClass::User => 1,
            PageClass::Unknown => 2,
            PageClass::Cache => 3,
            PageClass::Free => 4,
        };
        let mut ranks = vec![u8::MAX; self.size.div_ceil(WINDOW) as usize];
        for (gfn, count, class) in self.map.data_runs() {
            for &(src, len, first) in &self.ram {
                let pages = len / self.page_size;
                let (a, b) = (gfn.max(first), (gfn + u64::from(count)).min(first + pages));
                if a >= b {
                    continue;
                }
                let (from, to) = (src + (a - first) * self.page_size, src + (b - first) * self.page_size);
                for w in from / WINDOW..to.div_ceil(WINDOW) {
                    if let Some(r) = ranks.get_mut(w as usize) {
                        *r = (*r).min(rank(class));
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..ranks.len()).collect();
        order.sort_by_key(|&w| ranks[w]);
        order.into_iter().map(|w| w as u64 * WINDOW).collect()
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o500, 0, 2),
            RAM_INO => (FileType::RegularFile, 0o400, self.size, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: own_uid(),
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

/// The user the mount's files belong to: the one who mounted it.
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// The most bytes of `pc.ram` served: 1 TiB.
const MAX_RAM: u64 = 1 << 40;

/// An image's `pc.ram` block as its regions lay it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamBlock {
    /// Per region, in block order: its offset in the block, length, first
    /// frame.
    pub regions: Vec<(u64, u64, u64)>,
    /// The block's size.
    pub size: u64,
}

impl RamBlock {
    /// The `pc.ram` block of `image`: its regions must cover it one after
    /// another from 0, page-aligned, without holes or overlaps (the file's
    /// bytes are theirs, one to one), and it is at most 1 TiB.
    ///
    /// # Errors
    /// It has no such block, or its regions break those rules.
    pub fn of(image: &Image) -> Result<RamBlock> {
        let ps = u64::from(image.page_size());
        let mut regions: Vec<(u64, u64, u64)> = image
            .regions()
            .iter()
            .filter(|r| r.name == MAIN_RAM)
            .map(|r| (r.source_offset, r.length, r.first_gfn(image.page_size())))
            .collect();
        regions.sort_unstable();
        let mut size = 0u64;
        for &(src, len, _) in &regions {
            if src != size || len % ps != 0 || len > MAX_RAM - size {
                return Err(Error::Unsupported(format!(
                    "the image's {MAIN_RAM} regions are not one block of at most 1 TiB, one region after the \
                     other from 0 (one at {src:#x}, {len:#x} bytes)"
                )));
            }
            size += len;
        }
        if size == 0 {
            return Err(Error::Unsupported(format!(
                "the image has no {MAIN_RAM} block to map: only a QEMU guest's image is restored from the store as it runs"
            )));
        }
        Ok(RamBlock { regions, size })
    }

    /// Whether frame `gfn` is in the block.
    pub fn holds(&self, gfn: u64, page_size: u32) -> bool {
        self.regions.iter().any(|&(_, len, first)| gfn >= first && gfn - first < len / u64::from(page_size))
    }
}

/// The FUSE file system over [`Served`].
struct RamFs(Arc<Served>);

impl Filesystem for RamFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger reads, fewer round trips (the kernel may offer less).
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match (parent, self.0.attr(RAM_INO)) {
            (INodeNo::ROOT, Some(attr)) if name == RAM_FILE => reply.entry(&TTL, &attr, fuser::Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != RAM_INO {
            reply.error(Errno::EISDIR);
        } else if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
        } else {
            // What was read stays cached across opens: it never changes.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != RAM_INO {
            return reply.error(Errno::EISDIR);
        }
        self.0.reads.fetch_add(1, Ordering::Relaxed);
        match self.0.read(offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => {
                let mut failed = self.0.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                failed.get_or_insert_with(|| format!("bytes {offset:#x}+{size:#x} of the RAM: {e}"));
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (RAM_INO, FileType::RegularFile, RAM_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted stored image's RAM. Unmounted when dropped.
pub struct RamMount {
    served: Arc<Served>,
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
    /// Detaches the mount if the tool is interrupted.
    _interrupt: pbr_tools::cleanup::Registration,
}

impl std::fmt::Debug for RamMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamMount").field("path", &self.path).field("size", &self.served.size).finish_non_exhaustive()
    }
}

impl RamMount {
    /// Mounts the `pc.ram` block of the image whose skeleton is `skeleton`
    /// (its regions) and whose pages `map` places in `reader`'s chunks, on
    /// the empty directory `dir`.
    ///
    /// # Errors
    /// The image has no `pc.ram` block (only a QEMU guest's image is
    /// restored this way), or the mount failed.
    pub fn mount(skeleton: &Image, map: PageMap, reader: ChunkReader, dir: &Path) -> Result<RamMount> {
        let RamBlock { regions: ram, size } = RamBlock::of(skeleton)?;
        let ps = u64::from(skeleton.page_size());
        let served = Arc::new(Served {
            map,
            reader,
            ram,
            size,
            page_size: ps,
            reads: AtomicU64::new(0),
            failed: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let mut config = fuser::Config::default();
        config.mount_options =
            vec![fuser::MountOption::RO, fuser::MountOption::FSName("pbr-store".into()), fuser::MountOption::NoExec];
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(RamFs(served.clone()), dir, &config)
            .map_err(|e| Error::io(format!("cannot mount the store's RAM file on {}", dir.display()), e))?;
        let interrupt = pbr_tools::cleanup::unmount_on_interrupt(dir);
        Ok(RamMount { served, path: dir.join(RAM_FILE), session: Some(session), _interrupt: interrupt })
    }

    /// The RAM file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size: the `pc.ram` block's.
    pub fn size(&self) -> u64 {
        self.served.size
    }

    /// Reads served so far.
    pub fn reads(&self) -> u64 {
        self.served.reads.load(Ordering::Relaxed)
    }

    /// What its chunk reader has fetched so far.
    pub fn fetched(&self) -> Fetched {
        self.served.reader.fetched()
    }

    /// Stops serving: every read from now on fails at once, and a fill
    /// ends (what it would fetch is of no use: the restore failed, or its
    /// guest is gone).
    pub fn stop(&self) {
        self.served.stopped.store(true, Ordering::Relaxed);
    }

    /// The first read that failed, if one did.
    pub fn failed(&self) -> Option<String> {
        self.served.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Reads the whole file through the mount, 4 MiB at a time on two
    /// threads, the windows a restored guest is likely to
    /// touch first ahead (those holding kernel pages, then user pages,
    /// then unclassified, page cache, free pages, then the rest): the
    /// kernel then holds every page QEMU maps, each fetched and checked
    /// once, and the chunk cache every chunk.
    ///
    /// # Errors
    /// A read failed (a chunk is missing or damaged, the store failed), or
    /// the mount was stopped ([`RamMount::stop`]) first.
    pub fn fill(&self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let windows = self.served.urgent_windows();
        let f = std::fs::File::open(&self.path).map_err(|e| Error::io("cannot open the RAM file", e))?;
        let next = AtomicU64::new(0);
        let fill = || -> Result<()> {
            let mut buf = vec![0u8; WINDOW as usize];
            loop {
                if self.served.stopped.load(Ordering::Relaxed) {
                    return Err(Error::Served("the mount was stopped".into()));
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&at) = windows.get(i) else { return Ok(()) };
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(&mut buf[done..], at + done as u64).map_err(|e| match self.failed() {
                        Some(why) => Error::Served(why),
                        None => Error::io(format!("cannot read the RAM file at {:#x}", at + done as u64), e),
                    })?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
            }
        };
        std::thread::scope(|s| {
            let others: Vec<_> = (1..FILLERS).map(|_| s.spawn(fill)).collect();
            let mut r = fill();
            for t in others {
                let t = t.join().unwrap_or_else(|_| Err(Error::Damaged("a reader of the RAM file panicked".into())));
                r = r.and(t);
            }
            r
        })
    }
}

impl Drop for RamMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
