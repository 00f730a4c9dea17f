//! Xen `xl save` files (the xl header, the libxl v2 stream and the libxc
//! v2/v3 stream inside it): import into `.pbr` and export back
//! (`spec/xen.md`).
//!
//! Import reads forward only, so it works on pipes. Pages go straight to
//! the image writer; every other record is kept as a device blob in stream
//! order, `PAGE_DATA` records as their pfn/type *shape*, so export writes
//! the same stream again. A stream names no memory layout before its
//! pages, so the image's regions are the runs of pages the stream
//! populated, set when it ends.

pub mod export;
mod format;
pub mod hvm;
mod import;
pub mod pages;
pub mod pv;
pub mod record;
mod summary;

pub use format::{
    BYTE_ORDER_LE, DOMAIN_HVM, DOMAIN_PV, LIBXC_IDENT, LIBXC_MARKER, LIBXL_IDENT, LIBXL_RECORD_MAX, OPTIONAL_DATA_MAX,
    REC_LENGTH_MAX, XL_FLAG_JSON, XL_FLAG_STREAM_V2, XL_MAGIC, blob,
};
pub use import::{Checkpoints, ConvertOptions, ConvertReport, checkpoint_path, convert};
pub use summary::summary;
