//! A Linux guest under QEMU that announces its boot phases on ttyS1 (the
//! protocol of `examples/phase-guest/guest-init.sh`): `PBR-FILE phase path`,
//! `PBR-KPF-BEGIN/END phase` around base64 gzip kpageflags, `PBR-PHASE phase
//! uptime` (then it waits for a line back), `PBR-READY uptime` (its boot
//! script is done; its service is checked from outside, [`crate::service`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, Result};
use pbr_replay::qemu::Qmp;
use pbr_replay::qemu::process::{Io, QemuProcess};

use crate::service;

/// How to start the guest.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// The QEMU binary.
    pub qemu: String,
    /// Machine type and accelerator, e.g. `q35,accel=tcg`.
    pub machine: String,
    /// CPU model.
    pub cpu: String,
    /// Guest memory in MiB.
    pub mem_mb: u64,
    /// vCPUs.
    pub smp: u32,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
}

impl GuestSpec {
    /// The machine part of the command line: what a restore must repeat
    /// (with the guest's NIC, [`service::nic_args`]).
    pub fn machine_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-machine".into(),
            self.machine.clone(),
            "-cpu".into(),
            self.cpu.clone(),
            "-m".into(),
            self.mem_mb.to_string(),
            "-smp".into(),
            self.smp.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.append.clone(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
        ];
        args.extend(service::nic_args());
        args
    }
}

/// What the guest said on its control port.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A file it read up to `phase`.
    File(String, String),
    /// Its kpageflags at `phase` (gzip).
    Kpf(String, Vec<u8>),
    /// It reached `phase` at `uptime` seconds and waits for a reply.
    Phase(String, f64),
    /// Its service is ready.
    Ready(f64),
}

/// The serial wiring of a guest in `dir`: ttyS0 to a file, ttyS1 (the
/// control port) to a unix socket.
pub fn serial_args(dir: &Path) -> (Vec<String>, PathBuf) {
    let ctl = dir.join("ttyS1.sock");
    let args = vec![
        "-serial".into(),
        format!("file:{}", dir.join("ttyS0.txt").display()),
        "-serial".into(),
        format!("unix:{},server=on,wait=off", ctl.display()),
    ];
    (args, ctl)
}

/// Connects to a unix socket QEMU serves, waiting up to 20 s for QEMU to
/// create it.
///
/// # Errors
/// The last connection error, once the 20 s are up.
pub fn connect_socket(path: &Path) -> std::io::Result<UnixStream> {
    let t = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if t.elapsed() > Duration::from_secs(20) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The guest's control port.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Connects to the control socket QEMU created.
    ///
    /// # Errors
    /// It never appeared.
    pub fn connect(path: &Path) -> Result<Control> {
        let s = connect_socket(path).map_err(|e| Error::io("cannot reach the guest's ttyS1", e))?;
        s.set_read_timeout(Some(Duration::from_secs(300))).map_err(|e| Error::io("ttyS1", e))?;
        let writer = s.try_clone().map_err(|e| Error::io("ttyS1", e))?;
        Ok(Control { reader: BufReader::new(s), writer })
    }

    /// The next event.
    ///
    /// # Errors
    /// The port closed, or the guest reported a failure.
    pub fn next_event(&mut self) -> Result<Event> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).map_err(|e| Error::io("ttyS1", e))? == 0 {
                return Err(Error::Guest("the guest's control port closed".into()));
            }
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["PBR-FILE", p, f] => return Ok(Event::File(p.to_string(), f.trim_start_matches('/').to_string())),
                ["PBR-PHASE", p, up] => return Ok(Event::Phase(p.to_string(), up.parse().unwrap_or(0.0))),
                ["PBR-READY", up] => return Ok(Event::Ready(up.parse().unwrap_or(0.0))),
                ["PBR-KPF-BEGIN", p] => {
                    let phase = p.to_string();
                    let mut text = String::new();
                    loop {
                        let mut l = String::new();
                        if self.reader.read_line(&mut l).map_err(|e| Error::io("ttyS1", e))? == 0 {
                            return Err(Error::Guest("the guest's control port closed".into()));
                        }
                        if l.starts_with("PBR-KPF-END") {
                            break;
                        }
                        text.push_str(l.trim());
                    }
                    use base64::Engine;
                    let gz = base64::engine::general_purpose::STANDARD
                        .decode(text.as_bytes())
                        .map_err(|e| Error::Guest(format!("kpageflags dump of phase {phase}: {e}")))?;
                    return Ok(Event::Kpf(phase, gz));
                }
                _ => {}
            }
        }
    }

    /// Replies to a phase marker.
    ///
    /// # Errors
    /// The port closed.
    pub fn go(&mut self) -> Result<()> {
        self.writer.write_all(b"go\n").map_err(|e| Error::io("ttyS1", e))
    }

    /// Answers every phase marker until the service is ready.
    ///
    /// # Errors
    /// The port closed or the guest failed.
    pub fn until_ready(&mut self) -> Result<f64> {
        loop {
            match self.next_event()? {
                Event::Phase(..) => self.go()?,
                Event::Ready(up) => return Ok(up),
                _ => {}
            }
        }
    }
}

/// A booting guest: QEMU with QMP and the control port.
pub struct Guest {
    /// QEMU.
    pub qemu: QemuProcess,
    /// The control port.
    pub control: Control,
    /// The host port forwarded to the guest's service.
    pub port: u16,
}

impl Guest {
    /// Boots `spec` with its console and control port in `dir`; `paused`
    /// leaves the machine at its first instruction until QMP `cont`.
    ///
    /// # Errors
    /// QEMU did not start.
    pub fn boot(spec: &GuestSpec, dir: &Path, paused: bool) -> Result<Guest> {
        let (serial, ctl) = serial_args(dir);
        let sock = dir.join("qmp.sock");
        let port = service::free_port()?;
        let mut args = spec.machine_args();
        service::forward(&mut args, port)?;
        args.extend(serial);
        args.extend(paused.then(|| "-S".to_owned()));
        let io = Io { stdin: Stdio::null(), stdout: Stdio::null(), hold_stderr: false };
        let qemu = QemuProcess::launch(&spec.qemu, &args, &sock, io)?;
        let control = Control::connect(&ctl)?;
        Ok(Guest { qemu, control, port })
    }

    /// Saves the (stopped) guest to `path` ([`save`]).
    ///
    /// # Errors
    /// The migration failed.
    pub fn save(&mut self, path: &Path) -> Result<SaveCounters> {
        save(self.qemu.qmp(), path)
    }

    /// Quits QEMU.
    pub fn quit(self) {
        self.qemu.quit();
    }
}

/// Saves a stopped QEMU guest with QEMU's migration to `path`, waiting
/// until the file is whole. Returns QEMU's RAM counters of the save. The
/// bandwidth limit is lifted first (QEMU's default, 32 MiB/s, would make
/// a save of a few hundred MiB take seconds).
///
/// # Errors
/// The migration failed.
pub fn save(qmp: &mut Qmp, path: &Path) -> Result<SaveCounters> {
    qmp.cmd("migrate-set-parameters", json!({"max-bandwidth": 64u64 << 30}))?;
    qmp.cmd("migrate", json!({"uri": format!("exec:cat > {}", path.display())}))?;
    let st = qmp.wait_migration(Duration::from_secs(600))?;
    let counters = SaveCounters {
        zero_pages: st["ram"]["duplicate"].as_u64().unwrap_or(0),
        normal_pages: st["ram"]["normal"].as_u64().unwrap_or(0),
    };
    // With exec:cat, "completed" can come before cat has written the
    // last bytes: wait for the vmdescription's closing brace to settle.
    let t = Instant::now();
    let mut last = 0;
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let ends = last_byte(path) == Some(b'}');
        if ends && len == last {
            return Ok(counters);
        }
        last = len;
        if t.elapsed() > Duration::from_secs(120) {
            return Err(Error::Guest(format!("the saved stream {} never completed", path.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// QEMU's own RAM counters of one save (`query-migrate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveCounters {
    /// Pages sent as zero records (`ram.duplicate`).
    pub zero_pages: u64,
    /// Pages sent with their content (`ram.normal`).
    pub normal_pages: u64,
}

fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}
