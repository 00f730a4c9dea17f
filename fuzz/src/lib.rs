//! Fuzz targets for every pbr parser.
//!
//! Each module exposes `run(data)`: it must never panic on any input, and
//! where an input is accepted it checks that what came out is sound (an
//! image the converter wrote opens and verifies; an exported stream
//! converts back to the same content). `cargo fuzz run TARGET` drives them
//! with libFuzzer; the `smoke` tests replay the seeds, the saved crash
//! regressions and thousands of mutants under plain `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod mutate;

/// A scratch directory for outputs (on tmpfs when there is one), shared by
/// every run; each run removes the files it made.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join("pbr-fuzz");
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// A scratch file unique to this process and thread, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let id = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_digit(), "");
        Scratch(scratch().join(format!("{}-{id}-{name}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// `.pbr` open, verify and check, read every stored page, every record,
/// describe the vCPUs and decode the device sections.
pub mod pbr_image {
    use pbr_format::{Image, PageEncoding};

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let Ok(img) = Image::from_bytes(data.to_vec()) else { return };
        let _ = img.verify();
        let _ = img.check(16, &|_| {});
        // What `inspect --vcpus --devices` shows of a hostile image.
        for v in img.vcpus() {
            if let pbr_format::Vcpu::X86_64(x) = v {
                let _ = pbr_tools::vcpu_state::describe(x);
            }
        }
        let _ = pbr_tools::qemu::devices::decode(&img);
        let _ = (
            img.vcpus().len(),
            img.metadata().len(),
            img.manifest().len(),
            img.cache_refs().len(),
            img.disk_refs().pages.len(),
            img.phase(),
        );
        let _ = img.devices().map(|d| d.data.len()).sum::<usize>();
        // No blob is handed out unless it matches its crc32; what inspect
        // shows of the processes never panics.
        if let Ok(Some(p)) = img.processes() {
            for b in p.blobs() {
                if let Ok(bytes) = b.bytes() {
                    assert_eq!(crc32fast::hash(bytes), b.crc32, "blob {} handed out unchecked", b.name);
                }
            }
        }
        let _ = pbr_tools::criu::summary(&img);
        let _ = (img.page_counts(), img.raw_runs().len());
        for run in img.raw_runs().iter().take(64) {
            let _ = img.check_run(run);
        }
        let mut buf = vec![0u8; img.page_size() as usize];
        let mut budget = 1 << 14;
        for e in img.extents() {
            if !matches!(e.encoding, PageEncoding::Raw | PageEncoding::Lz4 | PageEncoding::Dup) {
                continue;
            }
            for gfn in e.gfns().take(budget) {
                // No page is handed out unless it matches its crc32.
                let expected = img.expected_crc(&e, gfn);
                if let Ok(page) = img.read_in_extent(&e, gfn, &mut buf) {
                    assert!(
                        expected.is_none_or(|c| c == crc32fast::hash(page)),
                        "page {gfn:#x} was read although its crc32 does not match"
                    );
                }
                if e.encoding == PageEncoding::Raw
                    && let Ok(page) = img.raw_pages(&e, gfn..gfn + 1)
                {
                    assert_eq!(expected, Some(crc32fast::hash(page)), "raw page {gfn:#x} handed out unchecked");
                }
                budget -= 1;
            }
            if budget == 0 {
                break;
            }
        }
        if img.page_count() <= 1 << 16 {
            let _ = img.content_hash();
        }
    }
}

/// QEMU stream import, and export/re-import of what it accepts.
pub mod qemu_stream {
    use pbr_format::Image;
    use pbr_tools::qemu::{ConvertOptions, convert, export::export_qemu};

    /// Prepended to inputs that do not start with the magic, so the fuzzer
    /// starts past the header: `QEVM` v3 and a `pc-q35-7.2` configuration.
    pub const PREAMBLE: &[u8] = b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0apc-q35-7.2";

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let input: Vec<u8> = if data.starts_with(b"QEVM") { data.to_vec() } else { [PREAMBLE, data].concat() };
        let out = super::Scratch::new("q.pbr");
        let opts = ConvertOptions { no_sync: true, ..Default::default() };
        if convert(&input[..], None, &out, &opts, &|_| {}).is_err() {
            return;
        }
        let img = Image::open(&out).expect("the converter wrote an image that does not open");
        img.verify().expect("the converter wrote an image that does not verify");
        let back = super::Scratch::new("q-back.qemu");
        if export_qemu(&img, &back).is_err() {
            return;
        }
        let stream = std::fs::read(&back).expect("exported stream");
        let again = super::Scratch::new("q-again.pbr");
        convert(&stream[..], None, &again, &opts, &|_| {}).expect("an exported stream does not convert again");
        let img2 = Image::open(&again).expect("re-converted image");
        if img.page_count() <= 1 << 16 {
            assert_eq!(img.content_hash().ok(), img2.content_hash().ok(), "export and re-import changed the pages");
        }
        // Device state comes back unchanged. (The RAM records' shape may
        // not: a ZERO record with a non-zero fill byte or a page sent twice
        // is written back as the page it left.)
        let state = |i: &Image| -> Vec<Vec<u8>> {
            i.devices().filter(|d| d.name != pbr_tools::qemu::blob::RAM).map(|d| d.data.into_owned()).collect()
        };
        assert!(state(&img) == state(&img2), "export changed the device state");
    }
}

/// `xl save` import, and export/re-import of what it accepts.
pub mod xl_save {
    use pbr_format::Image;
    use pbr_tools::xen::{ConvertOptions, convert, export::export_xl};

    /// Prepended to inputs that do not start with the xl magic, so the
    /// fuzzer starts at the libxc records: an xl header without config, the
    /// libxl header, LIBXC_CONTEXT, and v3 HVM libxc headers.
    pub fn preamble() -> Vec<u8> {
        let mut p = b"Xen saved domain, xl format\n \0 \r".to_vec();
        p.extend_from_slice(&[4, 3, 2, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(b"LibxlFmt\0\0\0\x02\0\0\0\0");
        p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0xff; 8]);
        p.extend_from_slice(b"XENF\0\0\0\x03\0\0\0\0\0\0\0\0");
        p.extend_from_slice(&[2, 0, 0, 0, 12, 0, 0, 0, 4, 0, 0, 0, 17, 0, 0, 0]);
        p
    }

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let input: Vec<u8> =
            if data.starts_with(b"Xen saved domain") { data.to_vec() } else { [&preamble()[..], data].concat() };
        let out = super::Scratch::new("x.pbr");
        let opts = ConvertOptions { no_sync: true, ..Default::default() };
        if convert(&input[..], &out, &opts, &|_| {}).is_err() {
            return;
        }
        let img = Image::open(&out).expect("the converter wrote an image that does not open");
        img.verify().expect("the converter wrote an image that does not verify");
        let back = super::Scratch::new("x-back.xl");
        export_xl(&img, &back).expect("an image converted from xl does not export");
        let file = std::fs::read(&back).expect("exported file");
        let again = super::Scratch::new("x-again.pbr");
        convert(&file[..], &again, &opts, &|_| {}).expect("an exported xl file does not convert again");
        let img2 = Image::open(&again).expect("re-converted image");
        if img.page_count() <= 1 << 16 {
            assert_eq!(img.content_hash().ok(), img2.content_hash().ok(), "export and re-import changed the pages");
        }
        let state = |i: &Image| -> Vec<(u32, String, Vec<u8>)> {
            i.devices().map(|d| (d.origin.0, d.name.into_owned(), d.data.into_owned())).collect()
        };
        assert!(state(&img) == state(&img2), "export and re-import changed the records");
        assert_eq!(img.vcpus(), img2.vcpus(), "export and re-import changed the vCPUs");
    }
}

/// libvirt save file import (header, XML area, decompression, the QEMU
/// stream inside), and export/re-import of what it accepts.
pub mod libvirt_save {
    use pbr_format::Image;
    use pbr_tools::libvirt::{self, Compression, HEADER_LEN};
    use pbr_tools::qemu::ConvertOptions;

    /// Put before inputs that do not start with the magic: a raw version 2
    /// header whose XML area is the first `len` input bytes (len from the
    /// first input byte), so the fuzzer reaches the area and the stream.
    fn wrap(data: &[u8]) -> Vec<u8> {
        let len = data.first().map_or(1, |&b| u32::from(b).max(1));
        let mut v = b"LibvirtQemudSave".to_vec();
        for w in [2, len, 1, 0, 0] {
            v.extend_from_slice(&u32::to_le_bytes(w));
        }
        v.resize(HEADER_LEN, 0);
        v.extend_from_slice(data.get(1..).unwrap_or_default());
        v
    }

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let input = if data.starts_with(b"LibvirtQemud") { data.to_vec() } else { wrap(data) };
        let out = super::Scratch::new("l.pbr");
        let opts = ConvertOptions { no_sync: true, ..Default::default() };
        let Ok(r) = libvirt::convert(&input[..], &out, &opts, &|_| {}) else { return };
        let img = Image::open(&out).expect("the libvirt import wrote an image that does not open");
        img.verify().expect("the libvirt import wrote an image that does not verify");
        let mut back = Vec::new();
        if libvirt::export_to(&img, &mut back, Some(Compression::Raw)).is_err() {
            return;
        }
        let again = super::Scratch::new("l-again.pbr");
        let r2 = libvirt::convert(&back[..], &again, &opts, &|_| {}).expect("an exported save does not convert again");
        assert_eq!((r.header.xml.as_str(), r.header.was_running), (r2.header.xml.as_str(), r2.header.was_running));
        let img2 = Image::open(&again).expect("re-converted image");
        if img.page_count() <= 1 << 16 {
            assert_eq!(img.content_hash().ok(), img2.content_hash().ok(), "export and re-import changed the pages");
        }
    }
}

/// The QEMU vmdescription JSON and the cpu decoder driven by it.
pub mod vmdesc {
    use pbr_tools::qemu::{cpu, vmdesc};

    /// Runs one input: the JSON, then every `cpu` entry decoded over the
    /// input bytes as a section body.
    pub fn run(data: &[u8]) {
        let Ok(desc) = vmdesc::parse(data) else { return };
        for d in desc.devices.iter().filter(|d| d.name == "cpu") {
            let _ = cpu::decode(0, (data, d), desc.devices.iter().find(|a| a.name == "apic").map(|a| (data, a)));
        }
    }
}

/// `/proc/kpageflags` and `/proc/kpagecount` import.
pub mod kpageflags {
    use pbr_tools::classify::{classes, parse_words};

    /// Runs one input, as flags and as counts.
    pub fn run(data: &[u8]) {
        let Ok(words) = parse_words(data, 1 << 20) else { return };
        let c = classes(&words, None);
        let c2 = classes(&words, Some(&words));
        assert_eq!((c.len(), c2.len()), (words.len(), words.len()));
    }
}

/// Diff images applied to a base.
pub mod diff_apply {
    use pbr_format::Image;

    /// Runs one input: `u32 base length`, base image, diff image.
    pub fn run(data: &[u8]) {
        let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        let (base, diff) = rest.split_at(len);
        let (Ok(base), Ok(diff)) = (Image::from_bytes(base.to_vec()), Image::from_bytes(diff.to_vec())) else {
            return;
        };
        if base.page_count() > 1 << 16 || diff.page_count() > 1 << 16 {
            return;
        }
        let out = super::Scratch::new("applied.pbr");
        if pbr_tools::apply::apply(&base, &[&diff], &out).is_ok() {
            let img = Image::open(&out).expect("apply wrote an image that does not open");
            img.verify().expect("apply wrote an image that does not verify");
        }
    }
}

/// Manifests judged by selection against a small root directory.
pub mod manifest_select {
    use std::path::Path;
    use std::sync::OnceLock;

    use pbr_format::Image;

    fn root() -> &'static Path {
        static ROOT: OnceLock<std::path::PathBuf> = OnceLock::new();
        ROOT.get_or_init(|| {
            let r = super::scratch().join("root");
            std::fs::create_dir_all(r.join("etc")).expect("root");
            std::fs::write(r.join("etc/hostname"), "guest\n").expect("root file");
            r
        })
    }

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let Ok(img) = Image::from_bytes(data.to_vec()) else { return };
        let s = pbr_format::select::select(&[&img], root(), true);
        assert_eq!(s.verdicts.len(), 1);
        for f in img.manifest() {
            // Every path the reader accepted stays inside the root.
            if let Ok(p) = pbr_format::select::resolve_under(root(), &f.path) {
                assert!(p.starts_with(std::fs::canonicalize(root()).expect("root")));
            }
        }
    }
}

#[cfg(test)]
pub mod smoke;

/// What a guest sends the host's agent port, and what a host sends a
/// guest's: frames, then messages, then the seals a candidate carries in
/// its metadata.
pub mod agent_port {
    use pbr_agent::frame::FrameReader;
    use pbr_agent::message::Message;
    use pbr_tools::seal::Seals;

    /// Runs one input.
    pub fn run(data: &[u8]) {
        for from_guest in [true, false] {
            let mut r = FrameReader::new(data, from_guest);
            while let Ok(frame) = r.read() {
                assert!(
                    frame.payload.len() as u64 <= u64::from(frame.kind.max_len()),
                    "a frame over its limit was read"
                );
                if let Ok(m) = Message::decode(&frame) {
                    assert_eq!(Message::decode(&m.encode()).expect("a decoded message does not decode again"), m);
                }
            }
        }
        if let Ok(text) = std::str::from_utf8(data)
            && let Ok(s) = Seals::from_json(text)
        {
            assert_eq!(Seals::from_json(&s.to_json()).expect("seals do not read back"), s);
        }
    }
}

/// A `PROCESSES` section on its own (`spec/format.md` §7.9), and CRIU's
/// `pstree.img` and `files.img` decoders over the same bytes.
pub mod processes {
    use pbr_format::{Processes, check_blob_name, check_unit_name};

    /// Sets the index crc32 of `section` when its head says where the index
    /// ends, so that the fuzzer reaches past the crc check.
    pub fn seal(section: &mut [u8]) {
        let word = |at: usize| {
            u128::from(u32::from_le_bytes([section[at], section[at + 1], section[at + 2], section[at + 3]]))
        };
        if section.len() < 48 {
            return;
        }
        let end = 48 + word(4) * word(8) + word(12) * word(16) + word(20);
        if let Some(index) = usize::try_from(end).ok().and_then(|e| section.get(4..e)) {
            let crc = crc32fast::hash(index);
            section[..4].copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let _ = pbr_tools::criu::pstree::decode(data);
        if let Ok((open, _)) = pbr_tools::criu::files::decode(data) {
            assert!(open.len() <= pbr_tools::criu::files::MAX_DECODED);
            for f in open {
                let _ = f.kind.to_string();
            }
        }
        let mut section = data.to_vec();
        seal(&mut section);
        let Ok(p) = Processes::parse(&section, 0) else { return };
        for u in p.units() {
            assert!(check_unit_name(u.name).is_ok(), "unit name {:?} accepted", u.name);
            for b in u.blobs {
                assert!(check_blob_name(b.name).is_ok(), "blob name {:?} accepted", b.name);
                assert_eq!(b.unit, u.name);
                if let Ok(bytes) = b.bytes() {
                    assert_eq!(crc32fast::hash(bytes), b.crc32, "blob {} handed out unchecked", b.name);
                    if b.name == pbr_tools::criu::pstree::FILE_NAME {
                        let _ = pbr_tools::criu::pstree::decode(bytes);
                    }
                }
            }
        }
        // What was accepted writes back and reads back the same.
        let Ok(builder) = p.to_builder() else { return };
        let again = builder.to_bytes().expect("an accepted section does not write back");
        let q = Processes::parse(&again, 0).expect("a written section does not read back");
        assert_eq!((q.kernel(), q.criu_version()), (p.kernel(), p.criu_version()));
        let content = |p: &Processes<'_>| -> Vec<(String, String, Vec<u8>)> {
            p.blobs()
                .iter()
                .map(|b| (b.unit.to_owned(), b.name.to_owned(), b.bytes().expect("checked").to_vec()))
                .collect()
        };
        assert_eq!(content(&q), content(&p), "the blobs changed on the way back");
        assert!(q.units().map(|u| u.name).eq(p.units().map(|u| u.name)), "the units changed on the way back");
    }
}
