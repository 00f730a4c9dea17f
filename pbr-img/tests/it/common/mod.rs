//! Helpers for the end-to-end tests: the shared real-QEMU fixtures, the
//! `pbr-img` binary, an independent reader of RAM pages in QEMU streams.

#![allow(dead_code)]

pub mod distro;
pub mod vm;
pub mod xl;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Cargo's target directory, the one `pbr-img` was built in
/// (`CARGO_TARGET_DIR`, or `target/`): the scripts keep their caches there
/// (`scripts/target-dir`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pbr-img")).ancestors().nth(2).expect("TARGET/release/pbr-img").to_path_buf()
}

/// The real-guest QEMU fixtures that `scripts/make-fixtures` makes (under
/// `<target dir>/fixtures/qemu`, or where `PBR_FIXTURES` points).
pub fn fixtures() -> PathBuf {
    let p = std::env::var_os("PBR_FIXTURES").map(PathBuf::from).unwrap_or_else(|| target_dir().join("fixtures/qemu"));
    assert!(
        p.join("fixtures.json").is_file(),
        "the real-guest QEMU fixtures are missing at {}: run scripts/make-fixtures (scripts/test does)",
        p.display()
    );
    p
}

/// The stream of fixture `name` (`q35-128m-daemons`, ...).
pub fn fixture_stream(name: &str) -> PathBuf {
    fixtures().join(format!("{name}.qemu"))
}

/// The fixture's entry in `fixtures.json`.
pub fn fixture_info(name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("fixtures.json")).unwrap()).unwrap();
    v.as_array().unwrap().iter().find(|f| f["fixture"] == name).cloned().unwrap()
}

/// Coarse page counts of a kpageflags dump, read here independently of
/// pbr-tools: `[free, user, other]`. Free: in the buddy allocator, offline,
/// poisoned or no page; user: anonymous, or on an LRU list or mapped and
/// swap-backed and neither slab nor page table (shmem, tmpfs); other:
/// everything else (kernel, file cache).
/// Compound tail pages count with their head.
pub fn kpageflags_counts(path: &Path) -> [u64; 3] {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    let bit = |f: u64, b: u32| f & (1 << b) != 0;
    let mut counts = [0u64; 3];
    let mut head = None;
    for w in raw.chunks_exact(8) {
        let f = u64::from_le_bytes(w.try_into().unwrap());
        let class = match head {
            Some(c) if bit(f, 16) => c,
            _ => {
                let c = if bit(f, 20) || bit(f, 19) || bit(f, 23) || bit(f, 10) {
                    0
                } else if bit(f, 12) {
                    1
                } else if bit(f, 7) || bit(f, 26) {
                    2
                } else if (bit(f, 5) || bit(f, 11)) && bit(f, 14) {
                    1
                } else {
                    2
                };
                head = bit(f, 15).then_some(c);
                c
            }
        };
        counts[class] += 1;
    }
    counts
}

/// Converts `data` (written to a file named `name`) and checks that
/// `pbr-img` refuses it: exit status 2, one line on stderr containing
/// `expect`, and nothing left under the output name. Returns the line.
pub fn convert_fails(name: &str, data: &[u8], expect: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(name);
    std::fs::write(&input, data).unwrap();
    let out_path = dir.path().join("out.pbr");
    let out = pbr_img(&["convert", input.to_str().unwrap(), "-o", out_path.to_str().unwrap()]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "accepted; stderr {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(expect), "expected '{expect}' in: {err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "left behind: {left:?}");
    err
}

/// The byte offset an error line names (`... at offset 0x...)`).
pub fn offset_in(err: &str) -> u64 {
    let hex = err.split("at offset 0x").nth(1).expect("no offset in error").trim_end_matches([')', '\n']);
    u64::from_str_radix(hex, 16).unwrap()
}

pub fn pbr_img(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbr-img")).args(args).output().unwrap()
}

/// Runs `pbr-img` and panics with its stderr unless it succeeds.
pub fn pbr_img_ok(args: &[&str]) -> String {
    let out = pbr_img(args);
    assert!(out.status.success(), "pbr-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// RAM of a QEMU 7.2 stream with no capabilities, read independently of
/// pbr-tools: block name -> page index -> content (None = zero record),
/// last copy wins. Stops at the first device section.
pub fn stream_ram(stream: &[u8]) -> HashMap<String, HashMap<u64, Option<Vec<u8>>>> {
    let be32 = |p: usize| u32::from_be_bytes(stream[p..p + 4].try_into().unwrap()) as usize;
    let be64 = |p: usize| u64::from_be_bytes(stream[p..p + 8].try_into().unwrap());
    assert_eq!(&stream[..8], b"QEVM\0\0\0\x03");
    assert_eq!(stream[8], 7);
    let mut p = 9 + 4 + be32(9);
    let mut ram: HashMap<String, HashMap<u64, Option<Vec<u8>>>> = HashMap::new();
    let mut last = String::new();
    loop {
        match stream[p] {
            1 => {
                let l = stream[p + 5] as usize;
                p += 6 + l + 8;
            }
            2 | 3 => p += 5,
            8 => {
                p += 5 + u16::from_be_bytes([stream[p + 3], stream[p + 4]]) as usize;
                continue;
            }
            _ => return ram,
        }
        loop {
            let h = be64(p);
            p += 8;
            let (fl, off) = (h & 0xfff, h & !0xfff);
            if fl & 0x04 != 0 {
                let mut left = off;
                while left > 0 {
                    let l = stream[p] as usize;
                    left -= be64(p + 1 + l);
                    p += 1 + l + 8;
                }
                continue;
            }
            if fl == 0x10 {
                break;
            }
            if fl & 0x20 == 0 {
                let l = stream[p] as usize;
                last = String::from_utf8(stream[p + 1..p + 1 + l].to_vec()).unwrap();
                p += 1 + l;
            }
            let e = ram.entry(last.clone()).or_default();
            if fl & 0x02 != 0 {
                assert_eq!(stream[p], 0);
                e.insert(off / 4096, None);
                p += 1;
            } else {
                e.insert(off / 4096, Some(stream[p..p + 4096].to_vec()));
                p += 4096;
            }
        }
        if stream[p] == 0x7e {
            p += 5;
        }
    }
}

/// The test guest `scripts/fetch-guest` builds (scripts/test runs it):
/// its kernel and initramfs, under `<target dir>/guest`.
pub fn guest() -> (PathBuf, PathBuf) {
    let dir = target_dir().join("guest");
    let kernel = std::fs::read_dir(dir.join("kernel/boot"))
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("vmlinuz"))));
    let initrd = dir.join("initrd.cpio.gz");
    match kernel {
        Some(k) if initrd.is_file() => (k, initrd),
        _ => panic!("the test guest is missing under {}: run scripts/fetch-guest", dir.display()),
    }
}

/// Waits (at most 60 s) until the guest's service answers `GET
/// /index.html` on the host's `port` with `200` and `ok`.
pub fn service_answers_on(port: u16) {
    use std::io::{Read, Write};
    let t = std::time::Instant::now();
    loop {
        let mut reply = String::new();
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let _ = c.read_to_string(&mut reply);
        }
        if reply.starts_with("HTTP/1.") && reply.contains(" 200 ") && reply.ends_with("ok\n") {
            return;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the guest's service does not answer: {reply:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
