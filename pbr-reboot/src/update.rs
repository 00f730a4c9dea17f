//! A kernel update that keeps the services' state (`spec/agent.md` §7):
//! the guest's agent checkpoints the units asked for with CRIU
//! ([`checkpoint`]) and what it sends is kept in an image's `PROCESSES`
//! section; the machine boots the new kernel ([`Update::command`]), and at
//! its first point the units' files, read back from that image and
//! checked, are handed to the guest to restore ([`send_restore`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pbr_agent::message::Message;
use pbr_agent::{Checkpoint, Checkpointed, ProcessFile, Restore, UnitOutcome};
use pbr_format::limits::{MAX_PROCESS_BLOBS, MAX_PROCESS_BYTES};
use pbr_format::{Image, ImageWriter, ProcessesBuilder, Region, WriterOptions};
use serde_json::{Value, json};

use crate::agent::AgentPort;
use crate::error::{Error, Result};
use crate::machine::UserCommand;

/// How long the guest may take to checkpoint its units.
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);

/// A kernel update, as `pbr-img update` asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The new kernel (`-kernel`).
    pub kernel: PathBuf,
    /// Its initramfs (`-initrd`), if the command line has one.
    pub initrd: Option<PathBuf>,
    /// A new kernel command line (`-append`), or the old one.
    pub append: Option<String>,
    /// The systemd units whose processes are kept.
    pub keep: Vec<String>,
}

impl Update {
    /// The request as JSON.
    pub fn to_json(&self) -> Value {
        json!({"kernel": self.kernel, "initrd": self.initrd, "append": self.append, "keep": self.keep})
    }

    /// A request from JSON.
    ///
    /// # Errors
    /// A field is missing or wrong, or a unit is not a service's name.
    pub fn from_json(v: &Value) -> Result<Update> {
        let path = |key: &str| v[key].as_str().map(PathBuf::from);
        let kernel = path("kernel").ok_or_else(|| Error::Usage("the update names no kernel".into()))?;
        let keep = v["keep"]
            .as_array()
            .ok_or_else(|| Error::Usage("the update's keep is not a list".into()))?
            .iter()
            .map(|u| match u.as_str() {
                Some(s) if pbr_agent::checkpoint::valid_unit_name(s) => Ok(s.to_owned()),
                _ => Err(Error::Usage(format!("{u} is not a service's unit name (NAME.service)"))),
            })
            .collect::<Result<Vec<_>>>()?;
        if keep.len() > pbr_agent::limits::MAX_UNITS {
            return Err(Error::Usage(format!("{} units to keep, over {}", keep.len(), pbr_agent::limits::MAX_UNITS)));
        }
        if let Some(twice) = keep.iter().enumerate().find(|(i, u)| keep[..*i].contains(u)) {
            return Err(Error::Usage(format!("{} is named twice", twice.1)));
        }
        Ok(Update { kernel, initrd: path("initrd"), append: v["append"].as_str().map(str::to_owned), keep })
    }

    /// `cmd` booting the new kernel: its `-kernel`, `-initrd` and
    /// `-append` replaced (an `-append` added when it has none).
    ///
    /// # Errors
    /// The command line boots no `-kernel` of the host's (its guest boots
    /// from its disk), has an `-initrd` and the update names none (the old
    /// one holds the old kernel's modules), or the new files are not there.
    pub fn command(&self, cmd: &UserCommand) -> Result<UserCommand> {
        let mut out = cmd.clone();
        let at = |args: &[String], opt: &str| {
            args.iter().position(|a| a.starts_with('-') && a.trim_start_matches('-') == opt)
        };
        for (opt, file) in [("kernel", Some(&self.kernel)), ("initrd", self.initrd.as_ref())] {
            let Some(file) = file else {
                if at(&out.args, opt).is_some() {
                    return Err(Error::Usage(format!(
                        "the command line has a -{opt}: name the new kernel's (--{opt}), the old one holds the old \
                         kernel's modules"
                    )));
                }
                continue;
            };
            if !file.is_file() {
                return Err(Error::Usage(format!("{} is not a file", file.display())));
            }
            match at(&out.args, opt).and_then(|i| out.args.get_mut(i + 1)) {
                Some(v) => *v = file.display().to_string(),
                None if opt == "kernel" => {
                    return Err(Error::Usage(
                        "the command line has no -kernel: a kernel update replaces the -kernel a QEMU boots (a guest \
                         that boots from its disk updates its kernel itself)"
                            .into(),
                    ));
                }
                None => out.args.extend(["-initrd".to_owned(), file.display().to_string()]),
            }
        }
        if let Some(append) = &self.append {
            match at(&out.args, "append").and_then(|i| out.args.get_mut(i + 1)) {
                Some(v) => v.clone_from(append),
                None => out.args.extend(["-append".to_owned(), append.clone()]),
            }
        }
        Ok(out)
    }
}

/// What a checkpoint kept.
#[derive(Debug)]
pub struct Kept {
    /// What the guest said of each unit, corrected by what the host got.
    pub outcome: Checkpointed,
    /// The image holding the dumped units' files; `None` when no unit was
    /// dumped.
    pub image: Option<PathBuf>,
    /// How long the checkpoint took, from the request to the image written.
    pub elapsed: Duration,
}

/// Asks the guest to checkpoint `units` and keeps what it sends in a new
/// image at `image` (written atomically). What arrives is bounded as it
/// arrives, by the `PROCESSES` section's limits (4096 files, 1 GiB). A unit
/// whose files did not all arrive, or break the section's rules, is
/// reported not dumped: its files are not kept; a unit it was not asked
/// for is left out. Heartbeats and other messages are read past.
///
/// # Errors
/// The port failed, the guest broke the protocol or the bounds, sent no
/// outcome within `timeout`, or the image could not be written.
pub fn checkpoint(agent: &mut AgentPort, units: &[String], image: &Path, timeout: Duration) -> Result<Kept> {
    let t = Instant::now();
    agent.send(&Message::Checkpoint(Checkpoint { units: units.to_vec() }))?;
    let mut files: HashMap<String, Vec<ProcessFile>> = HashMap::new();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut outcome = loop {
        let left = timeout.saturating_sub(t.elapsed());
        if left.is_zero() {
            return Err(Error::Guest(format!("the guest's agent sent no checkpoint within {} s", timeout.as_secs())));
        }
        match agent.next(left) {
            Ok(Message::ProcessFile(f)) if units.contains(&f.unit) => {
                count += 1;
                bytes += f.data.len() as u64;
                if count > u64::from(MAX_PROCESS_BLOBS) || bytes > MAX_PROCESS_BYTES {
                    return Err(Error::AgentUnexpected(format!(
                        "more than a checkpoint holds ({MAX_PROCESS_BLOBS} files, {MAX_PROCESS_BYTES} bytes)"
                    )));
                }
                files.entry(f.unit.clone()).or_default().push(f);
            }
            Ok(Message::ProcessFile(f)) => {
                return Err(Error::AgentUnexpected(format!("a file of {}, a unit it was not asked for", f.unit)));
            }
            Ok(Message::Checkpointed(c)) => break c,
            Ok(_) | Err(Error::AgentSilent(_)) => {}
            Err(e) => return Err(e),
        }
    };
    outcome.units.retain(|u| units.contains(&u.unit));
    let mut builder: Option<ProcessesBuilder> = None;
    for u in &mut outcome.units {
        let got = files.remove(&u.unit).unwrap_or_default();
        if !u.dumped {
            continue;
        }
        if let Err(why) = keep_unit(&mut builder, &outcome.kernel, outcome.criu_version.as_deref(), u, got) {
            *u = UnitOutcome { dumped: false, reason: Some(why), ..u.clone() };
        }
    }
    let image = match builder {
        Some(b) => {
            let mut w = ImageWriter::create(image, &[Region::ram("none", 0, 4096)], WriterOptions::default())
                .map_err(pbr_tools::Error::from)?;
            w.set_processes(b).map_err(pbr_tools::Error::from)?;
            w.finish().map_err(pbr_tools::Error::from)?;
            Some(image.to_path_buf())
        }
        None => None,
    };
    Ok(Kept { outcome, image, elapsed: t.elapsed() })
}

/// Adds unit `u`'s files to the section being built, whole: they are
/// checked first (as many and as large as the guest said, no name twice);
/// why they cannot be kept.
fn keep_unit(
    builder: &mut Option<ProcessesBuilder>,
    kernel: &str,
    criu: Option<&str>,
    u: &UnitOutcome,
    got: Vec<ProcessFile>,
) -> std::result::Result<(), String> {
    let bytes: u64 = got.iter().map(|f| f.data.len() as u64).sum();
    if got.len() != u.files as usize || bytes != u.bytes {
        return Err(format!(
            "the guest said {} files of {} bytes, and sent {} of {bytes}",
            u.files,
            u.bytes,
            got.len()
        ));
    }
    let mut names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("the guest sent {} twice", w[0]));
    }
    let b = match builder {
        Some(b) => b,
        None => {
            let criu = criu.ok_or("the guest says it dumped without CRIU")?;
            builder.insert(ProcessesBuilder::new(kernel, criu).map_err(|e| e.to_string())?)
        }
    };
    let unit = b.add_unit(&u.unit).map_err(|e| e.to_string())?;
    for f in got {
        b.add_blob(unit, &f.name, f.data).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Hands the guest, at a point of the new kernel's boot, each unit of
/// `image`'s `PROCESSES` section: its files, each checked against its
/// checksum as it is read, then the units to restore. How many units.
///
/// # Errors
/// The image cannot be read, a file is damaged (nothing is sent then), or
/// the port failed.
pub fn send_restore(agent: &mut AgentPort, image: &Path) -> Result<usize> {
    let img = Image::open(image).map_err(pbr_tools::Error::from)?;
    let p = img
        .processes()
        .map_err(pbr_tools::Error::from)?
        .ok_or_else(|| Error::Usage(format!("{} holds no PROCESSES section", image.display())))?;
    let mut frames = Vec::new();
    let mut units = Vec::new();
    for unit in p.units() {
        for blob in unit.blobs {
            let data = blob.bytes().map_err(pbr_tools::Error::from)?.to_vec();
            frames.push(ProcessFile { unit: unit.name.to_owned(), name: blob.name.to_owned(), data });
        }
        units.push(unit.name.to_owned());
    }
    for f in frames {
        agent.send(&Message::RestoreFile(f))?;
    }
    let n = units.len();
    agent.send(&Message::Restore(Restore { units }))?;
    Ok(n)
}

/// How an update went, unit by unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The kernel the units were dumped from (`None`: no checkpoint).
    pub kernel_before: Option<String>,
    /// The kernel the guest runs now, as its agent told (`None`: it told
    /// nothing, having restored nothing).
    pub kernel_after: Option<String>,
    /// Each unit asked for.
    pub units: Vec<UnitReport>,
    /// Seconds the checkpoint took.
    pub checkpoint_s: f64,
    /// The image the units were kept in.
    pub image: Option<PathBuf>,
    /// Seconds from the request until the new kernel's guest was ready.
    pub total_s: f64,
    /// Why the new kernel was given up: the VM runs the old one again
    /// (its units restored there).
    pub reverted: Option<String>,
}

/// How one unit came through an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitReport {
    /// The unit.
    pub unit: String,
    /// CRIU dumped it on the old kernel and the host kept its files.
    pub dumped: bool,
    /// CRIU restored it on the new kernel; else it started cold.
    pub restored: bool,
    /// Why it started cold.
    pub reason: Option<String>,
}

impl Report {
    /// The report of an update of units `keep`: what the checkpoint kept
    /// (or why it failed), and what the new boot told: its guest's
    /// `RESTORED`, or why the units were not handed to it.
    pub fn new(
        keep: &[String],
        kept: std::result::Result<&Kept, &str>,
        restored: Option<&pbr_agent::Restored>,
        restore_failed: Option<&str>,
        total: Duration,
    ) -> Report {
        let units = keep
            .iter()
            .map(|unit| {
                let dumped = match kept {
                    Ok(k) => match k.outcome.units.iter().find(|u| &u.unit == unit) {
                        Some(u) if u.dumped => Ok(()),
                        Some(u) => Err(u.reason.clone().unwrap_or_else(|| "not dumped".into())),
                        None => Err("the guest did not report it".into()),
                    },
                    Err(e) => Err(format!("the checkpoint failed: {e}")),
                };
                let restored = dumped.and_then(|()| {
                    if let Some(e) = restore_failed {
                        return Err(format!("its files were not handed to the guest: {e}"));
                    }
                    match restored.and_then(|r| r.units.iter().find(|u| &u.unit == unit)) {
                        Some(u) if u.restored => Ok(()),
                        Some(u) => Err(u.reason.clone().unwrap_or_else(|| "not restored".into())),
                        None => Err("the new boot's guest did not report it".into()),
                    }
                });
                UnitReport {
                    unit: unit.clone(),
                    dumped: kept.is_ok_and(|k| k.outcome.units.iter().any(|u| &u.unit == unit && u.dumped)),
                    restored: restored.is_ok(),
                    reason: restored.err(),
                }
            })
            .collect();
        Report {
            kernel_before: kept.ok().map(|k| k.outcome.kernel.clone()),
            kernel_after: restored.map(|r| r.kernel.clone()),
            units,
            checkpoint_s: kept.map_or(0.0, |k| k.elapsed.as_secs_f64()),
            image: kept.ok().and_then(|k| k.image.clone()),
            total_s: total.as_secs_f64(),
            reverted: None,
        }
    }

    /// The report as the `updated` event.
    pub fn json(&self) -> Value {
        let units: Vec<Value> = self
            .units
            .iter()
            .map(|u| json!({"unit": u.unit, "dumped": u.dumped, "restored": u.restored, "reason": u.reason}))
            .collect();
        json!({"event": "updated", "kernel_before": self.kernel_before, "kernel_after": self.kernel_after,
               "units": units, "checkpoint_s": self.checkpoint_s,
               "image": self.image.as_ref().map(|p| p.display().to_string()), "total_s": self.total_s,
               "reverted": self.reverted})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update {
            kernel: PathBuf::from("/bin/sh"),
            initrd: Some(PathBuf::from("/bin/true")),
            append: None,
            keep: vec!["memcached.service".into()],
        }
    }

    #[test]
    fn the_command_boots_the_new_kernel() {
        let cmd = UserCommand {
            qemu: "qemu".into(),
            args: ["-m", "512", "-kernel", "/old/vmlinuz", "-initrd", "/old/initrd", "-append", "ro"]
                .map(String::from)
                .to_vec(),
        };
        let new = update().command(&cmd).unwrap();
        assert_eq!(new.args[3], "/bin/sh");
        assert_eq!(new.args[5], "/bin/true");
        assert_eq!(new.args[7], "ro");
        let appended = Update { append: Some("ro quiet".into()), ..update() }.command(&cmd).unwrap();
        assert_eq!(appended.args[7], "ro quiet");
        let disk = UserCommand { qemu: "qemu".into(), args: vec!["-hda".into(), "d.img".into()] };
        assert!(update().command(&disk).unwrap_err().to_string().contains("has no -kernel"));
        let no_initrd = Update { initrd: None, ..update() };
        assert!(no_initrd.command(&cmd).unwrap_err().to_string().contains("name the new kernel's (--initrd)"));
        let bare = UserCommand { qemu: "qemu".into(), args: vec!["-kernel".into(), "/old/vmlinuz".into()] };
        let added = Update { append: Some("ro".into()), ..update() }.command(&bare).unwrap();
        assert_eq!(added.args, ["-kernel", "/bin/sh", "-initrd", "/bin/true", "-append", "ro"]);
        let missing = Update { kernel: PathBuf::from("/no/such/vmlinuz"), ..update() };
        assert!(missing.command(&cmd).unwrap_err().to_string().contains("is not a file"));
    }

    #[test]
    fn requests_round_trip_and_name_bad_units() {
        assert_eq!(Update::from_json(&update().to_json()).unwrap(), update());
        let mut v = update().to_json();
        v["keep"] = json!(["../x.service"]);
        assert!(Update::from_json(&v).unwrap_err().to_string().contains("is not a service's unit name"));
        assert!(Update::from_json(&json!({"keep": []})).unwrap_err().to_string().contains("names no kernel"));
        v["keep"] = json!(["a.service", "a.service"]);
        assert!(Update::from_json(&v).unwrap_err().to_string().contains("a.service is named twice"));
    }

    fn file(unit: &str, name: &str, data: &[u8]) -> ProcessFile {
        ProcessFile { unit: unit.into(), name: name.into(), data: data.to_vec() }
    }

    #[test]
    fn a_unit_is_kept_whole_or_not_at_all() {
        let mut b = None;
        let said = |files, bytes| UnitOutcome { unit: "a.service".into(), dumped: true, files, bytes, reason: None };
        let e = keep_unit(&mut b, "6.1", Some("3.17.1"), &said(2, 3), vec![file("a.service", "x.img", b"abc")]);
        assert!(e.unwrap_err().contains("said 2 files of 3 bytes, and sent 1 of 3"));
        let twice = vec![file("a.service", "x.img", b"a"), file("a.service", "x.img", b"b")];
        let e = keep_unit(&mut b, "6.1", Some("3.17.1"), &said(2, 2), twice).unwrap_err();
        assert!(e.contains("sent x.img twice"), "{e}");
        let kept = vec![file("a.service", "x.img", b"a"), file("a.service", "y.img", b"b")];
        keep_unit(&mut b, "6.1", Some("3.17.1"), &said(2, 2), kept).unwrap();
        let bytes = b.unwrap().to_bytes().unwrap();
        let p = pbr_format::Processes::parse(&bytes, 0).unwrap();
        let units: Vec<_> = p.units().map(|u| (u.name.to_owned(), u.blobs.len())).collect();
        assert_eq!(units, [("a.service".to_owned(), 2)], "the failed unit left nothing behind");
    }
}
