//! `cargo bench -p pbr-format --bench open_read`
//!
//! 1. `open` + an inspect-style summary of sparse images of 1 to 64 GiB of
//!    guest memory holding the same 16 MiB of data: the time must stay flat,
//!    because opening reads the index, never page data.
//! 2. Reading every raw page of a 256 MiB image through the map (zero copy)
//!    against plain `pread(2)` of the same bytes into a buffer.

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pbr_format::{Image, ImageWriter, PageClass, Region, WriterOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<R>(runs: usize, mut f: impl FnMut() -> R) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn page(i: u64) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8 | 1; 4096];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn write_image(path: &Path, guest: u64, data_pages: u64) {
    let regions = [Region::ram("pc.ram", 0, guest)];
    let mut w = ImageWriter::create(path, &regions, WriterOptions::default()).unwrap();
    for i in 0..data_pages {
        let class = if i % 7 == 0 { PageClass::User } else { PageClass::Kernel };
        w.write_page(i, &page(i), class).unwrap();
    }
    w.finish().unwrap();
}

fn summary(img: &Image) -> u64 {
    let counts = img.page_counts();
    let runs = img.raw_runs().len() as u64;
    counts.iter().flatten().sum::<u64>() + runs + img.vcpus().len() as u64
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var_os("PBR_BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    println!("open + summary of sparse images with 16 MiB of data (median of 50)");
    println!("{:>10} {:>12} {:>12} {:>14}", "guest", "file", "extents", "open+summary");
    let mut first = None;
    for gib in [1u64, 4, 16, 64] {
        let path = dir.path().join(format!("{gib}g.pbr"));
        write_image(&path, gib << 30, 4096);
        let img = Image::open(&path).unwrap();
        let (len, extents) = (img.file_len(), img.extent_count());
        drop(img);
        let t = time(50, || summary(&Image::open(&path).unwrap()));
        let base = *first.get_or_insert(t);
        println!(
            "{:>7} GiB {:>9} KiB {:>12} {:>11.1} us  ({:.2}x the 1 GiB time)",
            gib,
            len >> 10,
            extents,
            t.as_secs_f64() * 1e6,
            t.as_secs_f64() / base.as_secs_f64()
        );
    }

    let pages = 65536u64;
    let path = dir.path().join("data.pbr");
    write_image(&path, pages * 4096, pages);
    let img = Image::open(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let offsets: Vec<u64> =
        (0..pages).map(|g| img.extent_of(g).unwrap().data + (g - img.extent_of(g).unwrap().gfn) * 4096).collect();
    let mut buf = vec![0u8; 4096];
    let mut sink = 0u64;
    // Warm the page cache and the map.
    for g in 0..pages {
        sink += u64::from(img.read_page(g, &mut buf).unwrap()[8]);
    }
    let mapped = time(7, || {
        let mut s = 0u64;
        for g in 0..pages {
            let p = img.read_page(g, &mut buf).unwrap();
            s += p.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>();
        }
        s
    });
    let pread = time(7, || {
        let mut s = 0u64;
        for &off in &offsets {
            file.read_exact_at(&mut buf, off).unwrap();
            s += buf.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>();
        }
        s
    });
    let mb = (pages * 4096) as f64 / (1 << 20) as f64;
    println!();
    println!("reading every page of a 256 MiB image, touching each cache line (median of 7, warm cache)");
    println!("  map (zero copy): {:>8.1} MiB/s", mb / mapped.as_secs_f64());
    println!("  pread(2):        {:>8.1} MiB/s", mb / pread.as_secs_f64());
    println!("  map / pread = {:.2}x", pread.as_secs_f64() / mapped.as_secs_f64());
    black_box(sink);
}
