//! `pbr-img` end to end on the bundled images: exit codes, one-line errors,
//! JSON that parses, raw export equal to the pages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pbr_format::Image;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/v1.0").join(name)
}

fn pbr_img(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbr-img")).args(args).output().unwrap()
}

fn assert_one_line_error(out: &Output, code: i32) -> String {
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(code));
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("pbr-img: error: "), "{err}");
    err
}

#[test]
fn inspect_human_and_json() {
    let p = testdata("sample.pbr");
    let out = pbr_img(&["inspect", p.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("phase      daemons (#2"), "{text}");
    assert!(text.contains("pc.bios (rom, not guest-physical)"));
    assert!(text.contains("vcpu1 x86_64 rip=0xffffffff81000000"));

    let out = pbr_img(&["inspect", "--json", "--pages", p.to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let img = Image::open(&p).unwrap();
    assert_eq!(v["guest"]["pages"], img.page_count());
    assert_eq!(v["pages"]["extents"], img.extent_count());
    assert_eq!(v["extents"].as_array().unwrap().len(), img.extent_count());
    assert_eq!(v["pages"]["by_class"]["user"]["lz4"], 4);
    assert_eq!(v["phase"]["name"], "daemons");
    assert_eq!(v["vcpus"][0]["msr_count"], 2);
    assert_eq!(v["vcpus"][0]["msrs"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["metadata"]["source.format"], "vmm");
}

#[test]
fn verify_exit_codes() {
    let p = testdata("sample.pbr");
    assert!(pbr_img(&["verify", p.to_str().unwrap()]).status.success());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pbr");
    let mut bytes = std::fs::read(&p).unwrap();
    let img = Image::open(&p).unwrap();
    let e = img.extent_of(7).unwrap();
    bytes[e.data as usize + 9] ^= 4;
    std::fs::write(&bad, &bytes).unwrap();
    let out = pbr_img(&["verify", bad.to_str().unwrap()]);
    assert_one_line_error(&out, 1);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains(&format!("at offset {:#x}", e.data)), "{listed}");

    let out = pbr_img(&["verify", "--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["damage"][0]["offset"], e.data);

    std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    let err = assert_one_line_error(&pbr_img(&["verify", bad.to_str().unwrap()]), 1);
    assert!(err.contains("incomplete image"), "{err}");

    // Not a check that failed: an input that cannot be checked.
    assert_one_line_error(&pbr_img(&["verify", "/nonexistent.pbr"]), 2);
    let err = assert_one_line_error(&pbr_img(&["inspect", "/nonexistent.pbr"]), 2);
    assert!(err.contains("cannot open /nonexistent.pbr"), "{err}");
}

#[test]
fn export_raw_matches_pages_and_leaves_holes() {
    let p = testdata("sample.pbr");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("mem.raw");
    let out = pbr_img(&["export", "--to", "raw", p.to_str().unwrap(), "-o", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = Image::open(&p).unwrap();
    let raw = std::fs::File::open(&out_path).unwrap();
    let expected_len = img.regions().iter().filter(|r| !r.synthetic).map(|r| r.base + r.length).max().unwrap();
    assert_eq!(raw.metadata().unwrap().len(), expected_len);
    let mut buf = vec![0u8; 4096];
    let mut got = vec![0u8; 4096];
    for r in img.regions().iter().filter(|r| !r.synthetic) {
        for gfn in r.first_gfn(4096)..r.first_gfn(4096) + r.pages(4096) {
            let page = img.read_page(gfn, &mut buf).unwrap();
            std::os::unix::fs::FileExt::read_exact_at(&raw, &mut got, gfn * 4096).unwrap();
            assert_eq!(&got[..], page, "gfn {gfn:#x}");
        }
    }
    // Sparse: far fewer blocks than the 4 GiB apparent size.
    let meta = std::fs::metadata(&out_path).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20);

    let err = assert_one_line_error(
        &pbr_img(&[
            "export",
            "--to",
            "raw",
            testdata("diff.pbr").to_str().unwrap(),
            "-o",
            dir.path().join("d.raw").to_str().unwrap(),
        ]),
        2,
    );
    assert!(err.contains("diff image"), "{err}");
    assert!(!dir.path().join("d.raw").exists());
}

#[test]
fn completions_man_page_and_magic() {
    let bash = String::from_utf8(pbr_img(&["completions", "bash"]).stdout).unwrap();
    assert!(bash.contains("pbr-img") && bash.contains("convert") && bash.contains("select"));
    let man = String::from_utf8(pbr_img(&["man"]).stdout).unwrap();
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{}", &man[..man.len().min(200)]);
    let magic = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/pbr.magic");
    let out = Command::new("file")
        .arg("-m")
        .arg(&magic)
        .arg(testdata("sample.pbr"))
        .arg(testdata("diff.pbr"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("pbr restartable VM image, format 1.0, 4 KiB pages").count(), 2, "{text}");
}

/// A reader that went away (`pbr-img inspect X | head`) ends the command
/// quietly with SIGPIPE's status; a full disk is one error line.
#[test]
fn closed_or_full_standard_output() {
    let sample = testdata("sample.pbr");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["inspect", "--pages"])
        .arg(&sample)
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img")).arg("inspect").arg(&sample).stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("pbr-img: error: cannot write to standard output:"), "{err}");
}

/// The bundled counter stream converted into `dir` as a candidate whose
/// recorded QEMU command line is `cmdline`.
fn counter_candidate(dir: &Path, cmdline: &str) -> PathBuf {
    let image = dir.join("counter.pbr");
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let (stream, out) = (stream.to_str().unwrap(), image.to_str().unwrap());
    let got = pbr_img(&["convert", stream, "-o", out, "--restore-cmdline", cmdline]);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    image
}

/// `pbr-img recover IMAGE` with QEMU started at the decision, standby and
/// prestaged: each must fail with status 2 and one line of its own; the
/// lines.
fn recover_fails_each_way(image: &Path) -> Vec<String> {
    [None, Some("--standby"), Some("--prestaged")]
        .into_iter()
        .map(|way| {
            let mut args = vec!["recover", image.to_str().unwrap()];
            args.extend(way);
            let out = pbr_img(&args);
            assert_eq!(out.status.code(), Some(2), "{way:?}");
            let err = String::from_utf8(out.stderr).unwrap();
            let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("pbr-img:")).collect();
            assert_eq!(ours.len(), 1, "{way:?}: {err}");
            ours[0].to_owned()
        })
        .collect()
}

/// A candidate whose recorded machine has no network for the service
/// check is refused at once, in one line (not after a long wait).
#[test]
fn recover_needs_the_service_network() {
    let dir = tempfile::tempdir().unwrap();
    let image = counter_candidate(dir.path(), "-machine q35,accel=tcg -m 16 -nodefaults -display none");
    for err in recover_fails_each_way(&image) {
        assert!(err.contains("no `-netdev user,id=pbrnet`"), "{err}");
    }
}

/// QEMU refusing the recorded command line is named at once, in one line,
/// for each way of starting it (not after waiting for its QMP socket).
#[test]
fn recover_names_a_qemu_that_exits() {
    let dir = tempfile::tempdir().unwrap();
    let image = counter_candidate(dir.path(), "-machine q35 -device no-such-device -netdev user,id=pbrnet");
    for err in recover_fails_each_way(&image) {
        assert!(err.contains("exited (exit status: 1) before it was ready"), "{err}");
    }
}

/// Bytes after a QEMU stream's end (QEMU stops reading at its
/// vmdescription) are accepted with one note, and the image is the one the
/// stream alone gives.
#[test]
fn a_qemu_stream_with_bytes_after_its_end_converts_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let stream = std::fs::read(&bundled).unwrap();
    // Bytes that look like stream: an EOF, a section start, zeros.
    let mut longer = stream.clone();
    longer.extend_from_slice(b"\x00\x04\x00\x00\x00\x07");
    longer.extend(std::iter::repeat_n(0u8, 4090));
    let input = dir.path().join("longer.qemu");
    std::fs::write(&input, &longer).unwrap();
    let (plain, padded) = (dir.path().join("plain.pbr"), dir.path().join("padded.pbr"));
    let out = pbr_img(&["convert", bundled.to_str().unwrap(), "-o", plain.to_str().unwrap()]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pbr_img(&["convert", input.to_str().unwrap(), "-o", padded.to_str().unwrap()]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("note: 4096 bytes after the end of the stream"), "{err}");
    let vmdesc = stream.windows(2).rposition(|w| w == b"\x00\x06").unwrap() + 1;
    assert!(err.contains(&format!("vmdescription at offset {vmdesc:#x}")), "{err}");
    let same = pbr_img(&["diff", plain.to_str().unwrap(), padded.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stdout));
}

/// Every command that writes to standard output ends with status 141 and
/// no message when its reader went away: streams (`-o -`) and generated
/// texts as well as reports; a standard output that is not open at all is
/// an error.
#[test]
fn every_writer_to_a_closed_standard_output_ends_141() {
    let dir = tempfile::tempdir().unwrap();
    let image = counter_candidate(dir.path(), "-machine q35,accel=tcg -m 16");
    let image = image.to_str().unwrap();
    let sample = testdata("sample.pbr");
    let sample = sample.to_str().unwrap();
    let runs: [&[&str]; 6] = [
        &["export", "--to", "qemu", image, "-o", "-"],
        &["extract", image, "--pages", "0+16", "-o", "-"],
        &["extract", sample, "--device", "#0", "-o", "-"],
        &["completions", "bash"],
        &["man"],
        &["verify", sample],
    ];
    for args in runs {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_pbr-img")).args(args).stdout(writer).output().unwrap();
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A reader that takes a little and goes (the stream is larger than the
    // pipe's buffer).
    let script = r#""$0" export --to qemu "$1" -o - | head -c 10 >/dev/null; echo "${PIPESTATUS[0]}""#;
    let out = Command::new("bash").args(["-c", script, env!("CARGO_BIN_EXE_pbr-img"), image]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "141", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // Closed before the start: the output would be lost.
    let out = Command::new("sh")
        .args(["-c", r#"exec "$0" inspect "$1" >&-"#, env!("CARGO_BIN_EXE_pbr-img"), sample])
        .output()
        .unwrap();
    let err = assert_one_line_error(&out, 2);
    assert!(err.starts_with("pbr-img: error: cannot write to standard output: Bad file descriptor"), "{err}");
}
