//! Capture at a guest's boot phases: the guest announces each phase on
//! its control port; the machine is stopped, saved, converted, classified
//! and trimmed into one candidate per phase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pbr_format::{Image, Phase};
use pbr_tools::qemu::{ConvertOptions, convert};

use crate::error::{Error, Result};
use crate::guest::{Event, Guest, GuestSpec, SaveCounters};

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
                g.qemu.qmp().cmd("stop", serde_json::json!({}))?;
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
                                return Err(Error::Guest(format!("no kpageflags dump for phase {p} (pbr.kpf=1?)")));
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
                g.qemu.qmp().cmd("cont", serde_json::json!({}))?;
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
pub const CACHE_KEY: &str = pbr_format::keys::PBR_CACHE_REFS;

/// The metadata key with the stored `kernel` pages by kpageflags kind
/// (JSON: reserved, slab, page_tables, other): where a candidate's size
/// goes once free pages and page cache are dropped.
pub const KERNEL_PAGES_KEY: &str = pbr_format::keys::CLASSES_KERNEL_PAGES;

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
    // The steps' files are not kept: a machine that runs on keeps its work
    // directory for as long as it runs.
    for step in ["raw", "classified", "trimmed"] {
        let _ = std::fs::remove_file(work.join(format!("{phase}-{step}.pbr")));
    }
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
