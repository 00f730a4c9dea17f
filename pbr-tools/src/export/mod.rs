//! Exporting images to other formats.

pub mod raw;
