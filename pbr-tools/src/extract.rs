//! `extract`: one device blob, or a range of guest pages, out of an image.

use std::io::Write;
use std::ops::Range;

use pbr_format::{DeviceBlob, Image};

use crate::error::{Error, Result};

/// The device blob `spec` names: `NAME`, `NAME.INSTANCE`, or `#K` for the
/// K-th blob as `inspect` lists them (from 0).
///
/// # Errors
/// No blob, or several, match (the error lists them).
pub fn find_device<'a>(image: &'a Image, spec: &str) -> Result<DeviceBlob<'a>> {
    let blobs: Vec<DeviceBlob<'a>> = image.devices().collect();
    if let Some(k) = spec.strip_prefix('#') {
        let k: usize = k.parse().map_err(|_| Error::Usage(format!("--device {spec}: expected #K, K a number")))?;
        let n = blobs.len();
        return blobs
            .into_iter()
            .nth(k)
            .ok_or_else(|| Error::Usage(format!("--device {spec}: the image has {n} device blobs")));
    }
    let matches: Vec<(usize, &DeviceBlob<'a>)> = blobs
        .iter()
        .enumerate()
        .filter(|(_, b)| b.name == spec || format!("{}.{}", b.name, b.instance) == spec)
        .collect();
    match matches.as_slice() {
        [(i, _)] => Ok(blobs[*i].clone()),
        [] => Err(Error::Usage(format!("--device {spec}: no device blob of that name (`pbr-img inspect` lists them)"))),
        many => {
            let list: Vec<String> =
                many.iter().take(8).map(|(i, b)| format!("#{i} {} {}.{}", b.origin, b.name, b.instance)).collect();
            Err(Error::Usage(format!(
                "--device {spec} matches {} blobs ({}{}): name one as #K",
                many.len(),
                list.join(", "),
                if many.len() > 8 { ", ..." } else { "" }
            )))
        }
    }
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a page range: `FIRST-LAST` (inclusive) or `FIRST+COUNT`, guest
/// frame numbers in decimal or `0x` hex.
///
/// # Errors
/// Anything else, an empty range, or one that overflows.
pub fn parse_range(s: &str) -> Result<Range<u64>> {
    let bad = || Error::Usage(format!("--pages {s}: expected FIRST-LAST or FIRST+COUNT (frame numbers)"));
    let r = if let Some((a, n)) = s.split_once('+') {
        let a = number(a).ok_or_else(bad)?;
        a..a.checked_add(number(n).ok_or_else(bad)?).ok_or_else(bad)?
    } else if let Some((a, b)) = s.split_once('-') {
        number(a).ok_or_else(bad)?..number(b).ok_or_else(bad)?.checked_add(1).ok_or_else(bad)?
    } else {
        let a = number(s).ok_or_else(bad)?;
        a..a.checked_add(1).ok_or_else(bad)?
    };
    if r.is_empty() {
        return Err(bad());
    }
    Ok(r)
}

/// Writes the content of guest pages `range` to `out`, page after page
/// (zero, trimmed and absent pages as zeros). Returns the bytes written.
///
/// # Errors
/// A range that starts or ends outside the image's regions or is longer
/// than the image's pages, a corrupt page, I/O.
pub fn write_pages(image: &Image, range: Range<u64>, mut out: impl Write) -> Result<u64> {
    let ps = u64::from(image.page_size());
    let inside = |gfn: u64| {
        image.regions().iter().any(|r| {
            (r.first_gfn(image.page_size())..r.first_gfn(image.page_size()) + r.pages(image.page_size())).contains(&gfn)
        })
    };
    if !inside(range.start) || !inside(range.end - 1) || range.end - range.start > image.page_count() {
        return Err(Error::Usage(format!(
            "--pages {:#x}-{:#x}: both ends must lie in the image's regions and the range may not be longer than its {} pages (`pbr-img inspect` lists the regions)",
            range.start,
            range.end - 1,
            image.page_count()
        )));
    }
    let zero = vec![0u8; ps as usize];
    let mut buf = vec![0u8; ps as usize];
    for gfn in range.clone() {
        let page = match image.extent_of(gfn) {
            Ok(_) => image.read_page(gfn, &mut buf)?,
            Err(_) => &zero[..],
        };
        out.write_all(page).map_err(|e| Error::io("cannot write the pages", e))?;
    }
    out.flush().map_err(|e| Error::io("cannot write the pages", e))?;
    Ok((range.end - range.start) * ps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0x10-0x1f").unwrap(), 0x10..0x20);
        assert_eq!(parse_range("16+4").unwrap(), 16..20);
        assert_eq!(parse_range("7").unwrap(), 7..8);
        for bad in ["", "a-b", "5-4", "1+0", "18446744073709551615+2", "-"] {
            assert!(matches!(parse_range(bad), Err(Error::Usage(_))), "{bad}");
        }
    }
}
