//! A user's own QEMU command line, run with what phase-based reboot adds
//! to it: QMP, the agent's port and a VM generation id. Nothing else of the
//! command line is changed: disks, NICs and the machine type are the
//! user's.

use std::path::{Path, PathBuf};

use pbr_replay::qemu::process::{Io, QemuProcess};
use serde_json::{Value, json};

use crate::agent::{self, AgentPort};
use crate::error::{Error, Result};

/// Options the host runs the command line with itself: a user's would
/// clash with the capture or the restore.
const REFUSED: [&str; 4] = ["-incoming", "-daemonize", "-loadvm", "-S"];

/// The user's command line: the QEMU binary and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCommand {
    /// The QEMU binary.
    pub qemu: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl UserCommand {
    /// Takes `argv` (binary first).
    ///
    /// # Errors
    /// It is empty, or uses an option the host must own.
    pub fn parse(argv: &[String]) -> Result<UserCommand> {
        let (qemu, args) = argv.split_first().ok_or_else(|| Error::Usage("no QEMU command line".into()))?;
        let refused = |a: &str| REFUSED.iter().any(|r| a == *r || a.strip_prefix('-') == Some(r));
        if let Some(a) = args.iter().find(|a| refused(a)) {
            return Err(Error::Usage(format!(
                "the QEMU command line has {a}: capture and recover run QEMU that way themselves"
            )));
        }
        Ok(UserCommand { qemu: qemu.clone(), args: args.to_vec() })
    }

    /// The host-side files the machine boots from: `-kernel`, `-initrd`,
    /// `-bios`, `-dtb` and pflash drives.
    pub fn boot_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for w in self.args.windows(2) {
            let opt = w[0].trim_start_matches('-');
            match opt {
                "kernel" | "initrd" | "bios" | "dtb" => out.push(PathBuf::from(&w[1])),
                "drive" if option_value(&w[1], "if") == Some("pflash") => {
                    out.extend(option_value(&w[1], "file").map(PathBuf::from));
                }
                _ => {}
            }
        }
        out
    }
}

/// The value of `key` in a QEMU option string `a=1,key=v,...` (no `,,`
/// escapes).
fn option_value<'a>(opts: &'a str, key: &str) -> Option<&'a str> {
    opts.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A running machine: QEMU with QMP and the agent's port.
pub struct Machine {
    /// QEMU.
    pub qemu: QemuProcess,
    /// The agent's port.
    pub agent: AgentPort,
    /// The arguments it runs with, after the binary (the user's and the
    /// host's).
    pub args: Vec<String>,
}

impl Machine {
    /// Starts `cmd` with QMP and the agent's port in `dir`, and `extra`
    /// (a VM generation id, `-incoming`).
    ///
    /// # Errors
    /// QEMU did not start, or its QMP or the agent's socket never came up.
    pub fn start(cmd: &UserCommand, dir: &Path, extra: &[String]) -> Result<Machine> {
        let (port, sock) = agent::port_args(dir);
        let qmp_sock = dir.join("qmp.sock");
        let mut args = cmd.args.clone();
        args.extend(port);
        args.extend(extra.iter().cloned());
        let qemu = QemuProcess::launch(&cmd.qemu, &args, &qmp_sock, Io::quiet())?;
        let agent = AgentPort::connect(&sock)?;
        Ok(Machine { qemu, agent, args })
    }

    /// The QEMU version, as `query-version` gives it (`7.2.22`).
    ///
    /// # Errors
    /// QMP failed.
    pub fn version(&mut self) -> Result<String> {
        let v = self.qemu.qmp().cmd("query-version", json!({}))?;
        let q = &v["qemu"];
        Ok(format!("{}.{}.{}", q["major"], q["minor"], q["micro"]))
    }

    /// Guest RAM in bytes (`query-memory-size-summary`).
    ///
    /// # Errors
    /// QMP failed.
    pub fn ram_bytes(&mut self) -> Result<u64> {
        let v = self.qemu.qmp().cmd("query-memory-size-summary", json!({}))?;
        v["base-memory"].as_u64().ok_or_else(|| Error::Guest("QEMU gave no base-memory".into()))
    }

    /// The drives of the machine, with how a guest can recognise each.
    ///
    /// # Errors
    /// QMP failed.
    pub fn drives(&mut self) -> Result<Vec<Drive>> {
        let blocks = self.qemu.qmp().cmd("query-block", json!({}))?;
        let mut out = Vec::new();
        for b in blocks.as_array().into_iter().flatten() {
            let Some(inserted) = b.get("inserted") else { continue };
            let qdev = b["qdev"].as_str().unwrap_or_default().to_owned();
            let backend = if qdev.starts_with('/') { qdev.clone() } else { format!("/machine/peripheral/{qdev}") };
            let proxy = backend.strip_suffix("/virtio-backend").unwrap_or(&backend).to_owned();
            let serial = self.qom_get(&backend, "serial").and_then(|v| v.as_str().map(str::to_owned));
            let devfn = self.qom_get(&proxy, "addr").and_then(|v| v.as_u64());
            out.push(Drive {
                name: b["device"].as_str().filter(|s| !s.is_empty()).unwrap_or(&qdev).to_owned(),
                files: image_chain(&inserted["image"]),
                serial: serial.filter(|s| !s.is_empty()),
                devfn,
            });
        }
        Ok(out)
    }

    fn qom_get(&mut self, path: &str, property: &str) -> Option<Value> {
        self.qemu.qmp().cmd("qom-get", json!({"path": path, "property": property})).ok()
    }

    /// Quits QEMU and waits for it (killing it after 10 s).
    pub fn quit(self) {
        self.qemu.quit();
    }
}

/// A drive of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    /// QEMU's name for it (`-drive id=`, else its qdev path).
    pub name: String,
    /// Its image file and the backing files under it, top first. A
    /// `json:` or network name (no file) is kept as is.
    pub files: Vec<String>,
    /// The device's serial, if set.
    pub serial: Option<String>,
    /// Its PCI device and function (`slot << 3 | function`), if on PCI.
    pub devfn: Option<u64>,
}

impl Drive {
    /// Whether the guest disk `d` is this drive: by serial when the guest
    /// sees one, else by its PCI address on the root bus.
    pub fn is(&self, d: &pbr_agent::Disk) -> bool {
        if let (Some(a), Some(b)) = (&d.serial, &self.serial) {
            return a == b;
        }
        let guest = d.pci.as_deref().and_then(|p| {
            let rest = p.strip_prefix("0000:00:")?;
            let (slot, func) = rest.split_once('.')?;
            Some(u64::from_str_radix(slot, 16).ok()? << 3 | u64::from_str_radix(func, 16).ok()?)
        });
        guest.is_some() && guest == self.devfn
    }
}

/// The file names of an `ImageInfo` and its backing images, top first.
fn image_chain(mut image: &Value) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(f) = image.get("filename").and_then(Value::as_str) {
        out.push(f.to_owned());
        match image.get("backing-image") {
            Some(b) if out.len() < 64 => image = b,
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn boot_files_and_refused_options() {
        let c = UserCommand::parse(&argv(
            "qemu -m 512 -kernel /k -initrd /i -drive if=pflash,format=raw,file=/OVMF.fd -drive file=/r.raw,if=virtio",
        ))
        .unwrap();
        assert_eq!(c.qemu, "qemu");
        assert_eq!(c.boot_files(), vec![PathBuf::from("/k"), PathBuf::from("/i"), PathBuf::from("/OVMF.fd")]);
        for bad in ["qemu -incoming defer", "qemu -S", "qemu --daemonize"] {
            let e = UserCommand::parse(&argv(bad)).unwrap_err().to_string();
            assert!(e.contains("capture and recover run QEMU that way themselves"), "{e}");
        }
        assert!(UserCommand::parse(&[]).is_err());
    }

    #[test]
    fn drives_match_by_serial_then_pci() {
        let d = Drive { name: "root".into(), files: vec![], serial: Some("pbr-root".into()), devfn: Some(3 << 3) };
        let disk = |serial: Option<&str>, pci: Option<&str>| pbr_agent::Disk {
            name: "vda".into(),
            serial: serial.map(str::to_owned),
            pci: pci.map(str::to_owned),
        };
        assert!(d.is(&disk(Some("pbr-root"), Some("0000:00:07.0"))));
        assert!(!d.is(&disk(Some("other"), Some("0000:00:03.0"))));
        assert!(d.is(&disk(None, Some("0000:00:03.0"))));
        assert!(!d.is(&disk(None, Some("0000:01:03.0"))));
        assert!(!d.is(&disk(None, None)));
    }

    #[test]
    fn backing_chains() {
        let v = json!({"filename": "/top.qcow2", "backing-image": {"filename": "/base.raw"}});
        assert_eq!(image_chain(&v), vec!["/top.qcow2", "/base.raw"]);
    }
}
