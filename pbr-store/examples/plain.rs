//! The store's client moving one file as one object, as a plain S3 upload
//! or download does: what `bench/fleet.sh` measures `push` and `pull`
//! against.
//!
//! `plain put FILE s3://BUCKET/PREFIX/KEY` and `plain get s3://... FILE`;
//! prints the seconds it took.

use std::time::Instant;

use pbr_store::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (op, url, file) = match args.as_slice() {
        [op, a, b] if op == "put" => (op.as_str(), b.as_str(), a.as_str()),
        [op, a, b] if op == "get" => (op.as_str(), a.as_str(), b.as_str()),
        _ => return Err("usage: plain put FILE s3://BUCKET/PREFIX/KEY | plain get s3://BUCKET/PREFIX/KEY FILE".into()),
    };
    let store = Store::at(url, true)?;
    let key = store.location.name.clone().unwrap_or_default();
    let t = Instant::now();
    if op == "put" {
        store.put(&key, std::fs::read(file)?)?;
    } else {
        let bytes = store.get(&key)?.ok_or("no such object")?;
        std::fs::write(file, bytes)?;
    }
    println!("{}", t.elapsed().as_secs_f64());
    Ok(())
}
