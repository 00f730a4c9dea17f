//! Key/value metadata (`spec/format.md` §7.4).

use crate::limits::MAX_NAME;

/// Checks that `key` is a metadata key: 1..=255 bytes of `[a-z0-9._-]`.
///
/// # Errors
/// Returns a message naming what is wrong with the key.
///
/// # Example
/// ```
/// use pbr_format::check_key;
/// assert!(check_key("guest.kernel").is_ok());
/// assert!(check_key("Guest Kernel").is_err());
/// ```
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_NAME as usize {
        return Err(format!("metadata key length {} is not in 1..={MAX_NAME}", key.len()));
    }
    if let Some(c) =
        key.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("metadata key '{key}' has character {c:?} outside [a-z0-9._-]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_key;

    #[test]
    fn keys() {
        assert!(check_key("qemu.machine").is_ok());
        assert!(check_key("a-b_c.9").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("Qemu").is_err());
        assert!(check_key("a b").is_err());
        assert!(check_key(&"a".repeat(256)).is_err());
    }
}
