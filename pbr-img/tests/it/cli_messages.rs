//! What `pbr-img` says: usage errors in one line (and a hint), an empty
//! file named as such, counts with the right plural, the man page and
//! `convert --help` naming every input, `trim --drop` refusing an empty
//! list, vCPU events and MSRs in words.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{pbr_img, pbr_img_ok};

fn counter_stream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 2, `pbr-img: error: ...` containing `expect`, then at most
/// one `hint:` line; returns the error text.
fn usage_error(args: &[&str], expect: &str) -> String {
    let out = pbr_img(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 2, "{args:?}: {err}");
    assert!(lines[0].starts_with("pbr-img: error: ") && lines[0].contains(expect), "{args:?}: {err}");
    if let Some(hint) = lines.get(1) {
        assert!(hint.starts_with("hint: "), "{args:?}: {err}");
    }
    assert!(out.stdout.is_empty());
    err
}

#[test]
fn usage_errors_are_one_line_and_a_hint() {
    let err = usage_error(&["convert"], "required arguments were not provided: --output <OUTPUT>, <INPUT>");
    assert!(err.contains("hint: see `pbr-img convert --help`"), "{err}");
    let err = usage_error(&["inspect", "--bogus", "x.pbr"], "unexpected argument '--bogus'");
    assert!(err.contains("hint: see `pbr-img inspect --help`"), "{err}");
    let err = usage_error(&["export", "--to", "tar", "x.pbr", "-o", "y"], "invalid value 'tar' for '--to <TO>'");
    assert!(err.contains("hint: possible values: raw, qemu, xl, libvirt"), "{err}");
    usage_error(&["frobnicate"], "unrecognized subcommand 'frobnicate'");
    let err = usage_error(&[], "no command given");
    assert!(err.contains("hint: see `pbr-img --help`"), "{err}");
    usage_error(&["manifest"], "");
    // Help and version are not errors.
    let out = pbr_img(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pbr-img "));
}

#[test]
fn an_empty_file_is_said_to_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pbr");
    std::fs::write(&empty, b"").unwrap();
    let out = pbr_img(&["inspect", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "pbr-img: error: not a .pbr image: the file is empty\n");
    let short = dir.path().join("short.pbr");
    std::fs::write(&short, b"PBR?").unwrap();
    let err = stderr(&pbr_img(&["verify", short.to_str().unwrap()]));
    assert!(err.contains("not a .pbr image: bad magic [50, 42, 52, 3f]"), "{err}");
}

#[test]
fn trim_refuses_an_empty_drop_list() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("c.pbr");
    pbr_img_ok(&["convert", counter_stream().to_str().unwrap(), "-o", image.to_str().unwrap()]);
    let out = dir.path().join("t.pbr");
    let (i, o) = (image.to_str().unwrap(), out.to_str().unwrap());
    for (drop, expect) in [
        ("", "--drop is empty"),
        (" ", "--drop is empty"),
        ("free,,zero", "has an empty item"),
        ("free,", "has an empty item"),
        (",", "has an empty item"),
    ] {
        let r = pbr_img(&["trim", i, "-o", o, "--drop", drop]);
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(2), "{drop:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{drop:?}: {err}");
        assert!(err.starts_with("pbr-img: error: ") && err.contains(expect), "{drop:?}: {err}");
        assert!(!out.exists());
    }
    pbr_img_ok(&["trim", i, "-o", o, "--drop", "zero"]);
}

#[test]
fn counts_take_the_right_plural() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("c.pbr");
    let line = pbr_img_ok(&["convert", counter_stream().to_str().unwrap(), "-o", image.to_str().unwrap()]);
    assert!(line.contains(", 1 vCPU;") && !line.contains("vCPUs"), "{line}");
    assert!(line.contains("page records + ") && line.contains("device sections"), "{line}");
}

#[test]
fn the_man_page_holds_every_command_and_names_no_missing_page() {
    let page = pbr_img_ok(&["man"]);
    let title = format!(".TH pbr-img 1  \"pbr-img {}\" ", env!("CARGO_PKG_VERSION"));
    assert!(page.lines().filter(|l| l.starts_with(".TH ")).eq([title.as_str()]), "{page}");
    for l in page.lines().filter(|l| l.contains("(1)")) {
        assert!(!l.contains("pbr\\-img\\-") && !l.contains("pbr-img-"), "names another page: {l}");
    }
    for command in ["inspect", "convert", "export", "trim", "recover", "manifest add"] {
        assert!(page.contains(&format!(".SS \"pbr-img {command}\"")), "no {command} in the man page");
    }
    assert!(page.contains("libvirt save file"), "convert's libvirt input is not in the man page");
    let help = pbr_img_ok(&["convert", "--help"]);
    assert!(help.contains("libvirt save file"), "{help}");
}

#[test]
fn vcpu_events_and_msrs_read_as_words() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("c.pbr");
    pbr_img_ok(&["convert", counter_stream().to_str().unwrap(), "-o", image.to_str().unwrap()]);
    let text = pbr_img_ok(&["inspect", "--vcpus", image.to_str().unwrap()]);
    let events = text.lines().find(|l| l.trim_start().starts_with("events ")).unwrap();
    assert_eq!(events.trim(), "events none", "{text}");
    assert!(!text.contains("{\""), "raw JSON in the text: {text}");
    for name in ["IA32_MTRR_FIX4K_C0000", "IA32_MTRR_FIX4K_F8000", "IA32_MTRR_PHYSBASE0", "IA32_MTRR_PHYSMASK7"] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    assert!(!text.lines().any(|l| l.split_whitespace().nth(2) == Some("IA32_MTRR_FIX4K")), "{text}");
}
