//! What CRIU left in an image's `PROCESSES` section (`spec/format.md`
//! §7.9): the summary `pbr-img inspect` shows, and the CRIU image files it
//! decodes, `pstree.img` ([`pstree`]: the process tree) and `files.img`
//! ([`files`]: the open files and sockets), through a bounded reader of
//! protobuf's wire format.

mod entries;
pub mod files;
mod protobuf;
pub mod pstree;

use pbr_format::Image;
use serde_json::{Value, json};

/// A CRIU image file that breaks its format, with the byte it breaks it at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} (at byte {offset:#x} of the CRIU image)")]
pub struct ImageError {
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

/// The processes an image holds, as JSON, when it has a `PROCESSES`
/// section: the kernel they were dumped from, the CRIU version, and per
/// unit its blobs and, from its `pstree.img`, its process tree, and from
/// its `files.img` its open files and sockets. What cannot be read is said
/// in place (`error`, `process_tree_error`, `files_error`):
/// nothing here fails or panics on hostile bytes.
pub fn summary(img: &Image) -> Option<Value> {
    let p = match img.processes() {
        Ok(None) => return None,
        Ok(Some(p)) => p,
        Err(e) => return Some(json!({"error": e.to_string()})),
    };
    let units: Vec<Value> = p
        .units()
        .map(|u| {
            let blobs: Vec<Value> = u.blobs.iter().map(|b| json!({"name": b.name, "bytes": b.len()})).collect();
            let mut v = json!({"name": u.name, "blob_count": u.blobs.len(), "bytes": u.bytes(), "blobs": blobs});
            if let Some(b) = u.blob(pstree::FILE_NAME) {
                let tree = b.bytes().map_err(|e| e.to_string());
                match tree.and_then(|b| pstree::decode(b).map_err(|e| format!("{}: {e}", pstree::FILE_NAME))) {
                    Ok(tree) => {
                        v["process_tree"] = tree
                            .iter()
                            .map(|p| {
                                json!({"pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid, "threads": p.threads})
                            })
                            .collect();
                    }
                    Err(e) => v["process_tree_error"] = json!(e),
                }
            }
            if let Some(b) = u.blob(files::FILE_NAME) {
                let open = b.bytes().map_err(|e| e.to_string());
                match open.and_then(|b| files::decode(b).map_err(|e| format!("{}: {e}", files::FILE_NAME))) {
                    Ok((open, more)) => {
                        v["files"] = open.iter().map(|f| json!({"id": f.id, "what": f.kind.to_string()})).collect();
                        v["files_not_decoded"] = json!(more);
                    }
                    Err(e) => v["files_error"] = json!(e),
                }
            }
            v
        })
        .collect();
    Some(json!({
        "kernel": p.kernel(), "criu_version": p.criu_version(),
        "blob_count": p.blobs().len(), "bytes": p.total_bytes(), "units": units,
    }))
}

#[cfg(test)]
mod tests {
    use pbr_agent::checkpoint::{valid_file_name, valid_release, valid_unit_name};
    use pbr_format::{ProcessesBuilder, check_blob_name, check_unit_name};

    /// The agent's frames and the format's section judge names alike: what
    /// a guest may send is what an image may hold, and nothing else.
    #[test]
    fn names_agree_with_the_agent() {
        let mut names: Vec<String> = (0u8..128).map(|a| char::from(a).to_string()).collect();
        for a in 0u8..128 {
            names.extend((0u8..128).map(|b| format!("{}{}", char::from(a), char::from(b))));
        }
        names.extend(["é", "a\u{85}", "ä.img", "../x", "a/b", ".img", "x.img", "-", "@"].map(String::from));
        names.extend((60..=70).map(|n| "a".repeat(n)));
        names.extend((245..=250).map(|n| "b".repeat(n)));
        for n in &names {
            assert_eq!(check_blob_name(n).is_ok(), valid_file_name(n), "file {n:?}");
            assert_eq!(check_unit_name(n).is_ok(), valid_unit_name(n), "unit {n:?}");
            let service = format!("{n}.service");
            assert_eq!(check_unit_name(&service).is_ok(), valid_unit_name(&service), "unit {service:?}");
            assert_eq!(ProcessesBuilder::new(n, "3.19").is_ok(), valid_release(n), "release {n:?}");
        }
    }
}
