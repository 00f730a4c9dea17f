//! What `inspect` prints of the processes an image holds (`PROCESSES`,
//! `spec/format.md` §7.9): the kernel and CRIU they came from, each unit
//! with its blobs, its process tree from CRIU's `pstree.img`, and its open
//! files and sockets from `files.img`.

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;

use super::fmt::{bytes, count};

/// Threads of one process listed before the rest are only counted.
const SHOWN_THREADS: usize = 8;
/// Deepest indentation of a process under its parent.
const MAX_DEPTH: usize = 16;
/// Open files listed before the rest are only counted.
const SHOWN_FILES: usize = 32;

/// Prints the `processes` part of inspect's model, if there is one.
pub fn print(w: &mut dyn Write, p: &Value) -> std::io::Result<()> {
    if p.is_null() {
        return Ok(());
    }
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    if let Some(e) = p["error"].as_str() {
        return writeln!(w, "processes  unreadable: {e}");
    }
    let units = p["units"].as_array().cloned().unwrap_or_default();
    writeln!(
        w,
        "processes  {} from kernel {}, dumped by CRIU {}: {}, {}",
        count(units.len() as u64, "unit"),
        s(&p["kernel"]),
        s(&p["criu_version"]),
        count(n(&p["blob_count"]), "file"),
        bytes(n(&p["bytes"]))
    )?;
    for u in &units {
        writeln!(w, "  {}  {}, {}", s(&u["name"]), count(n(&u["blob_count"]), "file"), bytes(n(&u["bytes"])))?;
        if let Some(e) = u["process_tree_error"].as_str() {
            writeln!(w, "    (process tree not read: {e})")?;
        }
        // A process sits under its parent when the parent came before it
        // (CRIU writes parents first), so a hostile tree has no cycle.
        let mut depth: HashMap<u64, usize> = HashMap::new();
        for t in u["process_tree"].as_array().into_iter().flatten() {
            let d = depth.get(&n(&t["ppid"])).map_or(0, |d| (d + 1).min(MAX_DEPTH));
            depth.entry(n(&t["pid"])).or_insert(d);
            let threads: Vec<String> =
                t["threads"].as_array().into_iter().flatten().map(|x| n(x).to_string()).collect();
            let shown = threads.iter().take(SHOWN_THREADS).cloned().collect::<Vec<_>>().join(",");
            let more =
                if threads.len() > SHOWN_THREADS { format!(",... ({} in all)", threads.len()) } else { String::new() };
            writeln!(
                w,
                "    {:indent$}pid {} ppid {} pgid {} sid {} threads {shown}{more}",
                "",
                n(&t["pid"]),
                n(&t["ppid"]),
                n(&t["pgid"]),
                n(&t["sid"]),
                indent = 2 * d
            )?;
        }
        if let Some(e) = u["files_error"].as_str() {
            writeln!(w, "    (open files not read: {e})")?;
        }
        let files = u["files"].as_array().map(Vec::as_slice).unwrap_or_default();
        for f in files.iter().take(SHOWN_FILES) {
            writeln!(w, "    open {}", s(&f["what"]).escape_debug())?;
        }
        let all = files.len() as u64 + n(&u["files_not_decoded"]);
        if all > SHOWN_FILES as u64 {
            writeln!(w, "    ... {all} open files in all")?;
        }
    }
    Ok(())
}
