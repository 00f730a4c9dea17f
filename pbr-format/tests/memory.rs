//! The writer's memory stays bounded: a 16 GiB guest is written with well
//! under 64 MiB of heap. A counting global allocator measures the peak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use pbr_format::{Image, ImageWriter, PageClass, Region, WriterOptions};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counters are global: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn sixteen_gib_guest_writes_under_64_mib() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pbr");
    let gib = 1u64 << 30;
    let regions = [Region::ram("pc.ram", 0, 2 * gib), Region::ram("pc.ram-high", 4 * gib, 14 * gib)];
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut w = ImageWriter::create(&path, &regions, WriterOptions::default()).unwrap();
    // A page every 2 MiB across all 16 GiB, in descending order, with classes.
    let page = vec![0xA5u8; 4096];
    for i in (0..8192u64).rev() {
        let gfn = if i < 1024 { i * 512 } else { ((4 * gib) >> 12) + (i - 1024) * 512 };
        w.write_page(gfn, &page, PageClass::ALL[(i % 5) as usize]).unwrap();
    }
    w.finish().unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(peak < 64 << 20, "peak heap {} MiB", peak >> 20);
    let img = Image::open(&path).unwrap();
    assert_eq!(img.page_count(), 16 * gib / 4096);
    assert_eq!(img.stored_page_count(), 8192);
    eprintln!("16 GiB guest: peak writer heap {} MiB, file {} KiB", peak >> 20, img.file_len() >> 10);
}

#[test]
fn claimed_memory_is_not_allocated() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claim.pbr");
    let regions = [Region::ram("pc.ram", 0, 1 << 40)];
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut w = ImageWriter::create(&path, &regions, WriterOptions::default()).unwrap();
    w.write_page(12345, &[1u8; 4096], PageClass::Kernel).unwrap();
    w.finish().unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(peak < 4 << 20, "a 1 TiB region with one page cost {peak} bytes of heap");
    let img = Image::open(&path).unwrap();
    assert_eq!(img.extent_count(), 3);
}
