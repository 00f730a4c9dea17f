//! `inspect` of an image holding processes checkpointed with CRIU
//! (`PROCESSES`, `spec/format.md` §7.9): the source kernel, the CRIU
//! version, each unit with its files and its process tree decoded from a
//! hand-made `pstree.img`, as text and as JSON; `trim` keeps them; damage
//! is named, never a panic.

use std::path::Path;

use pbr_format::{Image, ImageWriter, PageClass, Region, WriterOptions};

use crate::common::{pbr_img, pbr_img_ok};
use crate::format_common::{page, processes, pstree_img};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fixture's nginx and redis, and a unit whose `pstree.img` is cut
/// short inside its second entry.
fn write(path: &Path) {
    let mut p = processes();
    let broken = p.add_unit("broken@1.service").unwrap();
    let tree = pstree_img(&[(1, 0, 1, 1, &[1]), (2, 1, 1, 1, &[2])]);
    p.add_blob(broken, "pstree.img", tree[..tree.len() - 3].to_vec()).unwrap();
    let mut w = ImageWriter::create(path, &[Region::ram("ram", 0, 4 * 4096)], WriterOptions::default()).unwrap();
    w.write_page(0, &page(5), PageClass::User).unwrap();
    w.set_processes(p).unwrap();
    w.finish().unwrap();
}

#[test]
fn inspect_shows_units_and_their_process_trees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pbr");
    write(&path);
    let text = pbr_img_ok(&["inspect", s(&path)]);
    let lines: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("processes")).take(9).collect();
    assert!(
        lines[0].starts_with("processes  3 units from kernel 6.1.0-28-cloud-amd64, dumped by CRIU 3.19: 6 files, ")
    );
    assert_eq!(lines[1], "  nginx.service  3 files, 5.5 KiB", "{text}");
    assert_eq!(lines[2], "    pid 812 ppid 1 pgid 812 sid 812 threads 812");
    assert_eq!(lines[3], "      pid 813 ppid 812 pgid 812 sid 812 threads 813,820");
    assert_eq!(lines[4], "      pid 814 ppid 812 pgid 812 sid 812 threads 814");
    assert_eq!(lines[5], "  redis-server.service  2 files, 39 B");
    assert_eq!(lines[6], "    pid 900 ppid 1 pgid 900 sid 900 threads 900,901,902,903");
    assert_eq!(lines[7], "  broken@1.service  1 file, 33 B");
    assert!(lines[8].starts_with(
        "    (process tree not read: pstree.img: entry 1 of 10 bytes runs past the end (7 left) (at byte 0x16"
    ));

    let v: serde_json::Value = serde_json::from_str(&pbr_img_ok(&["inspect", "--json", s(&path)])).unwrap();
    let p = &v["processes"];
    assert_eq!((p["kernel"].as_str(), p["criu_version"].as_str()), (Some("6.1.0-28-cloud-amd64"), Some("3.19")));
    assert_eq!(p["blob_count"], 6);
    let nginx = &p["units"][0];
    assert_eq!(nginx["name"], "nginx.service");
    assert_eq!(nginx["blob_count"], 3);
    let img = Image::open(&path).unwrap();
    let section = img.processes().unwrap().unwrap();
    assert_eq!(nginx["bytes"], section.unit("nginx.service").unwrap().bytes());
    assert_eq!(p["bytes"], section.total_bytes());
    let names: Vec<&str> = nginx["blobs"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pstree.img", "core-812.img", "pages-1.img"]);
    let tree = nginx["process_tree"].as_array().unwrap();
    assert_eq!(tree.len(), 3);
    assert_eq!(tree[1], serde_json::json!({"pid": 813, "ppid": 812, "pgid": 812, "sid": 812, "threads": [813, 820]}));
    assert_eq!(p["units"][1]["process_tree"][0]["threads"], serde_json::json!([900, 901, 902, 903]));
    assert!(p["units"][2]["process_tree"].is_null());
    assert!(p["units"][2]["process_tree_error"].as_str().unwrap().contains("entry 1 of 10 bytes runs past the end"));

    // An image without processes says nothing of them.
    let plain = dir.path().join("plain.pbr");
    ImageWriter::create(&plain, &[Region::ram("ram", 0, 4096)], WriterOptions::default()).unwrap().finish().unwrap();
    assert!(!pbr_img_ok(&["inspect", s(&plain)]).contains("processes"));
    let v: serde_json::Value = serde_json::from_str(&pbr_img_ok(&["inspect", "--json", s(&plain)])).unwrap();
    assert!(v.get("processes").is_none());
}

#[test]
fn trim_keeps_the_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = (dir.path().join("p.pbr"), dir.path().join("t.pbr"));
    write(&path);
    pbr_img_ok(&["trim", s(&path), "-o", s(&out)]);
    pbr_img_ok(&["verify", s(&out)]);
    let json =
        |p: &Path| -> serde_json::Value { serde_json::from_str(&pbr_img_ok(&["inspect", "--json", s(p)])).unwrap() };
    assert_eq!(json(&out)["processes"], json(&path)["processes"]);
    assert_eq!(json(&out)["file"]["format_version"], "1.2");
}

#[test]
fn a_damaged_process_tree_is_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pbr");
    write(&path);
    let at = {
        let img = Image::open(&path).unwrap();
        let p = img.processes().unwrap().unwrap();
        p.unit("nginx.service").unwrap().blob("pstree.img").unwrap().offset
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize + 9] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    // inspect still describes the image, and says why the tree is not shown.
    let text = pbr_img_ok(&["inspect", s(&path)]);
    let want = "(process tree not read: PROCESSES: crc32 mismatch in blob pstree.img of unit nginx.service: stored";
    assert!(text.contains(want), "{text}");
    assert!(text.contains(&format!("(at offset {at:#x}))")), "{text}");
    // verify and trim refuse it, in one line.
    let out = pbr_img(&["verify", s(&path)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("blob pstree.img of unit nginx.service"));
    let out = pbr_img(&["trim", s(&path), "-o", s(&dir.path().join("t.pbr"))]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("pbr-img: error: PROCESSES: crc32 mismatch in blob pstree.img"), "{err}");
    // A damaged index leaves nothing of the section to show but why.
    let section = Image::open(&path).unwrap().sections().iter().find(|s| s.name() == "PROCESSES").unwrap().offset;
    bytes[section as usize + 30] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let text = pbr_img_ok(&["inspect", s(&path)]);
    assert!(text.contains("processes  unreadable: PROCESSES: crc32 mismatch in PROCESSES index"), "{text}");
}
