//! Checks of the regions a writer covers and of the names it records.

use crate::error::{Error, Result};
use crate::limits::{MAX_NAME, MAX_REGIONS};
use crate::region::Region;

pub(super) fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME as usize {
        return Err(Error::invalid(format!("{what} '{name}' is not 1..={MAX_NAME} bytes")));
    }
    Ok(())
}

pub(super) fn check_regions(regions: &[Region<'_>], page_size: u32) -> Result<()> {
    if regions.len() > MAX_REGIONS as usize {
        return Err(Error::invalid(format!("{} regions exceed {MAX_REGIONS}", regions.len())));
    }
    let ps = u64::from(page_size);
    let mut prev_end = 0u64;
    for (i, r) in regions.iter().enumerate() {
        check_name(&r.name, "region name")?;
        if r.base % ps != 0 || r.length % ps != 0 || r.length == 0 {
            return Err(Error::invalid(format!(
                "region '{}' base {:#x} length {:#x} is not a non-empty multiple of the page size",
                r.name, r.base, r.length
            )));
        }
        let end = r
            .base
            .checked_add(r.length)
            .ok_or_else(|| Error::invalid(format!("region '{}' ends beyond 2^64", r.name)))?;
        if i > 0 && r.base < prev_end {
            return Err(Error::invalid(format!("region '{}' overlaps or precedes the region before it", r.name)));
        }
        prev_end = end;
    }
    Ok(())
}
