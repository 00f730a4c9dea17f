//! Phase-based reboot end to end: capture restartable candidates at a real
//! guest's boot phases, and recover from the latest valid one.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod agent;
pub mod guest;
pub mod machine;
pub mod points;
pub mod resident;
pub mod restore;
pub mod service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pbr_format::{Image, Phase};

use guest::{Control, Event, Guest, GuestSpec, SaveCounters, serial_args};
use pbr_replay::qemu::{QemuAdapter, Qmp};
use pbr_replay::replay;
use pbr_tools::error::{Error, Result};
use pbr_tools::qemu::{ConvertOptions, convert};

/// One candidate written by [`capture`].
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Phase name.
    pub phase: String,
    /// The image.
    pub path: PathBuf,
    /// Seconds from QEMU's start to the phase marker.
    pub since_power_on: f64,
    /// The guest's own uptime at the marker.
    pub guest_uptime: f64,
    /// Guest memory in bytes.
    pub guest_bytes: u64,
    /// Size of QEMU's stream.
    pub stream_bytes: u64,
    /// Size of the image before trimming.
    pub untrimmed_bytes: u64,
    /// Size of the stored (classified, trimmed) image.
    pub image_bytes: u64,
    /// QEMU's RAM counters of the save.
    pub counters: SaveCounters,
}

/// What to do at each phase.
#[derive(Clone, Debug, Default)]
pub struct CaptureOptions {
    /// Classify pages from the guest's kpageflags dumps (needs `pbr.kpf=1`
    /// on the kernel command line).
    pub classify: bool,
    /// Record the files each phase read that exist under this root.
    pub root: Option<PathBuf>,
    /// Keep each phase's QEMU stream (`<phase>.qemu`) and the guest's
    /// kpageflags dump (`<phase>.kpageflags.gz`) in this directory.
    pub keep_streams: Option<PathBuf>,
}

/// Boots `spec` and writes one trimmed candidate per phase into `out`.
///
/// # Errors
/// QEMU or the guest failed, a conversion failed, I/O.
pub fn capture(spec: &GuestSpec, out: &Path, opts: &CaptureOptions) -> Result<Vec<Candidate>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let work = tempfile::tempdir_in(out).map_err(|e| Error::io("cannot create a work directory", e))?;
    let _interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
    let _temps = pbr_tools::cleanup::temp_files_in(out);
    let t0 = Instant::now();
    if let Some(dir) = &opts.keep_streams {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let mut g = Guest::boot(spec, work.path(), false)?;
    let mut files: HashMap<String, Vec<String>> = HashMap::new();
    let mut kpf: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out_list = Vec::new();
    loop {
        match g.control.next_event()? {
            Event::File(p, f) => files.entry(p).or_default().push(f),
            Event::Kpf(p, gz) => {
                kpf.insert(p, gz);
            }
            Event::Phase(p, uptime) => {
                let since_power_on = t0.elapsed().as_secs_f64();
                g.qmp.cmd("stop", serde_json::json!({}))?;
                let stream = work.path().join(format!("{p}.qemu"));
                let counters = g.save(&stream)?;
                let c = candidate(
                    out,
                    work.path(),
                    &stream,
                    &PhaseInput {
                        cache: None,
                        free_only_if_zero: false,
                        phase: &p,
                        sequence: out_list.len() as u32 + 1,
                        uptime,
                        restore_cmdline: serde_json::to_string(&spec.machine_args()).unwrap_or_default(),
                        kpageflags: match (opts.classify, kpf.get(&p)) {
                            (false, _) => None,
                            (true, Some(gz)) => Some(gz),
                            (true, None) => {
                                return Err(Error::Unsupported(format!(
                                    "no kpageflags dump for phase {p} (pbr.kpf=1?)"
                                )));
                            }
                        },
                        kpagecount: None,
                        files: files.get(&p).map_or(&[], Vec::as_slice),
                        metadata: Vec::new(),
                        max_pages: 1 << 30,
                        drop: pbr_tools::trim::Drop::default(),
                    },
                    opts,
                )?;
                out_list.push(Candidate { since_power_on, counters, ..c });
                match &opts.keep_streams {
                    Some(dir) => keep(&stream, kpf.get(&p), dir, &p)?,
                    None => std::fs::remove_file(&stream).map_err(|e| Error::io("cannot remove a stream", e))?,
                }
                g.qmp.cmd("cont", serde_json::json!({}))?;
                g.control.go()?;
            }
            Event::Ready(_) => break,
        }
    }
    g.quit();
    Ok(out_list)
}

/// Moves a phase's stream into `dir` and writes its kpageflags dump beside.
fn keep(stream: &Path, kpf: Option<&Vec<u8>>, dir: &Path, phase: &str) -> Result<()> {
    let dest = pbr_format::write::destination(&dir.join(format!("{phase}.qemu")))?;
    std::fs::rename(stream, &dest)
        .or_else(|_| std::fs::copy(stream, &dest).and_then(|_| std::fs::remove_file(stream)))
        .map_err(|e| Error::io(format!("cannot keep the stream as {}", dest.display()), e))?;
    if let Some(gz) = kpf {
        pbr_tools::output::write_atomic(&dir.join(format!("{phase}.kpageflags.gz")), gz)?;
    }
    Ok(())
}

/// What one phase gives [`candidate`].
pub(crate) struct PhaseInput<'a> {
    /// Phase name.
    pub phase: &'a str,
    /// Its place in the boot (1 for the first).
    pub sequence: u32,
    /// The guest's uptime at the phase, seconds.
    pub uptime: f64,
    /// The command line a restore repeats (JSON list).
    pub restore_cmdline: String,
    /// gzip of the guest's kpageflags: classify with it.
    pub kpageflags: Option<&'a [u8]>,
    /// gzip of the guest's kpagecount, with it.
    pub kpagecount: Option<&'a [u8]>,
    /// Files the phase read (kept in the manifest when `root` is given).
    pub files: &'a [String],
    /// Metadata for the candidate.
    pub metadata: Vec<(String, String)>,
    /// Most pages a kpageflags dump may describe.
    pub max_pages: u64,
    /// What trimming drops.
    pub drop: pbr_tools::trim::Drop,
    /// What the agent said is in the page cache, and the disks sealed at
    /// the point: verified into the candidate's disk references.
    pub cache: Option<(&'a [pbr_agent::CachedFile], &'a pbr_tools::seal::Seals)>,
    /// The kpageflags dump was read while the guest ran: a page it calls
    /// free stays free only when its saved bytes are zero (the guest zeroes
    /// what it frees; a page that is not zero was taken since the dump).
    pub free_only_if_zero: bool,
}

/// The metadata key that says how the agent's page-cache references fared
/// at capture (JSON: pages offered, kept, differing, unusable).
pub const CACHE_KEY: &str = "pbr.cache_refs";

/// The metadata key with the stored `kernel` pages by kpageflags kind
/// (JSON: reserved, slab, page_tables, other): where a candidate's size
/// goes once free pages and page cache are dropped.
pub const KERNEL_PAGES_KEY: &str = "classes.kernel_pages";

/// Converts, classifies, trims and records the manifest of one phase.
pub(crate) fn candidate(
    out: &Path,
    work: &Path,
    stream: &Path,
    input: &PhaseInput<'_>,
    opts: &CaptureOptions,
) -> Result<Candidate> {
    let phase = input.phase;
    let stream_bytes = std::fs::metadata(stream).map_err(|e| Error::io("stream", e))?.len();
    let raw = work.join(format!("{phase}-raw.pbr"));
    let copts = ConvertOptions {
        phase: Some(Phase { since_boot_ns: (input.uptime * 1e9) as u64, ..Phase::named(phase, input.sequence) }),
        restore_cmdline: Some(input.restore_cmdline.clone()),
        container_metadata: input.metadata.clone(),
        ..Default::default()
    };
    let file = std::fs::File::open(stream).map_err(|e| Error::io("stream", e))?;
    let report = convert(&file, Some(&file), &raw, &copts, &|_| {})?;
    let mut current = raw;
    let mut kernel_pages = None;
    if let Some(gz) = input.kpageflags {
        let words = pbr_tools::classify::parse_words(gz, input.max_pages)?;
        let counts = input.kpagecount.map(|c| pbr_tools::classify::parse_words(c, input.max_pages)).transpose()?;
        let next = work.join(format!("{phase}-classified.pbr"));
        let raw_img = Image::open(&current)?;
        let mut classes = pbr_tools::classify::classes(&words, counts.as_deref());
        if input.free_only_if_zero {
            pbr_tools::classify::free_only_if_zero(&raw_img, &mut classes)?;
        }
        let k = pbr_tools::classify::KernelPages::of(&raw_img, &words, &classes);
        let detail =
            serde_json::json!({"reserved": k.reserved, "slab": k.slab, "page_tables": k.page_tables, "other": k.other});
        kernel_pages = Some(detail.to_string());
        pbr_tools::classify::apply(&raw_img, &next, &classes, "kpageflags", None)?;
        current = next;
    }
    let classified = Image::open(&current)?;
    let untrimmed_bytes = classified.file_len();
    let trimmed = work.join(format!("{phase}-trimmed.pbr"));
    let (refs, mut extra) = match input.cache {
        Some((files, seals)) => {
            let (refs, r) = pbr_tools::refill::verify(&classified, files, seals)?;
            let note =
                serde_json::json!({"offered": r.offered, "kept": r.kept, "differ": r.differ, "unusable": r.unusable});
            (refs, vec![(CACHE_KEY.to_owned(), note.to_string())])
        }
        None => (classified.disk_refs().clone(), Vec::new()),
    };
    if let Some(k) = kernel_pages {
        extra.push((KERNEL_PAGES_KEY.to_owned(), k));
    }
    pbr_tools::trim::trim_with(&classified, &trimmed, input.drop, &refs, &extra)?;
    let dest = out.join(format!("{phase}.pbr"));
    match &opts.root {
        Some(root) => {
            let list: Vec<String> = input.files.iter().filter(|f| root.join(f).is_file()).cloned().collect();
            pbr_tools::manifest::add(&Image::open(&trimmed)?, root, &list, &dest)?;
        }
        None => std::fs::rename(&trimmed, pbr_format::write::destination(&dest)?)
            .map_err(|e| Error::io("cannot move the candidate", e))?,
    }
    let image_bytes = std::fs::metadata(&dest).map_err(|e| Error::io("candidate", e))?.len();
    let guest_bytes = report.blocks.iter().find(|b| b.name == "pc.ram").map_or(0, |b| b.used_length);
    Ok(Candidate {
        phase: phase.to_owned(),
        path: dest,
        since_power_on: 0.0,
        guest_uptime: input.uptime,
        guest_bytes,
        stream_bytes,
        untrimmed_bytes,
        image_bytes,
        counters: SaveCounters::default(),
    })
}

/// Where the QEMU process of a timed boot or recovery comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU is started after the decision: its start counts as downtime.
    #[default]
    Spawn,
    /// A QEMU process is running before the decision, as the VM's own
    /// process is when its guest reboots: for a cold boot, started paused at
    /// the machine's first instruction (what a reset gives); for a
    /// recovery, initialised and listening for a stream of the candidates'
    /// machine.
    Standby,
    /// As [`Vmm::Standby`], and for a recovery the standby QEMU has already
    /// loaded the latest candidate and holds it paused (the candidates are
    /// known long before a failure): when the decision chooses that image,
    /// unchanged, recovery only resumes it. A cold boot is as with
    /// [`Vmm::Standby`].
    Prestaged,
}

impl Vmm {
    /// The name scripts see: `spawn`, `standby` or `prestaged`.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Spawn => "spawn",
            Vmm::Standby => "standby",
            Vmm::Prestaged => "prestaged",
        }
    }
}

/// How long a boot or a recovery may take to serve.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a timed boot or recovery saw when the guest's service came up.
struct Served {
    /// From the start of the timing until the service answered.
    at: Duration,
    /// The service's status line.
    status: String,
    /// The guest's own `PBR-READY` uptime, which follows.
    uptime: f64,
}

/// Waits, from `t`, until the guest's service answers on `port` (a client
/// outside the guest, [`service::wait_ready`]) while the control port
/// answers every phase marker at once (the first one, already seen, when
/// `pending` is set); then waits for the guest's own `PBR-READY`, which is
/// not timed. When the service never answers, QEMU is told to quit.
fn serve(control: &mut Control, qmp: &mut Qmp, port: u16, pending: bool, t: Instant) -> Result<Served> {
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let guest = s.spawn(|| {
            let r = if pending { control.go() } else { Ok(()) }.and_then(|()| control.until_ready());
            failed.store(r.is_err(), Ordering::Relaxed);
            r
        });
        let ready = service::wait_ready(port, SERVICE_TIMEOUT, &failed).map(|status| (t.elapsed(), status));
        if ready.is_err() {
            let _ = qmp.cmd("quit", serde_json::json!({}));
        }
        let uptime = guest.join().map_err(|_| Error::Unsupported("the control port reader panicked".into()))?;
        // What the guest's side says comes first: it is why the wait ended.
        match (ready, uptime) {
            (Ok((at, status)), Ok(uptime)) => Ok(Served { at, status, uptime }),
            (_, Err(e)) | (Err(e), _) => Err(e),
        }
    })
}

/// Boots `spec` from scratch and returns the time until the guest's
/// service answers a client on the host ([`service::wait_ready`]): from
/// QEMU's start ([`Vmm::Spawn`]), or from `cont` of a QEMU started paused
/// ([`Vmm::Standby`]). The guest's own `PBR-READY` must follow.
///
/// # Errors
/// QEMU or the guest failed.
pub fn cold_boot(spec: &GuestSpec, vmm: Vmm) -> Result<Duration> {
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let (t, mut g) = match vmm {
        Vmm::Spawn => {
            let t = Instant::now();
            (t, Guest::boot(spec, work.path(), false)?)
        }
        Vmm::Standby | Vmm::Prestaged => {
            let mut g = Guest::boot(spec, work.path(), true)?;
            let t = Instant::now();
            g.qmp.cmd("cont", serde_json::json!({}))?;
            (t, g)
        }
    };
    let served = serve(&mut g.control, &mut g.qmp, g.port, false, t)?;
    g.quit();
    Ok(served.at)
}

/// What [`recover`] did.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The candidate restored.
    pub chosen: PathBuf,
    /// From the decision to recover until the service was ready.
    pub downtime: Duration,
    /// Of which selecting the candidate.
    pub select: Duration,
    /// Of which starting QEMU and loading the state, until the VM runs.
    pub restore: Duration,
    /// Of which the restored guest's work until its service answered.
    pub guest: Duration,
    /// The adapter that restored it: `qemu`, or `kvm` for images the
    /// project's own VMM wrote.
    pub adapter: &'static str,
    /// How the guest's RAM got there: `mapped` from the image (KVM; QEMU
    /// 8.2+ with a flat image) or `streamed` through QEMU's migration.
    pub ram: &'static str,
    /// Where the restoring QEMU came from: the standby or prestaged one
    /// when it served the chosen candidate, else [`Vmm::Spawn`] (also for
    /// the KVM adapter, which starts no QEMU).
    pub vmm: Vmm,
    /// The ready signal: the service's status line and the guest's own
    /// `PBR-READY <uptime>` that followed, for a QEMU guest; the first port
    /// write of a VMM guest.
    pub signal: String,
    /// What the standby or prestaged QEMU held in memory just before the
    /// decision; `None` without one.
    pub held: Option<resident::Resident>,
    /// Checking the crc32 of the pages QEMU maps from a flat candidate,
    /// beside QEMU's start and load (zero when done before the decision,
    /// or streamed: each streamed page is checked as it is written).
    pub page_check: Duration,
    /// The candidates refused, latest first: one that does not open, or
    /// whose restore found a damaged page or pages it cannot refill (before
    /// its guest ran).
    pub refused: Vec<restore::Refused>,
}

/// Recovers: picks the latest valid candidate (against `root` when given,
/// else the latest phase), restores it with QEMU and waits until the
/// guest's service answers a client on the host, as [`cold_boot`] does
/// (the guest's pending phase marker is answered at resume). Then
/// `on_ready` is called; when it returns, the restored QEMU is stopped (a
/// caller that wants the guest to keep running waits inside `on_ready`,
/// e.g. for QEMU to exit).
///
/// With [`Vmm::Standby`], a QEMU for the machine the latest candidate
/// records is started before the decision and waits for the state; when the
/// chosen candidate records another machine, a new QEMU is started after
/// all. With [`Vmm::Prestaged`], that QEMU has loaded the latest candidate
/// before the decision; when another is chosen (or the file changed since),
/// a new QEMU is started.
///
/// A candidate the project's own VMM wrote (`source.format` = `vmm`, as
/// `examples/phase_vmm.rs` does) is restored on /dev/kvm instead, raw pages
/// mapped from the image, and is ready at its first port write; `on_ready`
/// then gets no QEMU process.
///
/// # Errors
/// No valid candidate, QEMU, KVM or the guest failed.
pub fn recover(
    candidates: &[PathBuf],
    root: Option<&Path>,
    qemu: &str,
    vmm: Vmm,
    on_ready: &mut dyn FnMut(&Recovery, Option<&mut std::process::Child>),
) -> Result<Recovery> {
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let (serial, ctl) = serial_args(work.path());
    let port = service::free_port()?;
    let (standby, mut control) = match vmm {
        Vmm::Spawn => (None, None),
        Vmm::Standby | Vmm::Prestaged => {
            let (path, latest) = candidates
                .iter()
                .filter_map(|p| Image::open(p).ok().map(|i| (p, i)))
                .max_by_key(|(_, i)| phase_order(i))
                .ok_or_else(|| Error::NoCandidate("no candidate opens: do a full reboot".into()))?;
            // Images with no QEMU command line (a VMM's) need no standby QEMU.
            match QemuAdapter::recorded_args(&latest) {
                Some(mut args) => {
                    service::forward(&mut args, port)?;
                    args.extend(serial.iter().cloned());
                    let q = match vmm {
                        // Preparing before a failure must not prevent the
                        // recovery: an image that does not load leaves a
                        // plain standby QEMU (and is not chosen if invalid).
                        Vmm::Prestaged => QemuAdapter::prestage(qemu, args.clone(), path)
                            .or_else(|_| QemuAdapter::standby(qemu, args))?,
                        _ => QemuAdapter::standby_prepared(qemu, args, path, &latest)?,
                    };
                    (Some(q), Some(Control::connect(&ctl)?))
                }
                None => (None, None),
            }
        }
    };
    // Asked before the decision: a flat candidate's restore needs it.
    let _ = pbr_tools::qemu::compat::qemu_full_version(qemu);
    let held = standby.as_ref().and_then(QemuAdapter::pid).and_then(resident::Resident::of);
    let t = Instant::now();
    // A candidate that does not open is refused, never trusted; the others
    // are still judged.
    let mut refused = Vec::new();
    let (mut images, mut paths) = (Vec::new(), Vec::new());
    for p in candidates {
        match Image::open(p) {
            Ok(img) => {
                images.push(img);
                paths.push(p.clone());
            }
            Err(e) => refused.push(restore::Refused { path: p.clone(), reason: format!("does not open: {e}") }),
        }
    }
    let candidates = &paths[..];
    let refs: Vec<&Image> = images.iter().collect();
    // The candidates by their files (against `root`) or by phase, latest
    // first; each is restored with every page checked as it goes, and one
    // found damaged before its guest runs is refused for the next.
    let order: Vec<usize> = match root {
        Some(r) => pbr_format::select::select_fast(&refs, r, false)
            .verdicts
            .iter()
            .filter(|v| v.valid)
            .map(|v| v.index)
            .collect(),
        None => {
            let mut order: Vec<usize> = (0..images.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(phase_order(&images[i])));
            order
        }
    };
    let select = t.elapsed();
    let mut standby = standby;
    let attempt = |chosen: usize, standby: Option<QemuAdapter>| -> Result<Attempt> {
        let img = &images[chosen];
        if img.metadata_value("source.format") == Some("vmm") {
            return recover_kvm(&candidates[chosen], img, t, select).map(|r| Attempt::Kvm(Box::new(r)));
        }
        let mut args = QemuAdapter::recorded_args(img)
            .ok_or_else(|| Error::Unsupported("the candidate records no restore command line".into()))?;
        service::forward(&mut args, port)?;
        args.extend(serial.iter().cloned());
        let (q, used) = restore::restore_into(qemu, &args, &candidates[chosen], img, standby)?;
        Ok(Attempt::Qemu(Box::new(q), used))
    };
    let mut tried = order.into_iter();
    let (chosen, mut q, used) = loop {
        let Some(i) = tried.next() else {
            let why: Vec<String> =
                refused.iter().map(|r: &restore::Refused| format!("{}: {}", r.path.display(), r.reason)).collect();
            return Err(Error::NoCandidate(if why.is_empty() {
                "do a full reboot".into()
            } else {
                format!("do a full reboot ({})", why.join("; "))
            }));
        };
        match attempt(i, standby.take()) {
            Ok(Attempt::Qemu(q, used)) => break (i, q, used),
            Ok(Attempt::Kvm(mut r)) => {
                r.refused = refused;
                on_ready(&r, None);
                return Ok(*r);
            }
            Err(e) if e.refuses_candidate() => {
                refused.push(restore::Refused { path: candidates[i].clone(), reason: e.refusal() })
            }
            Err(e) => return Err(e),
        }
    };
    if used == Vmm::Spawn {
        // The waiting QEMU's serial went with it.
        control = None;
    }
    let restore = t.elapsed() - select;
    let mut control = match control {
        Some(c) => c,
        None => Control::connect(&ctl)?,
    };
    let qmp = q.qmp.as_mut().ok_or_else(|| Error::Unsupported("the restored QEMU has no QMP".into()))?;
    let served = serve(&mut control, qmp, port, true, t)?;
    let r = Recovery {
        chosen: candidates[chosen].clone(),
        downtime: served.at,
        select,
        restore,
        guest: served.at - select - restore,
        adapter: "qemu",
        ram: if q.ram_mapped() { "mapped" } else { "streamed" },
        vmm: used,
        signal: format!("{} on the host's port {port}, then PBR-READY {}", served.status, served.uptime),
        held,
        page_check: q.page_check_time(),
        refused,
    };
    on_ready(&r, q.child.as_mut());
    if let Some(qmp) = q.qmp.as_mut() {
        let _ = qmp.cmd("quit", serde_json::json!({}));
    }
    Ok(r)
}

/// What restoring one candidate gave: a QEMU running it, or the whole
/// recovery of a VMM image on KVM.
enum Attempt {
    Qemu(Box<QemuAdapter>, Vmm),
    Kvm(Box<Recovery>),
}

/// Where a candidate's phase stands in its boot: later phases sort higher.
pub fn phase_order(img: &Image) -> (u32, u64) {
    img.phase().map_or((0, 0), |p| (p.sequence, p.since_boot_ns))
}

/// Restores a VMM-written image on /dev/kvm and runs its first vCPU until
/// the guest writes to an I/O port.
fn recover_kvm(path: &Path, img: &Image, t: Instant, select: Duration) -> Result<Recovery> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("candidate", e))?;
    let mut vm = pbr_replay::kvm::KvmAdapter::new()?;
    replay(img, &file, &mut vm)?;
    let restore = t.elapsed() - select;
    let id = img.vcpus().first().map(pbr_format::Vcpu::id).ok_or_else(|| Error::Unsupported("no vCPU".into()))?;
    let signal = match vm.run_until_io(id)? {
        pbr_replay::kvm::Exit::IoOut { port, data } => {
            let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
            format!("out port {port:#x}: {}", hex.join(" "))
        }
        pbr_replay::kvm::Exit::Halt => return Err(Error::Unsupported("the restored guest halted".into())),
    };
    let downtime = t.elapsed();
    Ok(Recovery {
        chosen: path.to_path_buf(),
        downtime,
        select,
        restore,
        guest: downtime - select - restore,
        adapter: "kvm",
        ram: "mapped",
        vmm: Vmm::Spawn,
        signal,
        held: None,
        page_check: Duration::ZERO,
        refused: Vec::new(),
    })
}
