//! What the names and strings of a `PROCESSES` section may hold
//! (`spec/format.md` §7.9): a guest chooses them, and the host turns unit
//! and blob names into a directory and the files in it.

use crate::limits::{MAX_BLOB_NAME, MAX_NAME, MAX_RELEASE};

/// The suffix of every unit name.
const SERVICE: &str = ".service";

/// Checks that `name` is a unit name: a systemd service, 1..=255 bytes of
/// `[A-Za-z0-9:_.@-]` ending in `.service` with at least one byte before
/// it.
///
/// # Errors
/// A message naming what is wrong with the name.
///
/// # Example
/// ```
/// use pbr_format::check_unit_name;
/// assert!(check_unit_name("nginx.service").is_ok());
/// assert!(check_unit_name("getty@tty1.service").is_ok());
/// assert!(check_unit_name("nginx.socket").is_err());
/// assert!(check_unit_name("../x.service").is_err());
/// ```
pub fn check_unit_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME as usize {
        return Err(format!("unit name length {} is not in 1..={MAX_NAME}", name.len()));
    }
    if let Some(c) = name.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-'))) {
        return Err(format!("unit name {name:?} has character {c:?} outside [A-Za-z0-9:_.@-]"));
    }
    if name.len() <= SERVICE.len() || !name.ends_with(SERVICE) {
        return Err(format!("unit name {name:?} is not a service (NAME{SERVICE})"));
    }
    Ok(())
}

/// Checks that `name` is a blob name, as CRIU names its image files: 1..=64
/// bytes of `[A-Za-z0-9_.-]`, not starting with `.`. No such name leaves
/// the directory it is written into.
///
/// # Errors
/// A message naming what is wrong with the name.
///
/// # Example
/// ```
/// use pbr_format::check_blob_name;
/// assert!(check_blob_name("pstree.img").is_ok());
/// assert!(check_blob_name("pages-1.img").is_ok());
/// assert!(check_blob_name("../x").is_err());
/// assert!(check_blob_name("a/b").is_err());
/// assert!(check_blob_name(".hidden").is_err());
/// ```
pub fn check_blob_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_BLOB_NAME as usize {
        return Err(format!("blob name length {} is not in 1..={MAX_BLOB_NAME}", name.len()));
    }
    if let Some(c) = name.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("blob name {name:?} has character {c:?} outside [A-Za-z0-9_.-]"));
    }
    if name.starts_with('.') {
        return Err(format!("blob name {name:?} starts with '.'"));
    }
    Ok(())
}

/// Checks the kernel release or the CRIU version (`what`): 1..=64 bytes
/// with no control character.
pub(crate) fn check_release(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_RELEASE as usize {
        return Err(format!("{what} length {} is not in 1..={MAX_RELEASE}", s.len()));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("{what} {s:?} holds the control character {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_unit_names_are_refused() {
        let long = format!("{}.service", "a".repeat(247));
        assert_eq!(long.len(), 255);
        for n in ["", ".service", "nginx", "nginx.socket", "a/b.service", "../x.service", "a b.service", "a\0.service"]
        {
            assert!(check_unit_name(n).is_err(), "{n:?} accepted");
        }
        assert!(check_unit_name(&format!("a{long}")).is_err(), "256 bytes accepted");
        for n in ["a.service", "getty@tty1.service", "user-1000:x_y.service", "..service", long.as_str()] {
            assert!(check_unit_name(n).is_ok(), "{n:?} refused");
        }
    }

    #[test]
    fn hostile_blob_names_are_refused() {
        for n in ["", ".", "..", "../x", "a/b", "/etc", ".img", "a b", "a\\b", "ä.img", &"a".repeat(65)] {
            assert!(check_blob_name(n).is_err(), "{n:?} accepted");
        }
        for n in ["pstree.img", "core-1234.img", "pages-1.img", "a..b", "x", &"a".repeat(64)] {
            assert!(check_blob_name(n).is_ok(), "{n:?} refused");
        }
    }

    #[test]
    fn releases_hold_no_control_characters() {
        assert!(check_release("kernel", "6.1.0-28-cloud-amd64").is_ok());
        for s in ["", "6.1\n", "\u{1b}[31m", "a\u{85}b", &"9".repeat(65)] {
            assert!(check_release("kernel", s).is_err(), "{s:?} accepted");
        }
    }
}
