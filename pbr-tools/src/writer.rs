//! The writer options of the images the converters write, shared by every
//! import (QEMU, libvirt, xl) so that their images name the same producer.

/// Writer options of an image a converter writes: `pbr-img` as producer,
/// a blake3 per page when asked, fsync unless the output is scratch.
pub fn options(page_hashes: bool, sync: bool) -> pbr_format::WriterOptions {
    pbr_format::WriterOptions {
        producer_name: "pbr-img".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        page_hashes,
        sync,
        ..pbr_format::WriterOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_producer_and_keeps_the_choices() {
        let o = options(true, false);
        assert_eq!(o.producer_name, "pbr-img");
        assert!(o.page_hashes && !o.sync);
        let o = options(false, true);
        assert!(!o.page_hashes && o.sync);
    }
}
