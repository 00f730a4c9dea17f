//! Opening or converting any input allocates at most a small multiple of
//! its size plus a constant: a counting global allocator measures the peak
//! over the seeds, their mutants and hand-made claims of huge memory.

#[path = "../../pbr-format/tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::peak;

/// Bound: this multiple of the input size ...
const FACTOR: usize = 16;
/// ... plus this constant (I/O buffers, rayon's thread pool, tables).
const CONSTANT: usize = 8 << 20;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
}

fn check(kind: &str, inputs: &[Vec<u8>], run: fn(&[u8])) -> (f64, usize) {
    let mut worst = (0.0f64, 0usize);
    for data in inputs {
        let p = peak(|| run(data));
        assert!(p <= FACTOR * data.len() + CONSTANT, "{kind}: {} bytes of input made {p} bytes of heap", data.len());
        let ratio = p as f64 / data.len().max(1) as f64;
        if p > worst.1 {
            worst = (ratio, p);
        }
    }
    worst
}

fn mutants(seeds: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    let mut rng = pbr_fuzz::mutate::Rng::new(77);
    let mut v: Vec<Vec<u8>> = seeds.to_vec();
    v.extend((0..n).map(|i| pbr_fuzz::mutate::mutant(&seeds[i % seeds.len()], &mut rng)));
    v
}

/// A QEMU stream of under 100 bytes claiming a terabyte of RAM and sending
/// one zero page and one data page at its far end.
fn terabyte_claim() -> Vec<u8> {
    let mut s = b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0apc-q35-7.2".to_vec();
    s.extend_from_slice(b"\x01\x00\x00\x00\x02\x03ram\x00\x00\x00\x00\x00\x00\x00\x04");
    let tib = 1u64 << 40;
    s.extend_from_slice(&(tib | 4).to_be_bytes());
    s.extend_from_slice(b"\x06pc.ram");
    s.extend_from_slice(&tib.to_be_bytes());
    s.extend_from_slice(&0x10u64.to_be_bytes());
    s.extend_from_slice(b"\x7e\x00\x00\x00\x02\x02\x00\x00\x00\x02");
    s.extend_from_slice(&((tib - 4096) | 2).to_be_bytes());
    s.extend_from_slice(b"\x06pc.ram\x00");
    s.extend_from_slice(&0x10u64.to_be_bytes());
    s.push(0);
    s
}

/// An xl file of two pages, at pfn 0 and at the top of the 52-bit
/// physical address space.
fn xl_far_pages() -> Vec<u8> {
    let mut s = pbr_fuzz::xl_save::preamble();
    s.extend_from_slice(&[0x10, 0, 0, 0, 0, 0, 0, 0]);
    s.extend_from_slice(&1u32.to_le_bytes());
    s.extend_from_slice(&(8u32 + 16 + 8192).to_le_bytes());
    s.extend_from_slice(&2u32.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes());
    s.extend_from_slice(&0u64.to_le_bytes());
    s.extend_from_slice(&((1u64 << 40) - 1).to_le_bytes());
    s.extend_from_slice(&[0x11; 8192]);
    s.extend_from_slice(&[0; 8]);
    s.extend_from_slice(&[0; 8]);
    s
}

#[test]
fn allocations_are_bounded_by_input_size() {
    let img_inputs = mutants(&seeds("pbr_image"), 300);
    let (r1, p1) = check("pbr open+verify", &img_inputs, pbr_fuzz::pbr_image::run);
    let mut q = mutants(&seeds("qemu_stream"), 200);
    q.push(terabyte_claim());
    let (r2, p2) = check("qemu convert", &q, |d| {
        let out = tempfile::NamedTempFile::new().unwrap();
        let opts = pbr_tools::qemu::ConvertOptions { no_sync: true, ..Default::default() };
        let _ = pbr_tools::qemu::convert(d, None, out.path(), &opts, &|_| {});
    });
    let mut x = mutants(&seeds("xl_save"), 200);
    x.push(xl_far_pages());
    let (r3, p3) = check("xl convert", &x, |d| {
        let out = tempfile::NamedTempFile::new().unwrap();
        let opts = pbr_tools::xen::ConvertOptions { no_sync: true, ..Default::default() };
        let _ = pbr_tools::xen::convert(d, out.path(), &opts, &|_| {});
    });
    let far = xl_far_pages();
    let p_far = peak(|| {
        let out = tempfile::NamedTempFile::new().unwrap();
        let opts = pbr_tools::xen::ConvertOptions { no_sync: true, ..Default::default() };
        pbr_tools::xen::convert(&far[..], out.path(), &opts, &|_| {}).unwrap();
    });
    assert!(p_far < 4 << 20, "a {}-byte xl file with pages 4 PiB apart made {p_far} bytes of heap", far.len());
    let claim = terabyte_claim();
    let p = peak(|| {
        let out = tempfile::NamedTempFile::new().unwrap();
        let opts = pbr_tools::qemu::ConvertOptions { no_sync: true, ..Default::default() };
        pbr_tools::qemu::convert(&claim[..], None, out.path(), &opts, &|_| {}).unwrap();
    });
    assert!(p < 4 << 20, "a {}-byte stream claiming 1 TiB made {p} bytes of heap", claim.len());
    eprintln!(
        "allocation bound: pbr worst peak {} KiB ({r1:.1}x its input), qemu worst peak {} KiB ({r2:.1}x), 1 TiB claim in {} bytes: {} KiB; xl worst peak {} KiB ({r3:.1}x), pages 4 PiB apart in {} bytes: {} KiB",
        p1 >> 10,
        p2 >> 10,
        claim.len(),
        p >> 10,
        p3 >> 10,
        far.len(),
        p_far >> 10
    );
}
