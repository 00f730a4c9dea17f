//! The QEMU adapter: exports the image to a migration stream and starts
//! `qemu-system-x86_64 -incoming` with the command line recorded at capture
//! (or one given), waits for the load, and resumes the guest over QMP.

pub mod args;
mod prepared;
pub mod process;
pub mod qmp;
mod served;
mod stderr;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pbr_format::{DeviceBlob, DeviceOrigin, Image, Vcpu};
use serde_json::json;

pub use args::{mapped_ram_args, qemu_version};
use prepared::{Prepared, check_mapped};
use process::{Io, QemuProcess};
pub use qmp::Qmp;
pub use served::{ServedRam, served_ram_args};

use crate::error::{Error, Result};
use crate::{HypervisorAdapter, RegionPlan, Taken};

/// Where the adapter's QEMU stands.
enum State {
    /// No QEMU yet: the restore starts one.
    Idle,
    /// QEMU runs, initialised, and waits for the stream on `incoming`.
    Listening {
        /// The process.
        process: QemuProcess,
        /// Its incoming socket.
        incoming: PathBuf,
        /// The trailer hash of the image whose RAM it maps, if any: only
        /// that image can be restored into it.
        maps: Option<[u8; 32]>,
        /// An image's stream made ready before the failure.
        prepared: Option<Prepared>,
    },
    /// QEMU loaded the image with trailer hash `hash` and holds its guest
    /// paused.
    Holding {
        /// The process.
        process: QemuProcess,
        /// The image's trailer hash.
        hash: [u8; 32],
    },
    /// The guest runs.
    Running(QemuProcess),
}

/// What the last restore did.
#[derive(Clone, Copy, Debug, Default)]
struct Restored {
    /// QEMU maps the guest's RAM from the (flat) image.
    mapped: bool,
    /// Page-cache pages read back into the stream, and how long that took.
    refilled: (u64, Duration),
    /// How long the restore spent checking the pages QEMU maps.
    checked: Duration,
}

/// Replays into a QEMU process: a fresh one, or one started before the
/// failure that waits for the stream ([`QemuAdapter::standby`]) or holds a
/// loaded guest ([`QemuAdapter::prestage`]).
pub struct QemuAdapter {
    image: PathBuf,
    qemu: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
    state: State,
    restored: Restored,
    /// QEMU's standard output goes to a pipe ([`QemuAdapter::pipe_stdout`]).
    stdout_piped: bool,
    /// The guest's RAM comes from this server ([`QemuAdapter::serve_ram`]).
    served: Option<Arc<dyn ServedRam>>,
    /// Removes `dir` if the tool is interrupted.
    _interrupt: pbr_tools::cleanup::Registration,
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
        let interrupt = pbr_tools::cleanup::remove_on_interrupt(dir.path());
        Ok(QemuAdapter {
            image: image.to_path_buf(),
            qemu: qemu.to_owned(),
            args,
            dir,
            state: State::Idle,
            restored: Restored::default(),
            stdout_piped: false,
            served: None,
            _interrupt: interrupt,
        })
    }

    /// Makes the QEMU this adapter starts write its standard output (the
    /// guest's console under `-serial stdio`) into a pipe, the `stdout` of
    /// its [`QemuAdapter::process`], instead of the caller's: the caller
    /// orders the console with its own output.
    pub fn pipe_stdout(&mut self) {
        self.stdout_piped = true;
    }

    /// Makes the restore map the guest's `pc.ram` block from `ram` instead
    /// of taking it from the image: the image is then a store image's
    /// shell (metadata `store.ram` = `served`), whose RAM pages are not in
    /// the file. Only a QEMU started for the restore (8.2 or later) takes
    /// it; the guest runs once [`ServedRam::settle`] returned.
    pub fn serve_ram(&mut self, ram: Arc<dyn ServedRam>) {
        self.served = Some(ram);
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
        q.listen(Stdio::null(), &[], None)?;
        Ok(q)
    }

    /// A standby QEMU for `image` (at `path`) in particular: where the
    /// image is flat and QEMU 8.2 or later, its RAM is already mapped from
    /// the image (nothing is read or loaded before the failure: the
    /// mapping is private and pages come in when the guest touches them),
    /// so that restoring that image later streams only the device state.
    /// Otherwise a plain [`QemuAdapter::standby`].
    ///
    /// # Errors
    /// QEMU did not start or its QMP never came up.
    pub fn standby_for(qemu: &str, args: Vec<String>, path: &Path, image: &Image) -> Result<QemuAdapter> {
        let Some(mapping) = args::mapping_for(qemu, image, path) else { return QemuAdapter::standby(qemu, args) };
        let mut q = QemuAdapter::new(path, qemu, args)?;
        q.listen(Stdio::null(), &mapping, Some(image.image_blake3()))?;
        Ok(q)
    }

    /// A standby QEMU for `image` at `path` ([`QemuAdapter::standby_for`],
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
        let mut q =
            QemuAdapter::standby_for(qemu, args.clone(), path, image).or_else(|_| QemuAdapter::standby(qemu, args))?;
        if let State::Listening { maps, prepared, .. } = &mut q.state {
            // The pages it maps are checked now, before the failure; an
            // image that fails is made ready (and refused) at its restore.
            let mapped = *maps == Some(image.image_blake3());
            *prepared =
                (!mapped || check_mapped(image, path).is_ok()).then(|| Prepared::load(image, mapped).ok()).flatten();
        }
        Ok(q)
    }

    /// A prestaged QEMU: a [`QemuAdapter::standby_for`] that has already
    /// loaded `image` (at `path`) and holds its guest paused, so that a
    /// later restore of that image only resumes it ([`QemuAdapter::cont`]).
    /// Its memory is allocated from now on, as the restored guest's will
    /// be; its disks are taken (activated, locked) only when it resumes.
    ///
    /// # Errors
    /// QEMU did not start, or the image did not load.
    pub fn prestage(qemu: &str, args: Vec<String>, path: &Path, image: &Image) -> Result<QemuAdapter> {
        let mut q = QemuAdapter::standby_for(qemu, args, path, image)?;
        if let Some(p) = q.process() {
            // Its disks stay inactive (no write lock, nothing cached) until
            // the guest runs: the VM it replaces may still be running them.
            let late = json!({"capabilities": [{"capability": "late-block-activate", "state": true}]});
            p.cmd("migrate-set-capabilities", late, "while preparing to load")?;
        }
        q.set_image(path);
        q.load(image)?;
        Ok(q)
    }

    /// The QEMU process, once started.
    pub fn process(&mut self) -> Option<&mut QemuProcess> {
        match &mut self.state {
            State::Idle => None,
            State::Listening { process, .. } | State::Holding { process, .. } | State::Running(process) => {
                Some(process)
            }
        }
    }

    /// The process id of QEMU, once started.
    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Idle => None,
            State::Listening { process, .. } | State::Holding { process, .. } | State::Running(process) => {
                Some(process.pid())
            }
        }
    }

    /// The trailer hash of the image a standby QEMU maps its RAM from, if
    /// any: only that image can be restored into it.
    pub fn maps(&self) -> Option<[u8; 32]> {
        match &self.state {
            State::Listening { maps, .. } => *maps,
            _ => None,
        }
    }

    /// The trailer hash ([`Image::image_blake3`]) of the image a prestaged
    /// QEMU holds paused, until it is resumed.
    pub fn held(&self) -> Option<[u8; 32]> {
        match &self.state {
            State::Holding { hash, .. } => Some(*hash),
            _ => None,
        }
    }

    /// Resumes the guest a prestaged QEMU holds.
    ///
    /// # Errors
    /// Nothing is held, or QMP failed.
    pub fn cont(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Holding { mut process, .. } => {
                process.cmd("cont", json!({}), "while resuming the guest")?;
                // Loaded: what QEMU says from now on is the running guest's.
                process.pass_on_stderr();
                self.state = State::Running(process);
                Ok(())
            }
            other => {
                self.state = other;
                Err(Error::Image("this QEMU holds no loaded guest".into()))
            }
        }
    }

    /// Quits QEMU, if started.
    pub fn quit(mut self) {
        if let State::Listening { process, .. } | State::Holding { process, .. } | State::Running(process) =
            std::mem::replace(&mut self.state, State::Idle)
        {
            process.quit();
        }
    }

    /// Whether QEMU maps the guest's RAM from the image (a flat image and
    /// QEMU 8.2 or later) rather than loading it from the stream: known
    /// once the guest is loaded.
    pub fn ram_mapped(&self) -> bool {
        self.restored.mapped
    }

    /// Page-cache pages read back from the guest's disks into the stream
    /// (`pbr_tools::refill`): known once the guest is loaded.
    pub fn refilled_pages(&self) -> u64 {
        self.restored.refilled.0
    }

    /// How long reading those pages back took (while QEMU started, when
    /// it was started for the restore).
    pub fn refill_time(&self) -> Duration {
        self.restored.refilled.1
    }

    /// How long the restore spent checking the crc32 of the pages QEMU maps
    /// from a flat image (beside QEMU's start and load, when QEMU was
    /// started for the restore; zero when that was done before the
    /// decision, or when the pages were streamed and checked as they were
    /// written).
    pub fn page_check_time(&self) -> Duration {
        self.restored.checked
    }

    /// The machine arguments QEMU runs (or will run) with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The image a standby QEMU restores.
    pub fn set_image(&mut self, image: &Path) {
        self.image = image.to_path_buf();
    }

    /// Starts QEMU with `extra` arguments, listening for the stream on a
    /// socket of its own directory (QEMU's standard input stays free for a
    /// console the arguments put there, as `-serial stdio` or
    /// `-nographic` do); `maps` is the image whose RAM `extra` maps.
    fn listen(&mut self, stdin: Stdio, extra: &[String], maps: Option<[u8; 32]>) -> Result<()> {
        let incoming = self.dir.path().join("incoming.sock");
        let mut args = self.args.clone();
        args.extend(extra.iter().cloned());
        // Paused once loaded, whatever the stream says: the guest runs at
        // `cont`, once every page it maps has been checked.
        args.extend(["-incoming".into(), format!("unix:{}", incoming.display()), "-S".into()]);
        let stdout = if self.stdout_piped { Stdio::piped() } else { Stdio::inherit() };
        let io = Io { stdin, stdout, hold_stderr: true };
        let process = QemuProcess::launch(&self.qemu, &args, &self.dir.path().join("qmp.sock"), io)?;
        self.state = State::Listening { process, incoming, maps, prepared: None };
        Ok(())
    }

    /// Loads `image` into QEMU (started here unless one is listening) and
    /// holds its guest paused.
    fn load(&mut self, image: &Image) -> Result<()> {
        let hash = image.image_blake3();
        if self.maps().is_some_and(|h| h != hash) {
            // Its RAM is another image's: the stream carries no pages.
            return Err(Error::Image(format!(
                "this standby QEMU maps another image's RAM, not {}'s",
                self.image.display()
            )));
        }
        if self.served.is_none() && image.metadata_value(pbr_format::keys::STORE_RAM) == Some("served") {
            return Err(Error::Image(format!(
                "{} is a store image's shell: its RAM is not in the file, only the store's mount serves it",
                self.image.display()
            )));
        }
        // RAM mapped from a flat image where QEMU can (8.2 and later; QEMU
        // is asked its version only for a flat image), or from its server.
        let start = match (&self.state, &self.served) {
            (State::Idle, None) => Some(args::mapping_for(&self.qemu, image, &self.image)),
            (State::Idle, Some(ram)) => {
                if qemu_version(&self.qemu).is_none_or(|v| v < (8, 2)) {
                    return Err(Error::Served(format!("{} cannot map it (QEMU 8.2 or later can)", self.qemu)));
                }
                Some(Some(served_ram_args(ram.as_ref())))
            }
            (State::Listening { .. }, None) => None,
            (State::Listening { .. }, Some(_)) => {
                return Err(Error::Image("a waiting QEMU cannot map RAM from a store".into()));
            }
            (State::Holding { .. } | State::Running(_), _) => {
                return Err(Error::Image("this QEMU already holds a guest".into()));
            }
        };
        let mapped = match &start {
            Some(m) => m.is_some(),
            None => self.maps().is_some(),
        };
        let preloaded = match &mut self.state {
            State::Listening { prepared, .. } => prepared.take().filter(|p| p.hash == hash && p.mapped == mapped),
            _ => None,
        };
        let path = self.image.clone();
        // The pages QEMU maps, unless checked before the failure, are
        // checked while QEMU starts and loads the device state (it waits,
        // paused, for `cont`); the guest runs only once they passed.
        // A served RAM's pages are checked by its server as they are read;
        // the guest runs once it settled.
        let served = self.served.clone();
        let check_now = mapped && preloaded.is_none();
        std::thread::scope(|s| {
            let check = check_now.then(|| {
                s.spawn(move || match &served {
                    Some(ram) => {
                        let t = std::time::Instant::now();
                        ram.settle().map(|()| t.elapsed()).map_err(Error::Served)
                    }
                    None => check_mapped(image, &path),
                })
            });
            // What was made ready before took no time of this restore; the
            // rest is made ready while QEMU starts.
            let loader = s.spawn(|| match preloaded {
                Some(p) => Ok(p.beforehand()),
                None => Prepared::load(image, mapped),
            });
            let served = self.served.clone();
            // A failure here makes what the RAM's server still fetches of
            // no use.
            let cancel = |e: Error| {
                if let Some(ram) = &served {
                    ram.cancel();
                }
                e
            };
            if let Some(extra) = &start {
                // QEMU's standard input is the caller's: a console there
                // works.
                self.listen(Stdio::inherit(), extra.as_deref().unwrap_or_default(), None).map_err(cancel)?;
            }
            let prepared = loader
                .join()
                .map_err(|_| Error::Thread("the stream's preparation panicked".into()))
                .and_then(|p| p)
                .map_err(cancel)?;
            self.restored = Restored { mapped, refilled: (0, prepared.refill_time), checked: Duration::ZERO };
            self.load_stream(image, prepared).map_err(cancel)?;
            if let Some(check) = check {
                self.restored.checked = check.join().map_err(|_| Error::Thread("the page check panicked".into()))??;
            }
            Ok(())
        })
    }

    /// Streams the image into the listening QEMU and waits until it loaded
    /// it; the guest stays paused.
    fn load_stream(&mut self, image: &Image, prepared: Prepared) -> Result<()> {
        let State::Listening { mut process, incoming, .. } = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(Error::Image("QEMU is not listening for the stream".into()));
        };
        let out = UnixStream::connect(&incoming)
            .map_err(|e| Error::io(format!("cannot reach QEMU's incoming socket {}", incoming.display()), e))?;
        let report = std::thread::scope(|s| {
            let writer = s.spawn(move || prepared.write_to(image, out));
            let loaded = process.qmp().wait_migration(Duration::from_secs(300));
            let written = writer.join().map_err(|_| Error::Thread("the stream writer panicked".into()))?;
            // A damaged page stops the stream, so QEMU's load fails too: the
            // damage is what happened. The guest never ran.
            match written {
                Err(e) if e.is_damage() => Err(e),
                written => loaded.and(written),
            }
        });
        let report = match report {
            Err(e) if e.is_damage() => return Err(e),
            r => r.map_err(|e| process.failure(e, "while loading the image"))?,
        };
        self.restored.refilled.0 = report.refilled_pages;
        self.state = State::Holding { process, hash: image.image_blake3() };
        Ok(())
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

    fn resume(&mut self, image: &Image) -> Result<()> {
        self.load(image)?;
        self.cont()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before QEMU runs, the adapter holds nothing, maps nothing and has
    /// no process; resuming what it does not hold is refused.
    #[test]
    fn an_idle_adapter_holds_nothing() {
        let mut q = QemuAdapter::new(Path::new("x.pbr"), "qemu-system-x86_64", vec!["-m".into(), "64".into()]).unwrap();
        assert!(q.pid().is_none() && q.held().is_none() && q.maps().is_none() && q.process().is_none());
        assert_eq!(q.args(), ["-m", "64"]);
        let e = q.cont().unwrap_err();
        assert!(matches!(e, Error::Image(_)), "{e:?}");
        assert_eq!(e.to_string(), "this QEMU holds no loaded guest");
        assert!(q.pid().is_none(), "a refused cont leaves the adapter as it was");
    }
}
