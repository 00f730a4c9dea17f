//! Which QEMU may restore a candidate another QEMU saved.
//!
//! QEMU loads the migration stream of a versioned machine type (such as
//! `pc-q35-7.2`) in any later release that still provides that machine
//! type; it promises nothing for an older release, or for an unversioned
//! type (`microvm`, `isapc`). A candidate records the machine type its
//! stream was saved with (`qemu.machine`), and the restore pins it on the
//! command line ([`pin_machine`]): `-machine q35` would otherwise mean the
//! restoring release's newest type.

use pbr_format::keys;
use std::process::Command;

/// The QEMU that would restore: its version and the machine types it
/// provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuHost {
    /// `qemu --version`'s number (`10.0.2`).
    pub version: String,
    /// Every machine type `qemu -machine help` lists.
    pub machines: Vec<String>,
}

impl QemuHost {
    /// Asks the binary `qemu` (once per process and binary: a recovery asks
    /// before its decision).
    ///
    /// # Errors
    /// `qemu` does not run or does not say its version.
    pub fn of(qemu: &str) -> Result<QemuHost, String> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static SEEN: OnceLock<Mutex<HashMap<String, QemuHost>>> = OnceLock::new();
        let seen = SEEN.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(h) = seen.lock().ok().and_then(|m| m.get(qemu).cloned()) {
            return Ok(h);
        }
        let version = qemu_full_version(qemu).ok_or_else(|| format!("cannot run {qemu} --version"))?;
        let out = Command::new(qemu)
            .args(["-machine", "help"])
            .output()
            .map_err(|e| format!("cannot run {qemu} -machine help: {e}"))?;
        let host = QemuHost { version, machines: parse_machines(&String::from_utf8_lossy(&out.stdout)) };
        if let Ok(mut m) = seen.lock() {
            m.insert(qemu.to_owned(), host.clone());
        }
        Ok(host)
    }

    /// Whether this QEMU may load a stream that QEMU `saved_by` wrote with
    /// machine type `machine`: the same release, or a later one that still
    /// provides that versioned machine type.
    ///
    /// # Errors
    /// Why not, in one line.
    pub fn may_load(&self, saved_by: &str, machine: Option<&str>) -> Result<(), String> {
        if saved_by.is_empty() || saved_by == self.version {
            return Ok(());
        }
        let (then, now) = (numbers(saved_by), numbers(&self.version));
        if now < then {
            return Err(format!(
                "saved by QEMU {saved_by}, restored by QEMU {}, which is older: a stream loads only into the same or a later QEMU",
                self.version
            ));
        }
        let Some(machine) = machine.filter(|m| !m.is_empty()) else {
            return Err(format!(
                "saved by QEMU {saved_by}, restored by QEMU {}: the candidate records no machine type to keep",
                self.version
            ));
        };
        if !is_versioned(machine) {
            return Err(format!(
                "saved by QEMU {saved_by} with machine type {machine}, which is not versioned: only QEMU {saved_by} restores it"
            ));
        }
        if !self.machines.iter().any(|m| m == machine) {
            return Err(format!(
                "saved by QEMU {saved_by} with machine type {machine}, which QEMU {} no longer provides",
                self.version
            ));
        }
        Ok(())
    }
}

/// `qemu --version`'s version number (`7.2.22`). QEMU is asked once per
/// binary and process: a recovery asks before its decision, so that the
/// timed restore does not start a process to learn it.
pub fn qemu_full_version(qemu: &str) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = seen.lock().ok().and_then(|m| m.get(qemu).cloned()) {
        return v;
    }
    let v = Command::new(qemu).arg("--version").output().ok().and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout);
        Some(text.split("version ").nth(1)?.split_whitespace().next()?.to_owned())
    });
    if let Ok(mut m) = seen.lock() {
        m.insert(qemu.to_owned(), v.clone());
    }
    v
}

/// The machine types of `qemu -machine help`: the first word of each line
/// after the heading.
fn parse_machines(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| !l.starts_with("Supported machines"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A version's numbers: `7.2.22` is `[7, 2, 22]` (a suffix such as
/// `(Debian ...)` or `-rc1` ends it).
fn numbers(version: &str) -> Vec<u32> {
    version.split('.').map_while(|p| p.parse().ok()).collect()
}

/// Whether a machine type names the release whose layout it keeps:
/// `pc-q35-7.2`, `pc-i440fx-10.0`.
fn is_versioned(machine: &str) -> bool {
    machine.rsplit_once('-').is_some_and(|(_, v)| {
        let n = numbers(v);
        n.len() >= 2 && v.split('.').count() == n.len()
    })
}

/// `args` (a command line the image records, or a user's) made to
/// restore `image`: its machine type pinned to the one its stream was
/// saved with ([`pin_machine`]), when it records one.
pub fn restore_args(args: Vec<String>, image: &pbr_format::Image) -> Vec<String> {
    match image.metadata_value(keys::QEMU_MACHINE).filter(|m| !m.is_empty()) {
        Some(m) => pin_machine(&args, m),
        None => args,
    }
}

/// `args` with the machine type pinned to `machine`: the type of every
/// `-machine`/`-M` option that names an unversioned one (an alias such as
/// `q35`) is replaced (its other options are kept), a versioned one is
/// kept, and `-machine machine` is added when none names one.
pub fn pin_machine(args: &[String], machine: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut named = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a != "-machine" && a != "-M" {
            continue;
        }
        let Some(value) = it.next() else { break };
        let mut parts: Vec<String> = value.split(',').map(str::to_owned).collect();
        if let Some(t) = parts.iter_mut().find(|p| !p.contains('=') || p.starts_with("type=")) {
            named = true;
            // An alias (`q35`) means the running release's newest type; a
            // versioned type the user named is kept as it is.
            if !is_versioned(t.trim_start_matches("type=")) {
                *t = if t.starts_with("type=") { format!("type={machine}") } else { machine.to_owned() };
            }
        }
        out.push(parts.join(","));
    }
    if !named {
        out.extend(["-machine".to_owned(), machine.to_owned()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(version: &str, machines: &[&str]) -> QemuHost {
        QemuHost { version: version.into(), machines: machines.iter().map(|m| m.to_string()).collect() }
    }

    #[test]
    fn a_later_qemu_with_the_machine_type_loads() {
        let h = host("10.0.2", &["pc-q35-10.0", "pc-q35-7.2", "q35"]);
        assert_eq!(h.may_load("7.2.22", Some("pc-q35-7.2")), Ok(()));
        assert_eq!(h.may_load("10.0.2", None), Ok(()), "the same release needs nothing");
        assert_eq!(host("7.2.23", &["pc-q35-7.2"]).may_load("7.2.22", Some("pc-q35-7.2")), Ok(()));
    }

    #[test]
    fn an_older_qemu_or_a_missing_machine_type_is_refused() {
        let old = host("7.2.22", &["pc-q35-7.2"]);
        assert!(old.may_load("10.0.2", Some("pc-q35-7.2")).unwrap_err().contains("older"));
        assert!(old.may_load("7.2.23", Some("pc-q35-7.2")).unwrap_err().contains("older"));
        let new = host("10.0.2", &["pc-q35-10.0"]);
        assert!(new.may_load("7.2.22", Some("pc-q35-7.2")).unwrap_err().contains("no longer provides"));
        assert!(new.may_load("7.2.22", None).unwrap_err().contains("no machine type"));
        assert!(
            host("10.0.2", &["microvm"]).may_load("7.2.22", Some("microvm")).unwrap_err().contains("not versioned")
        );
    }

    #[test]
    fn machine_help_is_parsed() {
        let help = "Supported machines are:\nq35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\nnone                 empty machine\n";
        assert_eq!(parse_machines(help), ["q35", "pc-q35-7.2", "none"]);
    }

    #[test]
    fn the_machine_type_is_pinned() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pin_machine(&s(&["-machine", "q35,accel=tcg", "-m", "512"]), "pc-q35-7.2"),
            s(&["-machine", "pc-q35-7.2,accel=tcg", "-m", "512"])
        );
        assert_eq!(
            pin_machine(&s(&["-M", "accel=tcg", "-machine", "type=q35"]), "pc-q35-7.2"),
            s(&["-M", "accel=tcg", "-machine", "type=pc-q35-7.2"])
        );
        assert_eq!(pin_machine(&s(&["-m", "512"]), "pc-i440fx-7.2"), s(&["-m", "512", "-machine", "pc-i440fx-7.2"]));
        let named = s(&["-machine", "pc-q35-8.0,accel=tcg"]);
        assert_eq!(pin_machine(&named, "pc-q35-7.2"), named, "a versioned type named is kept");
    }
}
