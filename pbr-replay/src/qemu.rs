//! The QEMU adapter: exports the image to a migration stream and starts
//! `qemu-system-x86_64 -incoming` with the command line recorded at capture
//! (or one given), waits for the load, and resumes the guest over QMP.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pbr_format::{DeviceBlob, DeviceOrigin, Image, Vcpu};
use serde_json::{Value, json};

use crate::prepared::{Prepared, check_mapped};
use crate::qemu_stderr::{self, QemuStderr};
use crate::{HypervisorAdapter, RegionPlan, Taken};
use pbr_tools::error::{Error, Result};

/// A minimal QMP client over a unix socket.
pub struct Qmp(BufReader<UnixStream>);

impl Qmp {
    /// Connects to `sock` (waiting up to 20 s for QEMU to create it) and
    /// negotiates capabilities.
    ///
    /// # Errors
    /// The socket never appeared or QMP misbehaved.
    pub fn connect(sock: &Path) -> Result<Qmp> {
        Qmp::connect_watching(sock, &mut || None)
    }

    /// As [`Qmp::connect`] to the QMP of `child` (the process `qemu`),
    /// failing at once when it exits first (bad arguments, a kernel it
    /// cannot load) instead of after the 20 s wait.
    ///
    /// # Errors
    /// QEMU exited, the socket never appeared, or QMP misbehaved.
    pub fn connect_to(sock: &Path, child: &mut Child, qemu: &str) -> Result<Qmp> {
        let mut gone = || match child.try_wait() {
            Ok(Some(status)) => Some(exited(qemu, status)),
            _ => None,
        };
        Qmp::connect_watching(sock, &mut gone).map_err(|e| qemu_failure(child, qemu, e))
    }

    fn connect_watching(sock: &Path, gone: &mut dyn FnMut() -> Option<Error>) -> Result<Qmp> {
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if t.elapsed() > Duration::from_secs(20) => {
                    return Err(Error::io(format!("cannot connect to QMP at {}", sock.display()), e));
                }
                Err(_) => {
                    if let Some(e) = gone() {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| Error::io("QMP", e))?;
        let mut q = Qmp(BufReader::new(s));
        q.read()?;
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.0.read_line(&mut line).map_err(|e| Error::io("QMP read", e))?;
        if line.is_empty() {
            return Err(Error::Unsupported("QEMU closed its QMP socket (did it exit? see its stderr)".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Unsupported(format!("QMP sent {line:?}: {e}")))
    }

    /// Runs `execute` and returns its `return` value.
    ///
    /// # Errors
    /// I/O, or QEMU answered with an error.
    pub fn cmd(&mut self, execute: &str, arguments: Value) -> Result<Value> {
        writeln!(self.0.get_mut(), "{}", json!({"execute": execute, "arguments": arguments}))
            .map_err(|e| Error::io("QMP write", e))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(Error::Unsupported(format!("QMP {execute}: {e}")));
            }
            return Ok(v["return"].clone());
        }
    }

    /// Polls `query-migrate` (every millisecond: a QMP round trip costs far
    /// less, and a recovery's downtime counts every wasted one) until
    /// `completed`, and returns that last answer (its `ram` counters).
    ///
    /// # Errors
    /// The migration failed or took longer than `timeout`.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<serde_json::Value> {
        let t = Instant::now();
        loop {
            let st = self.cmd("query-migrate", json!({}))?;
            match st["status"].as_str() {
                Some("completed") => return Ok(st),
                Some("failed") | Some("cancelled") => return Err(Error::Unsupported(format!("migration {st}"))),
                _ if t.elapsed() > timeout => {
                    return Err(Error::Unsupported(format!("migration did not finish: {st}")));
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

/// The error to report when talking to QEMU failed with `e`: if QEMU has
/// exited (it is given a second), that it did and how, since its own message
/// on stderr says why; else `e`.
fn qemu_failure(child: &mut Child, qemu: &str, e: Error) -> Error {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        match child.try_wait() {
            Ok(Some(status)) => return exited(qemu, status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    e
}

/// QEMU exited with `status` before it was ready.
fn exited(qemu: &str, status: std::process::ExitStatus) -> Error {
    Error::Unsupported(format!("{qemu} exited ({status}) before it was ready: see its message above"))
}

/// Replays into a fresh QEMU.
pub struct QemuAdapter {
    image: PathBuf,
    qemu: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
    /// The running QEMU, after [`HypervisorAdapter::resume`] (or from
    /// [`QemuAdapter::standby`] on).
    pub child: Option<Child>,
    /// Its QMP connection.
    pub qmp: Option<Qmp>,
    /// Where a standby QEMU listens for the stream.
    incoming: Option<PathBuf>,
    /// Leave the guest paused after a standby load ([`QemuAdapter::prestage`]).
    hold: bool,
    /// The trailer hash of the image a prestaged QEMU holds, paused.
    held: Option<[u8; 32]>,
    /// Removes `dir` and stops QEMU if the tool is interrupted.
    interrupt: Vec<pbr_tools::cleanup::Registration>,
    /// QEMU maps the guest's RAM from the (flat) image instead of loading
    /// it from the stream.
    mapped: bool,
    refilled: (u64, Duration),
    /// How long the restore spent checking the pages QEMU maps.
    checked: Duration,
    preloaded: Option<Prepared>,
    /// The trailer hash of the image a standby QEMU maps its RAM from.
    maps: Option<[u8; 32]>,
    /// QEMU's standard error: held until the guest is loaded.
    stderr: Option<QemuStderr>,
    /// QEMU's standard output goes to a pipe ([`QemuAdapter::pipe_stdout`]).
    stdout_piped: bool,
}

impl QemuAdapter {
    /// An adapter for the image at `image`, starting `qemu` with `args`
    /// (the machine part of the command line: `-machine`, `-m`, `-cpu`,
    /// devices, `-serial` ...). `-incoming` and `-qmp` are added.
    ///
    /// # Errors
    /// No temporary directory.
    pub fn new(image: &Path, qemu: &str, args: Vec<String>) -> Result<QemuAdapter> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("cannot create a temporary directory", e))?;
        let interrupt = vec![pbr_tools::cleanup::remove_on_interrupt(dir.path())];
        Ok(QemuAdapter {
            image: image.to_path_buf(),
            qemu: qemu.to_owned(),
            args,
            dir,
            child: None,
            qmp: None,
            incoming: None,
            hold: false,
            held: None,
            interrupt,
            mapped: false,
            refilled: (0, Duration::ZERO),
            checked: Duration::ZERO,
            preloaded: None,
            maps: None,
            stderr: None,
            stdout_piped: false,
        })
    }

    /// Makes the QEMU this adapter starts write its standard output (the
    /// guest's console under `-serial stdio`) into a pipe, the `stdout` of
    /// [`QemuAdapter::child`], instead of the caller's: the caller orders
    /// the console with its own output.
    pub fn pipe_stdout(&mut self) {
        self.stdout_piped = true;
    }

    /// A standby QEMU: started now with `args`, initialised and listening
    /// for a migration stream, so that a later restore of any image whose
    /// recorded machine is `args` pays no process start (see
    /// [`QemuAdapter::set_image`]).
    ///
    /// # Errors
    /// QEMU did not start or its QMP never came up.
    pub fn standby(qemu: &str, args: Vec<String>) -> Result<QemuAdapter> {
        let mut q = QemuAdapter::new(Path::new(""), qemu, args)?;
        q.listen(std::process::Stdio::null())?;
        Ok(q)
    }

    /// A standby QEMU for `image` in particular: where the image is flat
    /// and QEMU 8.2 or later, its RAM is already mapped from the image
    /// (nothing is read or loaded before the failure: the mapping is
    /// private and pages come in when the guest touches them), so that
    /// restoring that image later streams only the device state. Otherwise
    /// a plain [`QemuAdapter::standby`].
    ///
    /// # Errors
    /// QEMU did not start or its QMP never came up.
    pub fn standby_for(qemu: &str, args: Vec<String>, image: &Path) -> Result<QemuAdapter> {
        let img = Image::open(image)?;
        let mapping = mapped_ram_args(&img, image).filter(|_| qemu_version(qemu).is_some_and(|v| v >= (8, 2)));
        let Some(mapping) = mapping else { return QemuAdapter::standby(qemu, args) };
        let mut q = QemuAdapter::new(image, qemu, args)?;
        q.listen_with(std::process::Stdio::null(), &mapping)?;
        q.mapped = true;
        q.maps = Some(img.image_blake3());
        Ok(q)
    }

    /// A standby QEMU for the image at `path` ([`QemuAdapter::standby_for`],
    /// else a plain [`QemuAdapter::standby`]) with `image`'s restore made
    /// ready now, before a failure: its page-cache pages read back and,
    /// when this QEMU maps `image`'s RAM, its whole stream (the device
    /// state: no guest memory). A later restore of that image (the same
    /// trailer hash) only writes it. Sound because the decision checks the
    /// disks' seals first: if they still hold, the disk has not changed
    /// since these pages were read. An image that cannot be made ready is
    /// made ready by its restore, which then reports why.
    ///
    /// # Errors
    /// QEMU did not start or its QMP never came up.
    pub fn standby_prepared(qemu: &str, args: Vec<String>, path: &Path, image: &Image) -> Result<QemuAdapter> {
        let mut q = QemuAdapter::standby_for(qemu, args.clone(), path).or_else(|_| QemuAdapter::standby(qemu, args))?;
        // The pages it maps are checked now, before the failure; an image
        // that fails is made ready (and refused) at its restore.
        let mapped = q.maps == Some(image.image_blake3());
        q.preloaded =
            (!mapped || check_mapped(image, path).is_ok()).then(|| Prepared::load(image, mapped).ok()).flatten();
        Ok(q)
    }

    /// The process id of QEMU, once started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The trailer hash of the image a standby QEMU maps its RAM from, if
    /// any: only that image can be restored into it.
    pub fn maps(&self) -> Option<[u8; 32]> {
        self.maps
    }

    /// Starts QEMU listening for the stream on a socket of its own
    /// directory (QEMU's standard input stays free for a console the
    /// arguments put there, as `-serial stdio` or `-nographic` do).
    fn listen(&mut self, stdin: std::process::Stdio) -> Result<()> {
        self.listen_with(stdin, &[])
    }

    fn listen_with(&mut self, stdin: std::process::Stdio, extra: &[String]) -> Result<()> {
        let incoming = self.dir.path().join("incoming.sock");
        let sock = self.dir.path().join("qmp.sock");
        let mut child = Command::new(&self.qemu)
            .args(&self.args)
            .args(extra)
            .arg("-incoming")
            .arg(format!("unix:{}", incoming.display()))
            // Paused once loaded, whatever the stream says: the guest runs
            // at `cont`, once every page it maps has been checked.
            .arg("-S")
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(stdin)
            .stderr(std::process::Stdio::piped())
            .stdout(if self.stdout_piped { std::process::Stdio::piped() } else { std::process::Stdio::inherit() })
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {}", self.qemu), e))?;
        self.interrupt.push(pbr_tools::cleanup::stop_on_interrupt(child.id()));
        self.stderr = child.stderr.take().map(QemuStderr::start);
        let child = self.child.insert(child);
        match Qmp::connect_to(&sock, child, &self.qemu) {
            Ok(qmp) => self.qmp = Some(qmp),
            Err(e) => return Err(self.failure(e, "before it was ready")),
        }
        self.incoming = Some(incoming);
        Ok(())
    }

    /// The error to report for `e`, which happened `when`: if QEMU has
    /// exited (it is given a second), that it did, with its own message
    /// and the likely cause; else `e`.
    fn failure(&mut self, e: Error, when: &str) -> Error {
        let Some(child) = self.child.as_mut() else { return e };
        let t = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if t.elapsed() < Duration::from_secs(1) => std::thread::sleep(Duration::from_millis(10)),
                _ => return e,
            }
        };
        match &self.stderr {
            Some(tail) if !tail.passed_on() => {
                qemu_stderr::exited(&self.qemu, status, when, &tail.lines(Duration::from_secs(1)))
            }
            // Its message went to our standard error as it came.
            _ => exited(&self.qemu, status),
        }
    }

    /// A prestaged QEMU: a [`QemuAdapter::standby`] that has already loaded
    /// `image` and holds its guest paused, so that a later restore of that
    /// image only resumes it ([`QemuAdapter::cont`]). Its memory is
    /// allocated from now on, as the restored guest's will be.
    ///
    /// # Errors
    /// QEMU did not start, or the image did not load.
    pub fn prestage(qemu: &str, args: Vec<String>, image: &Path) -> Result<QemuAdapter> {
        let mut q = QemuAdapter::standby_for(qemu, args, image)?;
        q.set_image(image);
        q.hold = true;
        let img = Image::open(image)?;
        let file = File::open(image).map_err(|e| Error::io(format!("cannot open {}", image.display()), e))?;
        crate::replay(&img, &file, &mut q)?;
        q.held = Some(img.image_blake3());
        Ok(q)
    }

    /// The trailer hash ([`Image::image_blake3`]) of the image a prestaged
    /// QEMU holds paused, until it is resumed.
    pub fn held(&self) -> Option<[u8; 32]> {
        self.held
    }

    /// Resumes the guest a prestaged QEMU holds.
    ///
    /// # Errors
    /// Nothing is held, or QMP failed.
    pub fn cont(&mut self) -> Result<()> {
        let qmp = self.qmp.as_mut().filter(|_| self.held.is_some());
        let qmp = qmp.ok_or_else(|| Error::Unsupported("this QEMU holds no loaded guest".into()))?;
        qmp.cmd("cont", json!({}))?;
        self.held = None;
        Ok(())
    }

    /// Whether QEMU maps the guest's RAM from the image (a flat image and
    /// QEMU 8.2 or later) rather than loading it from the stream: known
    /// once the guest is resumed.
    pub fn ram_mapped(&self) -> bool {
        self.mapped
    }

    /// Page-cache pages read back from the guest's disks into the stream
    /// (`pbr_tools::refill`): known once the guest is resumed.
    pub fn refilled_pages(&self) -> u64 {
        self.refilled.0
    }

    /// How long reading those pages back took (while QEMU started, when
    /// it was started for the restore).
    pub fn refill_time(&self) -> Duration {
        self.refilled.1
    }

    /// How long the restore spent checking the crc32 of the pages QEMU maps
    /// from a flat image (beside QEMU's start and load, when QEMU was
    /// started for the restore; zero when that was done before the
    /// decision, or when the pages were streamed and checked as they were
    /// written).
    pub fn page_check_time(&self) -> Duration {
        self.checked
    }

    /// The machine arguments QEMU runs (or will run) with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The image a standby QEMU restores.
    pub fn set_image(&mut self, image: &Path) {
        self.image = image.to_path_buf();
    }

    /// Machine arguments built from what a converted QEMU stream records
    /// when it has no `restore.cmdline`: `-machine` with the resolved type
    /// (`qemu.machine`, TCG), `-m` from `guest.ram_size`, no display, and
    /// `-nodefaults` unless the stream holds a VGA device (QEMU's default
    /// devices come with one). `None` when either value is missing.
    pub fn machine_args(image: &Image) -> Option<Vec<String>> {
        let machine = image.metadata_value("qemu.machine")?;
        let ram: u64 = image.metadata_value("guest.ram_size")?.parse().ok()?;
        let mut args = vec![
            "-machine".to_string(),
            format!("{machine},accel=tcg"),
            "-m".to_string(),
            format!("{}k", ram / 1024),
            "-display".to_string(),
            "none".to_string(),
        ];
        if !image.devices().any(|d| d.origin == DeviceOrigin::QEMU_SECTION && d.name.contains("vga")) {
            args.push("-nodefaults".to_string());
        }
        Some(args)
    }

    /// The arguments recorded in the image's `restore.cmdline` (a JSON
    /// array of strings, or a line split on white space), if any.
    /// The machine type is pinned to the one the stream was saved with
    /// (`qemu.machine`, [`pbr_tools::qemu::compat::pin_machine`]), so that a later
    /// QEMU builds the machine the stream describes: these are arguments
    /// to restore the image with. [`QemuAdapter::recorded_boot_args`] are
    /// the command line as recorded, to boot the machine afresh.
    pub fn recorded_args(image: &Image) -> Option<Vec<String>> {
        let args = QemuAdapter::recorded_boot_args(image)?;
        Some(pbr_tools::qemu::compat::restore_args(args, image))
    }

    /// The command line `restore.cmdline` records (a JSON array of
    /// strings, or a line split on white space), as recorded.
    pub fn recorded_boot_args(image: &Image) -> Option<Vec<String>> {
        let c = image.metadata_value("restore.cmdline")?;
        Some(
            serde_json::from_str::<Vec<String>>(c)
                .ok()
                .unwrap_or_else(|| c.split_whitespace().map(str::to_owned).collect()),
        )
    }
}

impl HypervisorAdapter for QemuAdapter {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn memory(&mut self, _image: &Image, _file: &File, _plan: &RegionPlan) -> Result<Taken> {
        // The pages travel in the exported stream.
        Ok(Taken::Yes)
    }

    fn vcpu(&mut self, _vcpu: &Vcpu) -> Result<Taken> {
        // The cpu sections travel verbatim with the device state.
        Ok(Taken::Yes)
    }

    fn device(&mut self, blob: &DeviceBlob<'_>) -> Result<Taken> {
        Ok(match blob.origin {
            DeviceOrigin::QEMU_SECTION | DeviceOrigin::QEMU_STREAM => Taken::Yes,
            o => Taken::No(format!("QEMU does not take {o} state")),
        })
    }

    fn resume(&mut self) -> Result<()> {
        // Opened once: for the mapping's offsets and for the stream.
        let image = Image::open(&self.image)?;
        if self.maps.is_some_and(|h| h != image.image_blake3()) {
            // Its RAM is another image's: the stream carries no pages.
            return Err(Error::Unsupported(format!(
                "this standby QEMU maps another image's RAM, not {}'s",
                self.image.display()
            )));
        }
        // RAM mapped from a flat image where QEMU can (8.2 and later; QEMU
        // is asked its version only for a flat image).
        // QEMU is started here unless a standby one is already listening.
        let start = match self.incoming {
            Some(_) => None,
            None => {
                let m = mapped_ram_args(&image, &self.image)
                    .filter(|_| qemu_version(&self.qemu).is_some_and(|v| v >= (8, 2)));
                self.mapped = m.is_some();
                Some(m.unwrap_or_default())
            }
        };
        let mapped = self.mapped;
        let hash = image.image_blake3();
        let preloaded = self.preloaded.take().filter(|p| p.hash == hash && p.mapped == mapped);
        let path = self.image.clone();
        // The pages QEMU maps, unless checked before the failure, are
        // checked while QEMU starts and loads the device state (it waits,
        // paused, for `cont`); the guest runs only once they passed.
        let check_now = mapped && preloaded.is_none();
        std::thread::scope(|s| {
            let check = check_now.then(|| s.spawn(|| check_mapped(&image, &path)));
            // What was made ready before took no time of this restore; the
            // rest is made ready while QEMU starts.
            let loader = s.spawn(|| match preloaded {
                Some(p) => Ok(p.beforehand()),
                None => Prepared::load(&image, mapped),
            });
            if let Some(extra) = &start {
                // QEMU's standard input is the caller's: a console there
                // works.
                self.listen_with(std::process::Stdio::inherit(), extra)?;
            }
            let prepared =
                loader.join().map_err(|_| Error::Unsupported("the stream's preparation panicked".into()))??;
            let incoming = self
                .incoming
                .take()
                .ok_or_else(|| Error::Unsupported("QEMU is not listening for the stream".into()))?;
            self.load_stream(&incoming, &image, prepared)?;
            if let Some(check) = check {
                self.checked = check.join().map_err(|_| Error::Unsupported("the page check panicked".into()))??;
            }
            self.resume_loaded()
        })
    }
}

impl QemuAdapter {
    /// Streams the image into the listening QEMU and waits until it loaded
    /// it; the guest stays paused.
    fn load_stream(&mut self, incoming: &Path, image: &Image, prepared: Prepared) -> Result<()> {
        let out = UnixStream::connect(incoming)
            .map_err(|e| Error::io(format!("cannot reach QEMU's incoming socket {}", incoming.display()), e))?;
        let qmp = self.qmp.as_mut().ok_or_else(|| Error::Unsupported("the standby QEMU has no QMP".into()))?;
        let refill_time = prepared.refill_time;
        let report = std::thread::scope(|s| {
            let writer = s.spawn(move || prepared.write_to(image, out));
            let loaded = qmp.wait_migration(Duration::from_secs(300));
            let written = writer.join().map_err(|_| Error::Unsupported("the stream writer panicked".into()))?;
            // A damaged page stops the stream, so QEMU's load fails too: the
            // damage is what happened. The guest never ran.
            match written {
                Err(e) if e.is_damage() => Err(e),
                written => loaded.and(written),
            }
        });
        let report = match report {
            Err(e) if e.is_damage() => return Err(e),
            r => r.map_err(|e| self.failure(e, "while loading the image"))?,
        };
        self.refilled = (report.refilled_pages, refill_time);
        Ok(())
    }

    /// Resumes the loaded guest, unless it is to be held paused
    /// ([`QemuAdapter::prestage`]).
    fn resume_loaded(&mut self) -> Result<()> {
        if !self.hold {
            let qmp = self.qmp.as_mut().ok_or_else(|| Error::Unsupported("the standby QEMU has no QMP".into()))?;
            if let Err(e) = qmp.cmd("cont", json!({})) {
                return Err(self.failure(e, "while resuming the guest"));
            }
        }
        // Loaded: what QEMU says from now on is the running guest's.
        if let Some(tail) = &self.stderr {
            tail.pass_on();
        }
        Ok(())
    }
}

/// `qemu --version` as (major, minor).
pub fn qemu_version(qemu: &str) -> Option<(u32, u32)> {
    let v = pbr_tools::qemu::compat::qemu_full_version(qemu)?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// QEMU arguments that back the `pc.ram` block with the flat image at
/// `path`: a private (copy on write) mapping of a file opened read-only,
/// which the guest may write (`rom=off`), at the block's offset in the
/// file. `None` when the image is not flat or its `pc.ram` is not one
/// range of the file.
pub fn mapped_ram_args(image: &Image, path: &Path) -> Option<Vec<String>> {
    use pbr_tools::flat;
    use pbr_tools::qemu::export::MAIN_RAM;
    if image.metadata_value(flat::LAYOUT_KEY) != Some("flat") {
        return None;
    }
    let regions: Vec<(usize, &pbr_format::Region<'_>)> =
        image.regions().iter().enumerate().filter(|(_, r)| r.name == MAIN_RAM).collect();
    let (first, _) = *regions.first()?;
    let base = flat::region_offset(image, first)?;
    let mut size = 0;
    for &(i, r) in &regions {
        if flat::region_offset(image, i)? != base + r.source_offset {
            return None;
        }
        size = size.max(r.source_offset + r.length);
    }
    let file = std::fs::canonicalize(path).ok()?.display().to_string().replace(',', ",,");
    Some(vec![
        "-object".into(),
        format!(
            "memory-backend-file,id={MAIN_RAM},mem-path={file},offset={base},size={size},share=off,readonly=on,rom=off"
        ),
        "-machine".into(),
        format!("memory-backend={MAIN_RAM}"),
    ])
}

impl Drop for QemuAdapter {
    fn drop(&mut self) {
        // Forget the child before it is reaped.
        self.interrupt.clear();
        if let Some(c) = self.child.as_mut()
            && let Ok(None) = c.try_wait()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
