//! The kernel's page tables of flags and counts, compressed for the trip.

use std::io::Write;

/// gzip (fast) of the whole of `path`.
pub fn gzip_file(path: &str) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut f, &mut gz).map_err(|e| format!("{path}: {e}"))?;
    gz.flush().map_err(|e| format!("{path}: {e}"))?;
    gz.finish().map_err(|e| format!("{path}: {e}"))
}
