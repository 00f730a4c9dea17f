//! `s3://BUCKET/PREFIX/NAME`: where an image lives in a store. The bucket
//! and prefix name the store (its images and the chunks they share); the
//! last segment names the image.

use crate::error::{Error, Result};

/// A store, and optionally one image in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The bucket.
    pub bucket: String,
    /// The store's prefix in the bucket: empty, or segments joined by `/`.
    pub prefix: String,
    /// The image's name, if the address names one.
    pub name: Option<String>,
}

/// Whether `s` is an `s3://` address.
pub fn is_s3(s: &str) -> bool {
    s.starts_with("s3://")
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX...]/NAME` (an image: `image` true) or
    /// `s3://BUCKET[/PREFIX...][/]` (a store).
    ///
    /// # Errors
    /// Not `s3://`, no bucket, an empty, `.` or `..` segment, or a byte
    /// outside `A-Z a-z 0-9 - _ .`.
    pub fn parse(s: &str, image: bool) -> Result<Location> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| Error::Url(format!("{s:?} is not an s3:// address")))?;
        let rest = if image { rest } else { rest.trim_end_matches('/') };
        let segments: Vec<&str> = rest.split('/').collect();
        for seg in &segments {
            let ok = !seg.is_empty()
                && *seg != "."
                && *seg != ".."
                && seg.len() <= 255
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(Error::Url(format!(
                    "{s:?}: segment {seg:?} is not 1 to 255 of A-Z a-z 0-9 - _ . (and not . or ..)"
                )));
            }
        }
        let (bucket, path) = segments.split_first().ok_or_else(|| Error::Url(format!("{s:?} names no bucket")))?;
        let (name, prefix) = match (image, path.split_last()) {
            (true, Some((name, prefix))) => (Some((*name).to_owned()), prefix.join("/")),
            (true, None) => return Err(Error::Url(format!("{s:?} names a bucket, not an image (s3://BUCKET/NAME)"))),
            (false, _) => (None, path.join("/")),
        };
        Ok(Location { bucket: (*bucket).to_owned(), prefix, name })
    }

    /// The key of `rest` under the store's prefix.
    pub fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() { rest.to_owned() } else { format!("{}/{rest}", self.prefix) }
    }

    /// The address of image `name` in this store.
    pub fn image(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let l = Location::parse("s3://fleet/web/prod/vm1-daemons", true).unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str(), l.name.as_deref()),
            ("fleet", "web/prod", Some("vm1-daemons"))
        );
        assert_eq!(l.key("images/x.idx"), "web/prod/images/x.idx");
        let store = Location::parse("s3://fleet/web/", false).unwrap();
        assert_eq!((store.prefix.as_str(), store.name.as_deref()), ("web", None));
        assert_eq!(Location::parse("s3://fleet", false).unwrap().key("chunks/a"), "chunks/a");
        assert_eq!(store.image("vm2"), "s3://fleet/web/vm2");
        for bad in ["/tmp/x", "s3://", "s3://fleet", "s3://fleet/../x", "s3://fleet//x", "s3://fl eet/x", "s3://f/x/"] {
            assert!(Location::parse(bad, true).is_err(), "{bad}");
        }
    }
}
