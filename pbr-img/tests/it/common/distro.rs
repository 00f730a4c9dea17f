//! The Debian guest of `scripts/fetch-distro-guest`: a lab with copies of
//! its disks, its QEMU command line, a root shell on its serial console,
//! its web service, and `e2fsck` of the disks.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Held by every test that runs the guest: one guest at a time (the
/// tests share one process; the machine has two cores).
pub static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What `scripts/fetch-distro-guest` printed (saved by `scripts/test` as
/// `<target dir>/distro-guest/guest.json`, or where `PBR_DISTRO` points).
pub fn guest() -> serde_json::Value {
    let p = std::env::var_os("PBR_DISTRO")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::target_dir().join("distro-guest/guest.json"));
    let text = std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "the distribution guest is missing at {} ({e}): run scripts/fetch-distro-guest (scripts/test does)",
            p.display()
        )
    });
    serde_json::from_slice(&text).unwrap()
}

/// One guest's disks and command line, in a directory of its own.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    pub console: PathBuf,
    pub argv: Vec<String>,
}

impl Lab {
    /// Fresh copies of the guest's disks, `mem_mb` of RAM, the machine's
    /// QEMU.
    pub fn new(mem_mb: u32) -> Lab {
        Lab::with_qemu(mem_mb, "qemu-system-x86_64", &[])
    }

    /// As [`Lab::new`], run by the QEMU binary `qemu` with `extra`
    /// arguments first (its firmware search path).
    pub fn with_qemu(mem_mb: u32, qemu: &str, extra: &[String]) -> Lab {
        let g = guest();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.raw");
        let data = dir.path().join("data.raw");
        for (from, to) in [(&g["root"], &root), (&g["data"], &data)] {
            let ok = Command::new("cp").arg("--sparse=always").arg(from.as_str().unwrap()).arg(to).status().unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let console = dir.path().join("console.sock");
        let mut argv = vec![qemu.to_string()];
        argv.extend(extra.iter().cloned());
        for a in g["qemu_args"].as_array().unwrap() {
            let a = a.as_str().unwrap();
            argv.push(
                a.replace("ROOT", root.to_str().unwrap())
                    .replace("DATA", data.to_str().unwrap())
                    .replace("PORT", &port.to_string()),
            );
        }
        let m = argv.iter().position(|a| a == "-m").unwrap();
        argv[m + 1] = mem_mb.to_string();
        argv.extend([
            "-chardev".into(),
            format!(
                "socket,id=pbr-console,path={},server=on,wait=off,logfile={}",
                console.display(),
                dir.path().join("console.log").display()
            ),
            "-serial".into(),
            "chardev:pbr-console".into(),
        ]);
        Lab { dir, root, data, port, console, argv }
    }

    /// The candidates' directory.
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("candidates")
    }

    /// A GET of `/` on the guest's web server: (headers, body).
    pub fn get(&self) -> (String, String) {
        let mut s = connect_tcp(self.port);
        s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_owned(), body.to_owned())
    }

    /// Runs `cmd` in root's shell on the serial console; returns its
    /// output and exit status.
    pub fn shell(&self, cmd: &str) -> (String, i32) {
        let mut c = UnixStream::connect(&self.console).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // The echo of the command line shows `@@""E`, the output `@@E`.
        let line = format!("echo @@\"\"B@@; {cmd}; echo @@\"\"E$?@@\n");
        let t = Instant::now();
        let mut seen = String::new();
        let mut sent = Instant::now() - Duration::from_secs(60);
        while t.elapsed() < Duration::from_secs(120) {
            if sent.elapsed() > Duration::from_secs(10) && !seen.contains("@@B@@") {
                c.write_all(line.as_bytes()).unwrap();
                sent = Instant::now();
            }
            let mut buf = [0u8; 4096];
            if let Ok(n) = c.read(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            if let Some(b) = seen.rfind("@@B@@") {
                let after = &seen[b + 5..];
                if let Some(e) = after.find("@@E") {
                    let rest = &after[e + 3..];
                    if let Some(end) = rest.find("@@") {
                        let status = rest[..end].parse().unwrap_or(-1);
                        return (after[..e].trim().to_owned(), status);
                    }
                }
            }
        }
        panic!("no answer from the guest's shell to {cmd:?}; it said: {seen}\nconsole:\n{}", self.console_tail());
    }

    /// Types `line` on the serial console and moves on, without waiting
    /// for an answer (one that never comes: a panic).
    pub fn type_line(&self, line: &str) {
        let mut c = UnixStream::connect(&self.console).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        c.write_all(format!("{line}\n").as_bytes()).unwrap();
        // Read on a while: QEMU takes input only as fast as the UART does
        // and drops what is left when the client goes.
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        while t.elapsed() < Duration::from_secs(2) {
            let _ = c.read(&mut buf);
        }
    }

    /// The last lines of the guest's console.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The guest's wall clock minus the host's, in seconds.
    pub fn clock_offset(&self) -> f64 {
        let (out, _) = self.shell("date +%s.%N");
        let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let guest: f64 = out.lines().last().unwrap().trim().parse().unwrap();
        guest - host
    }

    /// 16 bytes of the guest's `/dev/urandom`, hex.
    pub fn urandom(&self) -> String {
        let (out, status) = self.shell("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo");
        assert_eq!(status, 0);
        out.lines().last().unwrap().trim().to_owned()
    }

    /// The guest writes a file on its data disk, syncs and powers off; QEMU
    /// exits.
    pub fn write_and_power_off(&self, child: &mut std::process::Child) {
        let (_, status) = self.shell("date > /srv/data/written-after-recovery && sync");
        assert_eq!(status, 0, "the guest could not write its data disk");
        let mut c = UnixStream::connect(&self.console).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        c.write_all(b"systemctl poweroff\n").unwrap();
        // Read on: QEMU takes input only as fast as the UART does and drops
        // what is left when the client goes, and a client that does not
        // read holds the guest's console output back.
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        while t.elapsed() < Duration::from_secs(120) {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            let _ = c.read(&mut buf);
        }
        let _ = child.kill();
        panic!("the guest did not power off; console:\n{}", self.console_tail());
    }

    /// `e2fsck -fn` of both disks: clean.
    pub fn fsck_clean(&self) {
        for disk in [&self.root, &self.data] {
            let out = Command::new("e2fsck").arg("-fn").arg(disk).output().unwrap();
            assert!(
                out.status.success(),
                "e2fsck -fn {}: {}\n{}",
                disk.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Replaces `path` (absolute, in the file system) on `disk` with
    /// `content`, with debugfs, as a host-side edit of a stopped guest's
    /// disk.
    pub fn edit(disk: &Path, path: &str, content: &str) {
        let (dir, name) = path.rsplit_once('/').unwrap();
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), content).unwrap();
        // debugfs gives the new file the source's mode: world-readable, as
        // the site's files are.
        std::fs::set_permissions(src.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let script = format!(
            "cd {}\nrm {name}\nwrite {} {name}\n",
            if dir.is_empty() { "/" } else { dir },
            src.path().display()
        );
        let cmds = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(cmds.path(), script).unwrap();
        let out = Command::new("debugfs").arg("-w").arg("-f").arg(cmds.path()).arg(disk).output().unwrap();
        assert!(out.status.success(), "debugfs: {}", String::from_utf8_lossy(&out.stderr));
        let check = Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(disk).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&check.stdout), content, "debugfs did not write {path}");
    }
}

/// A TCP stream to the host's forwarded port, retried while the guest's
/// network comes up.
fn connect_tcp(port: u16) -> std::net::TcpStream {
    let t = Instant::now();
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return s;
            }
            Err(e) if t.elapsed() > Duration::from_secs(30) => panic!("port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
