//! What an interrupt does: what it cleans up, and its decision against the
//! state of the output. In a process of its own, one test at a time: the
//! clean-up removes every file and stops every child this process
//! registered.

use std::sync::Mutex;

use pbr_tools::cleanup::{
    Interrupt, clean_up, interrupt, output, remove_on_interrupt, stop_on_interrupt, temp_files_in, temp_prefix,
};

/// Held by each test: one clean-up must not meet another test's files.
static ONE: Mutex<()> = Mutex::new(());

/// The registered work directory, this process's temporary files in a
/// registered directory and the registered children go; the rest stays.
#[test]
fn interrupt_removes_registered_and_own_temporary_files_only() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join(format!("{}abc.tmp", temp_prefix()));
    let other = dir.path().join(".pbr-1-abc.tmp");
    let work = dir.path().join("work");
    let kept = dir.path().join("kept");
    for f in [&own, &other, &kept] {
        std::fs::write(f, b"x").unwrap();
    }
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("stream"), b"x").unwrap();
    let forgotten = dir.path().join("forgotten");
    std::fs::write(&forgotten, b"x").unwrap();
    drop(remove_on_interrupt(&forgotten));
    let _t = temp_files_in(dir.path());
    let _w = remove_on_interrupt(&work);
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let _c = stop_on_interrupt(child.id());
    clean_up();
    assert!(!own.exists() && !work.exists());
    assert!(other.exists() && kept.exists() && forgotten.exists());
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was stopped");
}

/// Before its output is renamed into place, an interrupt removes the
/// temporary file (so that no rename can follow) and fails the run with
/// 128 + the signal; after, it no longer fails the run.
#[test]
fn an_interrupt_fails_the_run_only_until_its_output_is_written() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.pbr");
    std::fs::write(&dest, b"old").unwrap();
    let _registered = output(&dest);
    let tmp = dir.path().join(format!("{}out.tmp", temp_prefix()));
    std::fs::write(&tmp, b"new").unwrap();

    assert_eq!(interrupt(libc::SIGINT), Interrupt::Exit(130));
    assert!(!tmp.exists(), "the temporary file is removed");
    assert_eq!(std::fs::read(&dest).unwrap(), b"old", "the old output is left as it was");
    assert!(std::fs::rename(&tmp, &dest).is_err(), "a commit after the decision finds nothing to rename");
    assert_eq!(interrupt(libc::SIGTERM), Interrupt::Exit(143), "still not written");

    std::fs::write(&tmp, b"new").unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
    assert_eq!(interrupt(libc::SIGINT), Interrupt::Written(dest.clone()));
    assert_eq!(std::fs::read(&dest).unwrap(), b"new", "the written output is kept");

    // A new output (no file there before) counts once it exists.
    let fresh = dir.path().join("fresh.pbr");
    let _fresh = output(&fresh);
    drop(_registered);
    assert_eq!(interrupt(libc::SIGINT), Interrupt::Exit(130));
    std::fs::write(&fresh, b"new").unwrap();
    assert_eq!(interrupt(libc::SIGINT), Interrupt::Written(fresh));
}
