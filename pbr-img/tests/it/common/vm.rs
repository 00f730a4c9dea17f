//! A real QEMU for tests: a tiny counting guest, serial output to a file,
//! and a minimal QMP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A real-mode boot sector, hand-assembled: it increments a dword at
/// guest-physical 0x500, prints it in hex on COM1 with a newline, spins a
/// while, and loops.
pub const COUNTER_BOOT_SECTOR: &str = concat!(
    "fa31c08ed88ed0bc007c", // cli; xor ax,ax; mov ds,ax; mov ss,ax; mov sp,0x7c00
    "66ff060005",           // main: inc dword [0x500]
    "668b360005",           // mov esi,[0x500]
    "b90800",               // mov cx,8
    "66c1c604",             // hex: rol esi,4
    "89f3",                 // mov bx,si
    "83e30f",               // and bx,15
    "8a87397c",             // mov al,[bx+digits]
    "baf803",               // mov dx,0x3f8
    "ee",                   // out dx,al
    "e2ed",                 // loop hex
    "b00a",                 // mov al,10
    "ee",                   // out dx,al
    "66b900008000",         // mov ecx,0x800000
    "6649",                 // delay: dec ecx
    "75fc",                 // jnz delay
    "ebd1",                 // jmp main
);
/// Guest-physical address of the counter.
pub const COUNTER_ADDR: usize = 0x500;

/// QEMU 10.0 unpacked by `scripts/fetch-qemu10` (`PBR_QEMU10`, or its
/// default place): the binary and the firmware search path it needs.
pub fn qemu10() -> (String, Vec<String>) {
    let bin = std::env::var("PBR_QEMU10")
        .unwrap_or_else(|_| target_dir().join("qemu10/usr/bin/qemu-system-x86_64").display().to_string());
    assert!(Path::new(&bin).exists(), "QEMU 10.0 is not at {bin}: run scripts/fetch-qemu10 (scripts/test does)");
    // usr/bin/qemu-system-x86_64 -> usr/share/qemu: its option ROMs
    // (linuxboot_dma.bin for -kernel), which no system QEMU provides when
    // QEMU 7.2 is unpacked beside qemu-utils rather than installed.
    let data = Path::new(&bin).parent().and_then(Path::parent).map(|usr| usr.join("share/qemu")).unwrap();
    let args = vec!["-L".into(), "/usr/share/seabios".into(), "-L".into(), data.display().to_string()];
    (bin, args)
}

/// Cargo's target directory, the one `pbr-img` was built in (as
/// `common::target_dir`, for the benches that use this file alone).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pbr-img")).ancestors().nth(2).expect("TARGET/release/pbr-img").to_path_buf()
}

/// Writes a 1 MiB raw disk whose boot sector is the counting guest.
pub fn counter_disk(path: &Path) {
    let code: Vec<u8> = (0..COUNTER_BOOT_SECTOR.len() / 2)
        .map(|i| u8::from_str_radix(&COUNTER_BOOT_SECTOR[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(code.len(), 0x39);
    let mut img = vec![0u8; 1 << 20];
    img[..code.len()].copy_from_slice(&code);
    img[0x39..0x39 + 16].copy_from_slice(b"0123456789abcdef");
    img[510] = 0x55;
    img[511] = 0xaa;
    std::fs::write(path, img).unwrap();
}

/// One QEMU process.
pub struct Vm {
    child: Child,
    qmp: BufReader<UnixStream>,
    /// Where the guest's serial output goes.
    pub serial: PathBuf,
}

impl Vm {
    /// Starts the system's `qemu-system-x86_64` with `args` plus serial and
    /// QMP wiring.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Vm {
        Vm::start_bin("qemu-system-x86_64", dir, name, args)
    }

    /// As [`Vm::start`] with the QEMU binary `bin`.
    pub fn start_bin(bin: &str, dir: &Path, name: &str, args: &[&str]) -> Vm {
        let serial = dir.join(format!("{name}.serial"));
        let sock = dir.join(format!("{name}.qmp"));
        let child = Command::new(bin)
            .args(args)
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/test puts QEMU 7.2 on PATH: scripts/fetch-qemu72)");
        let stream = connect_qmp(&sock);
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut vm = Vm { child, qmp: BufReader::new(stream), serial };
        vm.read_qmp(); // greeting
        vm.cmd("qmp_capabilities", json!({}));
        vm
    }

    fn read_qmp(&mut self) -> Value {
        let mut line = String::new();
        self.qmp.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP said {line:?}: {e}"))
    }

    /// Runs a QMP command and returns its `return` value.
    pub fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        let msg = json!({"execute": execute, "arguments": arguments});
        writeln!(self.qmp.get_mut(), "{msg}").unwrap();
        loop {
            let v = self.read_qmp();
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                panic!("QMP {execute}: {e}");
            }
            return v["return"].clone();
        }
    }

    /// Waits until `query-migrate` says completed (or fails the test).
    pub fn wait_migration(&mut self) {
        let t = Instant::now();
        loop {
            let st = self.cmd("query-migrate", json!({}));
            match st["status"].as_str() {
                Some("completed") => return,
                Some("failed") | Some("cancelled") => panic!("migration {st}"),
                _ => {}
            }
            assert!(t.elapsed() < Duration::from_secs(120), "migration did not finish: {st}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The counter values the guest has printed so far.
    pub fn counts(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.serial)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.len() == 8)
            .filter_map(|l| u32::from_str_radix(l, 16).ok())
            .collect()
    }

    /// Waits until the guest has printed at least `n` counter lines.
    pub fn wait_counts(&self, n: usize) -> Vec<u32> {
        let t = Instant::now();
        loop {
            let c = self.counts();
            if c.len() >= n {
                return c;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "guest printed only {c:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Quits QEMU and waits for it (and any migration child) to exit.
    pub fn quit(mut self) {
        writeln!(self.qmp.get_mut(), "{}", json!({"execute": "quit"})).ok();
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                self.child.kill().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// Connects to the QMP socket a QEMU just started creates (waiting up to
/// 20 s for it to appear).
pub fn connect_qmp(sock: &std::path::Path) -> UnixStream {
    let t = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "QMP socket {} never appeared", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
