//! What an interrupt does, decided against the state of the output (in a
//! process of its own: the clean-up removes every temporary file this
//! process registered).

use pbr_tools::cleanup::{Interrupt, interrupt, output, temp_prefix};

/// Before its output is renamed into place, an interrupt removes the
/// temporary file (so that no rename can follow) and fails the run with
/// 128 + the signal; after, it no longer fails the run.
#[test]
fn an_interrupt_fails_the_run_only_until_its_output_is_written() {
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
