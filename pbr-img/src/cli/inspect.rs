//! `pbr-img inspect`: one JSON model of the image, printed as JSON or as a
//! human summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::{Image, PageClass, PageEncoding, SectionKind, Vcpu, pod};
use serde_json::{Value, json};

use super::error::Result;
use super::fmt::{bytes, hex, unix_ns};
use super::report::{Report, print};
use pbr_tools::seal::{SEALS_KEY, Seals};

/// The arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// List every extent of the page index.
    #[arg(long)]
    pages: bool,
    /// Show every vCPU register, segment, MSR, LAPIC and XSAVE state
    /// (always in --json).
    #[arg(long)]
    vcpus: bool,
    /// Show the device sections with their fields decoded through the
    /// stream's vmdescription (QEMU images).
    #[arg(long)]
    devices: bool,
}

/// What `inspect` knows about an image ([`model`]), and what its text
/// shows beyond the summary.
struct Inspection<'a> {
    model: Value,
    args: &'a Args,
}

impl Report for Inspection<'_> {
    fn json(&self) -> Value {
        self.model.clone()
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        print_human(w, &self.model, self.args)
    }

    fn pretty(&self) -> bool {
        true
    }
}

/// Runs `inspect`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let img = Image::open(&a.image)?;
    let mut model = model(&img, &a.image, a.pages);
    if a.devices {
        match pbr_tools::qemu::devices::decode(&img) {
            Some(Ok(sections)) => model["devices"]["sections"] = Value::Array(sections),
            Some(Err(e)) => model["devices"]["sections_error"] = json!(e),
            None => {}
        }
    }
    print(&Inspection { model, args: a }, a.json)
}

fn features(bits: u64, names: &[(u64, &str)]) -> Value {
    names.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| json!(n)).collect()
}

/// Everything `inspect` knows about `img`, as JSON.
pub fn model(img: &Image, path: &Path, with_extents: bool) -> Value {
    let h = img.header();
    let ps = u64::from(img.page_size());
    let counts = img.page_counts();
    let mut by_class = serde_json::Map::new();
    let mut by_encoding = serde_json::Map::new();
    for c in PageClass::ALL {
        let mut m = serde_json::Map::new();
        for e in PageEncoding::ALL {
            m.insert(e.name().into(), json!(counts[c as usize][e as usize]));
        }
        m.insert("total".into(), json!(counts[c as usize].iter().sum::<u64>()));
        by_class.insert(c.name().into(), Value::Object(m));
    }
    for e in PageEncoding::ALL {
        by_encoding.insert(e.name().into(), json!(counts.iter().map(|row| row[e as usize]).sum::<u64>()));
    }
    let section_len =
        |k: SectionKind| img.sections().iter().filter(|s| s.kind == Some(k)).map(|s| s.length).sum::<u64>();
    let lz4_tables = 4 * counts.iter().map(|row| row[PageEncoding::Lz4 as usize]).sum::<u64>();
    let index_bytes = section_len(SectionKind::PageIndex)
        + section_len(SectionKind::PageCrcs)
        + section_len(SectionKind::PageHashes)
        + lz4_tables;
    let state_bytes = section_len(SectionKind::Vcpus) + section_len(SectionKind::Devices);
    let framing = (pod::HEADER_SIZE + pod::TRAILER_SIZE + img.sections().len() * pod::SECTION_ENTRY_SIZE) as u64;
    let other_meta = img
        .sections()
        .iter()
        .filter(|s| {
            !matches!(
                s.kind,
                Some(
                    SectionKind::PageData
                        | SectionKind::PageIndex
                        | SectionKind::PageCrcs
                        | SectionKind::PageHashes
                        | SectionKind::Vcpus
                        | SectionKind::Devices
                )
            )
        })
        .map(|s| s.length)
        .sum::<u64>()
        + framing;
    let guest = img.guest_size();
    let pct = |n: u64| if guest == 0 { 0.0 } else { n as f64 * 100.0 / guest as f64 };
    let stored_bytes = img.page_data_range().end - img.page_data_range().start;

    let vcpus: Vec<Value> = img
        .vcpus()
        .iter()
        .map(|v| match v {
            Vcpu::X86_64(x) => {
                let mut d = pbr_tools::vcpu_state::describe(x);
                // The summary fields scripts read since format 1.0.
                d["rip"] = d["regs"]["rip"].clone();
                d["rsp"] = d["regs"]["rsp"].clone();
                d["rflags"] = d["regs"]["rflags"].clone();
                d["cs"] = d["segments"]["cs"]["selector"].clone();
                d["msr_count"] = json!(x.msrs.len());
                d["xsave_bytes"] = json!(x.xsave.len());
                d
            }
            Vcpu::Other { arch, id, body, .. } => {
                json!({"id": id, "arch": format!("unknown({arch})"), "bytes": body.len()})
            }
        })
        .collect();
    let devices: Vec<Value> = img
        .devices()
        .map(|d| json!({"origin": d.origin.to_string(), "name": d.name, "instance": d.instance, "version": d.version, "flags": d.flags, "bytes": d.data.len()}))
        .collect();
    let device_bytes: usize = img.devices().map(|d| d.data.len()).sum();
    let mut model = json!({
        "file": {
            "path": path.display().to_string(),
            "length": img.file_len(),
            "format_version": format!("{}.{}", h.version_major, h.version_minor),
            "page_size": img.page_size(),
            "producer": {"name": h.producer_name, "version": h.producer_version},
            "required_features": features(h.required_features, &[(pod::FEATURE_LZ4, "lz4"), (pod::FEATURE_DIFF, "diff"), (pod::FEATURE_DUP, "dup")]),
            "optional_features": features(h.optional_features, &[(pod::FEATURE_PAGE_HASHES, "page-hashes")]),
            "image_blake3": hex(&img.image_blake3()),
        },
        "phase": img.phase().map(|p| json!({
            "name": p.name, "sequence": p.sequence, "well_known": p.is_well_known(),
            "since_boot_ns": p.since_boot_ns, "captured_unix_ns": p.captured_unix_ns,
        })),
        "guest": {
            "pages": img.page_count(),
            "bytes": guest,
            "regions": img.regions().iter().map(|r| json!({
                "name": r.name, "base": r.base, "length": r.length, "source_offset": r.source_offset,
                "read_only": r.read_only, "synthetic": r.synthetic,
            })).collect::<Vec<_>>(),
        },
        "pages": {
            "extents": img.extent_count(),
            "stored_pages": img.stored_page_count(),
            "by_class": by_class,
            "by_encoding": by_encoding,
        },
        "storage": {
            "file_bytes": img.file_len(),
            "page_data_bytes": stored_bytes,
            "index_bytes": index_bytes,
            "state_bytes": state_bytes,
            "other_metadata_bytes": other_meta,
            "file_percent_of_guest": pct(img.file_len()),
            "index_and_metadata_percent_of_guest": pct(index_bytes + other_meta),
        },
        "vcpus": vcpus,
        "devices": {"count": devices.len(), "bytes": device_bytes, "items": devices},
        "metadata": img.metadata().iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "manifest": {
            "files": img.manifest().iter().map(|f| json!({
                "path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "inode": f.inode, "blake3": hex(&f.blake3),
            })).collect::<Vec<_>>(),
            "cache_refs": img.cache_refs().len(),
        },
        "base": img.base().map(|b| json!({"blake3": hex(&b.blake3), "result_blake3": b.result_blake3.map(|h| hex(&h)), "name": b.name})),
        "restore": restore_notes(img, &counts),
        "sections": img.sections().iter().map(|s| json!({
            "kind": s.name(), "offset": s.offset, "length": s.length, "crc32": format!("{:#010x}", s.crc32),
            "must_understand": s.raw_kind & pod::MUST_UNDERSTAND != 0,
        })).collect::<Vec<_>>(),
    });
    if let Some(x) = pbr_tools::xen::summary(img) {
        model["xen"] = x;
    }
    if let Some(p) = pbr_tools::criu::summary(img) {
        model["processes"] = p;
    }
    if with_extents {
        model["extents"] = img
            .extents()
            .map(|e| json!({"gfn": e.gfn, "gpa": e.gfn * ps, "count": e.count, "class": e.class.name(), "encoding": e.encoding.name(), "data": e.data}))
            .collect();
    }
    model
}

/// `v` cut to `max` bytes, saying how long it is and where it is whole.
fn shorten(v: &str, max: usize, whole: &str) -> String {
    if v.len() > max {
        format!("{}... ({} bytes; `{whole}` shows it whole)", &v[..v.floor_char_boundary(max)], v.len())
    } else {
        v.to_owned()
    }
}

/// Every register of one described x86-64 vCPU.
fn print_vcpu(w: &mut dyn Write, v: &Value) -> std::io::Result<()> {
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let r = &v["regs"];
    let regs: Vec<String> = pbr_tools::vcpu_state::GPR_NAMES
        .iter()
        .chain(&["rip", "rflags"])
        .map(|name| format!("{name}={}", s(&r[*name])))
        .collect();
    for chunk in regs.chunks(6) {
        writeln!(w, "    {}", chunk.join(" "))?;
    }
    for (name, seg) in v["segments"].as_object().into_iter().flatten() {
        writeln!(
            w,
            "    {name:<3} sel={} base={} limit={} type={} s={} dpl={} p={} db={} l={} g={} avl={} unusable={}",
            s(&seg["selector"]),
            s(&seg["base"]),
            s(&seg["limit"]),
            seg["type"],
            seg["s"],
            seg["dpl"],
            seg["present"],
            seg["db"],
            seg["l"],
            seg["g"],
            seg["avl"],
            seg["unusable"]
        )?;
    }
    writeln!(
        w,
        "    gdt base={} limit={}  idt base={} limit={}",
        s(&v["gdt"]["base"]),
        s(&v["gdt"]["limit"]),
        s(&v["idt"]["base"]),
        s(&v["idt"]["limit"])
    )?;
    writeln!(
        w,
        "    cr0={} cr2={} cr3={} cr4={} cr8={} efer={} apic_base={} xcr0={}",
        s(&v["cr0"]),
        s(&v["cr2"]),
        s(&v["cr3"]),
        s(&v["cr4"]),
        s(&v["cr8"]),
        s(&v["efer"]),
        s(&v["apic_base"]),
        s(&v["xcr0"])
    )?;
    if let Some(d) = v["debug"].as_object() {
        let dr: Vec<String> =
            ["dr0", "dr1", "dr2", "dr3", "dr6", "dr7"].iter().map(|k| format!("{k}={}", s(&d[*k]))).collect();
        writeln!(w, "    {}", dr.join(" "))?;
    }
    if !v["events"].is_null() {
        writeln!(w, "    events {}", super::fmt::events_text(&v["events"]))?;
    }
    if let Some(l) = v["lapic"].as_object() {
        writeln!(
            w,
            "    lapic id={} version={} tpr={} svr={} lvt_timer={} timer initial={} current={} divide={}",
            l["id"],
            s(&l["version"]),
            s(&l["tpr"]),
            s(&l["svr"]),
            s(&l["lvt_timer"]),
            s(&l["timer_initial_count"]),
            s(&l["timer_current_count"]),
            s(&l["timer_divide"])
        )?;
    }
    let comps: Vec<String> = v["xsave"]["components"].as_array().into_iter().flatten().map(s).collect();
    writeln!(
        w,
        "    xsave {} bytes: {}{}",
        v["xsave"]["bytes"],
        if comps.is_empty() { "(none)".into() } else { comps.join(" ") },
        if v["xsave"]["derived"] == true { " (XSTATE_BV recorded 0; derived from the area)" } else { "" }
    )?;
    let tsc = if v["tsc"].is_null() { "tsc: not recorded".to_owned() } else { format!("tsc={}", v["tsc"]) };
    writeln!(w, "    {tsc} tsc_khz={} mp_state={}", v["tsc_khz"], v["mp_state"])?;
    for m in v["msrs"].as_array().into_iter().flatten() {
        writeln!(w, "    msr {:>10} {:<26} {}", s(&m["index"]), m["name"].as_str().unwrap_or("-"), s(&m["value"]))?;
    }
    Ok(())
}

/// What a restore must do about trimmed pages.
fn restore_notes(img: &Image, counts: &[[u64; 6]; 5]) -> Value {
    let trimmed = |c: PageClass| counts[c as usize][PageEncoding::Trimmed as usize];
    let cache = trimmed(PageClass::Cache);
    let refs = img.disk_refs();
    let refill = img.pages_to_refill().unwrap_or_default();
    let seals = img.metadata_value(SEALS_KEY).and_then(|s| Seals::from_json(s).ok()).unwrap_or_default();
    let mut by_disk: BTreeMap<u32, u64> = BTreeMap::new();
    let mut by_file: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &refill {
        *by_disk.entry(r.disk).or_default() += 1;
        *by_file.entry(r.file).or_default() += 1;
    }
    let disks: Vec<Value> = by_disk
        .iter()
        .map(|(&d, &n)| {
            let s = seals.disks.get(d as usize);
            json!({"disk": s.map(|s| s.guest.clone()), "image": s.map(|s| s.file.path.display().to_string()), "pages": n})
        })
        .collect();
    let mut files: Vec<(u64, &str)> =
        by_file.iter().map(|(&f, &n)| (n, refs.files.get(f as usize).map_or("?", String::as_str))).collect();
    files.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let files: Vec<Value> = files.iter().map(|(n, p)| json!({"path": format!("/{p}"), "pages": n})).collect();
    let mut notes = Vec::new();
    if trimmed(PageClass::Free) > 0 {
        notes.push(format!(
            "{} free pages were dropped: they read as zero, which the guest does not notice",
            trimmed(PageClass::Free)
        ));
    }
    if !refill.is_empty() {
        notes.push(format!(
            "{} page-cache pages were dropped: a restore reads them back from {} disk(s), {} files, after checking \
             that the disks did not change since capture",
            refill.len(),
            disks.len(),
            files.len()
        ));
    }
    let orphans = img.orphaned_cache_pages();
    if orphans > 0 {
        notes.push(format!(
            "{orphans} page-cache pages were dropped with no disk reference: this image cannot be restored"
        ));
    }
    let other: u64 = [PageClass::Unknown, PageClass::Kernel, PageClass::User].iter().map(|c| trimmed(*c)).sum();
    if other > 0 {
        notes.push(format!("{other} trimmed pages of other classes read as zero"));
    }
    json!({"trimmed_free": trimmed(PageClass::Free), "trimmed_cache": cache,
           "refill": {"pages": refill.len(), "disks": disks, "files": files}, "notes": notes})
}

fn print_human(w: &mut dyn Write, m: &Value, show: &Args) -> std::io::Result<()> {
    let f = &m["file"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    writeln!(
        w,
        "image      {} ({}, format {}, page size {}, by {} {})",
        s(&f["path"]),
        bytes(n(&f["length"])),
        s(&f["format_version"]),
        n(&f["page_size"]),
        s(&f["producer"]["name"]),
        s(&f["producer"]["version"])
    )?;
    let feats: Vec<String> = f["required_features"]
        .as_array()
        .into_iter()
        .chain(f["optional_features"].as_array())
        .flatten()
        .map(s)
        .collect();
    if !feats.is_empty() {
        writeln!(w, "features   {}", feats.join(" "))?;
    }
    match m["phase"].as_object() {
        Some(p) => {
            let mut line = format!("phase      {} (#{}", s(&p["name"]), n(&p["sequence"]));
            if n(&p["since_boot_ns"]) > 0 {
                line += &format!(", {:.3} s after boot start", n(&p["since_boot_ns"]) as f64 / 1e9);
            }
            if n(&p["captured_unix_ns"]) > 0 {
                line += &format!(", captured {}", unix_ns(n(&p["captured_unix_ns"])));
            }
            writeln!(w, "{line})")?;
        }
        None => writeln!(w, "phase      (none)")?,
    }
    let st = &m["storage"];
    writeln!(
        w,
        "size       guest {} in {} pages; file {} ({:.1}% of guest); page data {}; index+metadata {:.3}% of guest",
        bytes(n(&m["guest"]["bytes"])),
        n(&m["guest"]["pages"]),
        bytes(n(&st["file_bytes"])),
        st["file_percent_of_guest"].as_f64().unwrap_or(0.0),
        bytes(n(&st["page_data_bytes"])),
        st["index_and_metadata_percent_of_guest"].as_f64().unwrap_or(0.0),
    )?;
    writeln!(w, "regions")?;
    for r in m["guest"]["regions"].as_array().into_iter().flatten() {
        let base = n(&r["base"]);
        let mut flags = Vec::new();
        if r["read_only"].as_bool() == Some(true) {
            flags.push("rom");
        }
        if r["synthetic"].as_bool() == Some(true) {
            flags.push("not guest-physical");
        }
        writeln!(
            w,
            "  {:#018x}-{:#018x} {:>10}  {}{}",
            base,
            base + n(&r["length"]) - 1,
            bytes(n(&r["length"])),
            s(&r["name"]),
            if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) }
        )?;
    }
    let p = &m["pages"];
    writeln!(w, "pages      {} extents, {} stored pages", n(&p["extents"]), n(&p["stored_pages"]))?;
    write!(w, "  {:<8}", "class")?;
    for e in PageEncoding::ALL {
        write!(w, "{:>10}", e.name())?;
    }
    writeln!(w, "{:>10}", "total")?;
    for c in PageClass::ALL {
        let row = &p["by_class"][c.name()];
        if n(&row["total"]) == 0 {
            continue;
        }
        write!(w, "  {:<8}", c.name())?;
        for e in PageEncoding::ALL {
            write!(w, "{:>10}", n(&row[e.name()]))?;
        }
        writeln!(w, "{:>10}", n(&row["total"]))?;
    }
    let vcpus = m["vcpus"].as_array().cloned().unwrap_or_default();
    writeln!(w, "vcpus      {}", vcpus.len())?;
    for v in &vcpus {
        if s(&v["arch"]) == "x86_64" {
            writeln!(
                w,
                "  vcpu{} x86_64 rip={} rsp={} rflags={} cr0={} cr3={} cr4={} efer={} msrs={} xsave={} lapic={}",
                n(&v["id"]),
                s(&v["rip"]),
                s(&v["rsp"]),
                s(&v["rflags"]),
                s(&v["cr0"]),
                s(&v["cr3"]),
                s(&v["cr4"]),
                s(&v["efer"]),
                n(&v["msr_count"]),
                bytes(n(&v["xsave_bytes"])),
                if v["lapic"].is_null() { "no" } else { "yes" }
            )?;
            if show.vcpus {
                print_vcpu(w, v)?;
            }
        } else {
            writeln!(w, "  vcpu{} {} ({} bytes)", n(&v["id"]), s(&v["arch"]), n(&v["bytes"]))?;
        }
    }
    if let Some(x) = m.get("xen") {
        writeln!(
            w,
            "xen        {} guest, libxc stream v{}, Xen {}; {} PAGE_DATA records, {} HVM context entries, {} checkpoints",
            s(&x["guest_type"]),
            s(&x["libxc_version"]),
            s(&x["xen_version"]),
            n(&x["page_data_records"]),
            n(&x["hvm_context_entries"]),
            n(&x["checkpoints"])
        )?;
        let e = &x["emulator_context"];
        if !e.is_null() {
            let names: Vec<&str> = e["sections"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            writeln!(
                w,
                "emulator   {} state, {}: {}",
                s(&e["emulator"]),
                bytes(n(&e["bytes"])),
                if e["qemu_stream"].as_bool() == Some(true) {
                    format!("QEMU device-state stream, {} sections ({})", names.len(), names.join(", "))
                } else {
                    format!("not a QEMU stream pbr can walk ({})", s(&e["note"]))
                }
            )?;
        }
    }
    let d = &m["devices"];
    writeln!(w, "devices    {} blobs, {}", n(&d["count"]), bytes(n(&d["bytes"])))?;
    for item in d["items"].as_array().into_iter().flatten() {
        writeln!(
            w,
            "  {:<12} {}.{} v{} {}",
            s(&item["origin"]),
            s(&item["name"]),
            n(&item["instance"]),
            n(&item["version"]),
            bytes(n(&item["bytes"]))
        )?;
    }
    if show.devices {
        for sec in d["sections"].as_array().into_iter().flatten() {
            writeln!(
                w,
                "  section {}.{} v{}, {}",
                s(&sec["name"]),
                n(&sec["instance"]),
                n(&sec["version"]),
                bytes(n(&sec["bytes"]))
            )?;
            for f in sec["fields"].as_array().into_iter().flatten() {
                let v = match &f["value"] {
                    Value::Null => "(beyond the section)".to_owned(),
                    Value::String(x) => x.clone(),
                    other => other.to_string(),
                };
                let sub = f["subsection"].as_str().map(|x| format!("{x}: ")).unwrap_or_default();
                writeln!(w, "    {sub}{} = {}", s(&f["name"]), shorten(&v, 64, "inspect --devices --json"))?;
            }
        }
        if let Some(e) = d["sections_error"].as_str() {
            writeln!(w, "  (fields not decoded: {e})")?;
        }
    }
    super::inspect_processes::print(w, &m["processes"])?;
    if let Some(md) = m["metadata"].as_object().filter(|o| !o.is_empty()) {
        writeln!(w, "metadata")?;
        for (k, v) in md {
            writeln!(w, "  {k} = {}", shorten(&s(v), 100, "inspect --json"))?;
        }
    }
    let files = m["manifest"]["files"].as_array().cloned().unwrap_or_default();
    writeln!(w, "manifest   {} files, {} cache back references", files.len(), n(&m["manifest"]["cache_refs"]))?;
    for f in &files {
        writeln!(
            w,
            "  {} ({}, inode {}, blake3 {}...)",
            s(&f["path"]),
            bytes(n(&f["size"])),
            n(&f["inode"]),
            &s(&f["blake3"])[..16]
        )?;
    }
    for note in m["restore"]["notes"].as_array().into_iter().flatten() {
        writeln!(w, "restore    {}", s(note))?;
    }
    let refill = &m["restore"]["refill"];
    for d in refill["disks"].as_array().into_iter().flatten() {
        writeln!(w, "refill     {} pages from disk {} ({})", n(&d["pages"]), s(&d["disk"]), s(&d["image"]))?;
    }
    let refill_files = refill["files"].as_array().cloned().unwrap_or_default();
    for f in refill_files.iter().take(10) {
        writeln!(w, "  {:>8} pages  {}", n(&f["pages"]), s(&f["path"]))?;
    }
    if refill_files.len() > 10 {
        writeln!(w, "  ... {} more files (inspect --json lists them all)", refill_files.len() - 10)?;
    }
    if let Some(b) = m["base"].as_object() {
        writeln!(w, "base       {} (blake3 {})", s(&b["name"]), s(&b["blake3"]))?;
    }
    if let Some(ext) = m["extents"].as_array() {
        writeln!(w, "extents")?;
        writeln!(w, "  {:>18} {:>18} {:>10} {:<8} {:<8}", "gfn", "gpa", "pages", "class", "encoding")?;
        for e in ext {
            writeln!(
                w,
                "  {:#18x} {:#18x} {:>10} {:<8} {:<8}",
                n(&e["gfn"]),
                n(&e["gpa"]),
                n(&e["count"]),
                s(&e["class"]),
                s(&e["encoding"])
            )?;
        }
    }
    Ok(())
}
