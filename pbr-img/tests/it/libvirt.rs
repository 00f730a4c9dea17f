//! Real libvirt save files: the project's guest booted by libvirt's own
//! daemon (`<domain type='qemu'>`, `scripts/libvirtd` starts it), saved
//! with `virsh save` raw and (by a private daemon set to gzip) compressed,
//! converted, verified, exported back (the raw one byte for byte), and
//! exports (gzip, trimmed) restored with `virsh restore`: the guest's
//! service answers again.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{pbr_img, pbr_img_ok};
use pbr_format::Image;

fn system_uri() -> String {
    std::env::var("PBR_LIBVIRT").unwrap_or_else(|_| "qemu:///system".into())
}

fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh").arg("-c").arg(uri).args(args).output().expect("virsh (scripts/libvirtd installs it)")
}

fn virsh_ok(uri: &str, args: &[&str]) -> String {
    let out = virsh(uri, args);
    assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A transient domain, destroyed when dropped.
struct Domain<'a>(&'a str, String);

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        let _ = virsh(self.0, &["destroy", &self.1]);
    }
}

/// The QEMU libvirt runs: the `qemu-system-x86_64` first on PATH (QEMU 7.2:
/// the system's, or the one `scripts/fetch-qemu72` unpacks, which libvirt's
/// QEMU user reads in the world-readable target directory).
fn emulator() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bin = std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|b| b.is_file())
        .expect("qemu-system-x86_64 on PATH (scripts/test puts QEMU 7.2 there)");
    std::fs::canonicalize(bin).unwrap()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd")
}

/// A private libvirtd saving with `format`, stopped when dropped.
struct Private(PathBuf, String);

impl Private {
    fn start(dir: &Path, format: &str) -> Private {
        let out = Command::new(script()).arg("--private").arg(dir).arg(format).output().unwrap();
        assert!(out.status.success(), "scripts/libvirtd --private: {}", String::from_utf8_lossy(&out.stderr));
        Private(dir.to_path_buf(), String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("--stop").arg(&self.0).status();
    }
}

fn domain_xml(name: &str, d: &Path) -> String {
    let (kernel, initrd) = common::guest();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{}</kernel>
    <initrd>{}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <devices>
    <emulator>{}</emulator>
    <serial type='file'><source path='{}/ttyS0.log'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{}/ttyS1.sock'/><target port='1'/></serial>
    <interface type='user'><model type='virtio'/></interface>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel.display(),
        initrd.display(),
        emulator().display(),
        d.display(),
        d.display()
    )
}

/// Answers the guest's phases on ttyS1 until it is ready.
fn boot_to_ready(sock: &Path) {
    let t = Instant::now();
    let s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(60), "ttyS1 never came: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut w = s.try_clone().unwrap();
    for line in BufReader::new(s).lines() {
        let line = line.expect("the guest's control port");
        if line.starts_with("PBR-PHASE") {
            w.write_all(b"go\n").unwrap();
        }
        if line.starts_with("PBR-READY") {
            return;
        }
    }
    panic!("ttyS1 closed before PBR-READY");
}

/// Forwards a host port to the restored guest's service and asks it.
fn service_answers(uri: &str, name: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    virsh_ok(uri, &["qemu-monitor-command", name, "--hmp", &format!("hostfwd_add tcp:127.0.0.1:{port}-:8080")]);
    common::service_answers_on(port);
}

fn restore_and_check(uri: &str, save: &Path, name: &str) {
    virsh_ok(uri, &["restore", save.to_str().unwrap()]);
    let _guard = Domain(uri, name.to_owned());
    service_answers(uri, name);
}

/// Boots the guest as domain `name` under `uri` until it is ready, and
/// saves it with `virsh save` into `d/file`.
fn boot_and_save(uri: &str, d: &Path, name: &str, file: &str) -> PathBuf {
    let xml = d.join(format!("{name}.xml"));
    std::fs::write(&xml, domain_xml(name, d)).unwrap();
    let _ = std::fs::remove_file(d.join("ttyS1.sock"));
    let _guard = Domain(uri, name.to_owned());
    virsh_ok(uri, &["create", xml.to_str().unwrap()]);
    boot_to_ready(&d.join("ttyS1.sock"));
    let save = d.join(file);
    virsh_ok(uri, &["save", name, save.to_str().unwrap()]);
    save
}

#[test]
fn virsh_save_converts_exports_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = format!("pbr-test-{}", std::process::id());
    let uri = system_uri();
    let raw = boot_and_save(&uri, d, &name, "raw.save");
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // Import, from the file and from a pipe.
    let image = d.join("raw.pbr");
    let v: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["convert", &s(&raw), "-o", &s(&image), "--json"])).unwrap();
    assert_eq!(v["format"], "libvirt");
    assert_eq!(v["libvirt"]["domain"], name.as_str());
    assert_eq!(v["libvirt"]["was_running"], true);
    assert_eq!(v["libvirt"]["compressed"], "raw");
    pbr_img_ok(&["verify", &s(&image)]);
    let img = Image::open(&image).unwrap();
    assert_eq!(img.metadata_value("libvirt.domain.name"), Some(name.as_str()));
    assert_eq!(img.metadata_value("libvirt.domain.memory"), Some("131072 KiB"));
    assert!(img.metadata_value("libvirt.domain.uuid").is_some_and(|u| u.len() == 36));
    let piped = d.join("piped.pbr");
    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["convert", "-", "-o", &s(&piped)])
        .stdin(std::fs::File::open(&raw).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Image::open(&piped).unwrap().content_hash().unwrap(), img.content_hash().unwrap());

    // Export: the raw save byte for byte; gzip and a trimmed image restore.
    let back = d.join("back.save");
    pbr_img_ok(&["export", "--to", "libvirt", &s(&image), "-o", &s(&back)]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&raw).unwrap(), "the raw export differs from virsh's file");
    restore_and_check(&uri, &back, &name);
    let gz = d.join("gz.save");
    pbr_img_ok(&["export", "--to", "libvirt", "--compress", "gzip", &s(&image), "-o", &s(&gz)]);
    assert!(std::fs::metadata(&gz).unwrap().len() < std::fs::metadata(&raw).unwrap().len());
    let gz_image = d.join("gz.pbr");
    pbr_img_ok(&["convert", &s(&gz), "-o", &s(&gz_image)]);
    assert_eq!(Image::open(&gz_image).unwrap().content_hash().unwrap(), img.content_hash().unwrap());
    restore_and_check(&uri, &gz, &name);

    // A trimmed image (no kpageflags of this moment: the trim drops zero
    // pages, and the image is written anew) restores too.
    let trimmed = d.join("t.pbr");
    pbr_img_ok(&["trim", &s(&image), "-o", &s(&trimmed)]);
    assert!(Image::open(&trimmed).unwrap().metadata_value("trim.dropped").is_some());
    let t_save = d.join("t.save");
    pbr_img_ok(&["export", "--to", "libvirt", &s(&trimmed), "-o", &s(&t_save)]);
    restore_and_check(&uri, &t_save, &name);

    // What the file says is kept: a partial save and a bad header refused.
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[..16].copy_from_slice(b"LibvirtQemudPart");
    let partial = d.join("partial.save");
    std::fs::write(&partial, &bytes[..1 << 20]).unwrap();
    let out = pbr_img(&["convert", &s(&partial), "-o", &s(&d.join("x.pbr"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("partial libvirt save"));
    assert!(!d.join("x.pbr").exists());
}

#[test]
fn a_gzip_save_made_by_libvirt_converts_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Private::start(&d.join("libvirt"), "gzip");
    let uri = daemon.1.clone();
    let name = format!("pbr-gz-{}", std::process::id());
    let save = boot_and_save(&uri, d, &name, "gzip.save");
    let bytes = std::fs::read(&save).unwrap();
    assert_eq!(&bytes[..16], b"LibvirtQemudSave");
    assert_eq!(u32::from_le_bytes(bytes[28..32].try_into().unwrap()), 1, "libvirt compressed the stream with gzip");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let image = d.join("gz.pbr");
    let v: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["convert", &s(&save), "-o", &s(&image), "--json"])).unwrap();
    assert_eq!(v["libvirt"]["compressed"], "gzip");
    pbr_img_ok(&["verify", &s(&image)]);
    // Equivalent, not equal: same header and, once decompressed, the same
    // stream as libvirt's file.
    let back = d.join("back.save");
    pbr_img_ok(&["export", "--to", "libvirt", &s(&image), "-o", &s(&back)]);
    let again = d.join("again.pbr");
    pbr_img_ok(&["convert", &s(&back), "-o", &s(&again)]);
    assert_eq!(
        Image::open(&again).unwrap().content_hash().unwrap(),
        Image::open(&image).unwrap().content_hash().unwrap()
    );
    let ours = std::fs::read(&back).unwrap();
    let area = 92 + u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    assert_eq!(&ours[..area], &bytes[..area]);
    let unzip = |b: &[u8]| {
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(b).read_to_end(&mut v).unwrap();
        v
    };
    assert!(unzip(&ours[area..]) == unzip(&bytes[area..]), "the decompressed streams differ");
    restore_and_check(&uri, &back, &name);
}
