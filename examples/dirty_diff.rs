//! Make a diff image from a VMM's dirty bitmap.
//!
//! `cargo run --release -p pbr-examples --example dirty_diff -- BASE.pbr OUT.pbr`
//!
//! Restores `BASE.pbr` into a vm-memory guest memory, lets "the guest"
//! write two pages (here: the example writes them, tracking a dirty bitmap
//! as a VMM's KVM dirty log would), and writes `OUT.pbr`: a diff image that
//! stores only those pages and names the base by its content hash.
//! `pbr-img apply BASE.pbr OUT.pbr -o FULL.pbr` rebuilds the full image.

use vm_memory::{Bytes, GuestAddress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (base_path, out) = match (args.next(), args.next()) {
        (Some(b), Some(o)) => (b, o),
        _ => return Err("usage: dirty_diff BASE.pbr OUT.pbr".into()),
    };
    let base = pbr_format::Image::open(&base_path)?;
    let mem = pbr_format::vm_memory::guest_memory(&base, &std::fs::File::open(&base_path)?)?;
    let mut dirty = std::collections::BTreeSet::new();
    for gfn in [1u64, 2] {
        mem.write_slice(&[0x5a; 4096], GuestAddress(gfn * 4096))?;
        dirty.insert(gfn);
    }
    let is_dirty = |gfn: u64| dirty.contains(&gfn);
    let report = pbr_format::vm_memory::write_image(&mem, out.as_ref(), Default::default(), Some((&base, &is_dirty)))?;
    println!("{out}: {} pages stored, {} bytes; the rest stays in {base_path}", report.stored_pages, report.file_len);
    Ok(())
}
