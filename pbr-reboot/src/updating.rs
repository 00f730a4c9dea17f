//! A kernel update of the VM `run` keeps, as `run` carries it out (the
//! protocol and the units' image are [`crate::update`]'s): whether a
//! request can be met, where the units' image goes, the old kernel's
//! candidates set aside, and the end: a report, or, when the new kernel
//! does not come up, the old command line booted again (the units restored
//! there, as they would have been on the new kernel).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::control::Request;
use crate::error::{Error, Result};
use crate::machine::UserCommand;
use crate::points::PointsCapture;
use crate::update::{Kept, Report};

/// How many units' images a candidates' directory keeps (`updates/`):
/// the newest, the one the VM was restored from.
const KEEP_IMAGES: usize = 1;

/// An update under way.
#[derive(Debug)]
pub(crate) struct Updating {
    /// The client's request.
    pub req: Request,
    /// When it came.
    pub started: Instant,
    /// What the checkpoint kept, or why nothing.
    pub kept: std::result::Result<Kept, String>,
    /// The command line before the update.
    pub old: UserCommand,
    /// Why the new kernel was given up, once it was: the old one boots.
    pub reverted: Option<String>,
}

/// What ends a boot during an update.
pub(crate) enum Ended {
    /// The guest is ready: the update is told.
    Done,
    /// The new kernel did not come up: boot the old command line, why.
    Revert(String),
}

impl Updating {
    /// The image of the units to restore.
    pub fn image(&self) -> Option<&Path> {
        self.kept.as_ref().ok()?.image.as_deref()
    }

    /// After a boot of this update: told as done (the report goes to the
    /// client and is returned), or to be tried again on the old kernel.
    pub fn ended(&mut self, booted: std::result::Result<&PointsCapture, String>) -> (Ended, Option<Report>) {
        let why = match booted {
            Ok(c) if c.stopped.is_none() || self.reverted.is_some() => {
                let kept = self.kept.as_ref().map_err(String::as_str);
                let (restored, failed) = (c.restored.as_ref(), c.restore_failed.as_deref());
                let mut report = Report::new(&self.req.update.keep, kept, restored, failed, self.started.elapsed());
                report.reverted.clone_from(&self.reverted);
                self.req.tell(&report.json());
                return (Ended::Done, Some(report));
            }
            Ok(c) => format!("the new kernel's boot did not reach ready: {}", c.stopped.as_deref().unwrap_or("?")),
            Err(e) if self.reverted.is_none() => format!("the new kernel did not boot: {e}"),
            Err(e) => {
                self.req.tell(&serde_json::json!({"error": format!("neither kernel booted: {e}")}));
                return (Ended::Done, None);
            }
        };
        self.reverted = Some(why.clone());
        (Ended::Revert(why), None)
    }
}

/// Whether `req` can be met on the VM of `cmd`: its new command line.
///
/// # Errors
/// The command line cannot take the new kernel, or units are to be kept
/// and the guest's agent is not up yet (no heartbeat: it could not hear
/// the checkpoint).
pub(crate) fn command(req: &Request, cmd: &UserCommand, heartbeat: bool) -> Result<UserCommand> {
    let new = req.update.command(cmd)?;
    if !req.update.keep.is_empty() && !heartbeat {
        return Err(Error::Guest(
            "the guest's agent is not up (no heartbeat yet: the guest is booting, or runs no pbr-agent): units \
             cannot be kept now; ask again once it is ready, or keep none"
                .into(),
        ));
    }
    Ok(new)
}

/// Where the units' image of an update goes: `DIR/updates/update-N.pbr`,
/// a name not taken yet.
pub(crate) fn image_path(dir: &Path) -> std::result::Result<PathBuf, String> {
    let updates = dir.join("updates");
    std::fs::create_dir_all(&updates).map_err(|e| format!("cannot create {}: {e}", updates.display()))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    (0..1000)
        .map(|n| updates.join(format!("update-{stamp}-{n}.pbr")))
        .find(|p| !p.exists())
        .ok_or_else(|| format!("no free name in {}", updates.display()))
}

/// Removes the images of `dir/updates` but the newest [`KEEP_IMAGES`].
pub(crate) fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("updates")) else { return };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pbr"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    images.sort();
    for (_, p) in images.iter().rev().skip(KEEP_IMAGES) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_images_get_free_names_and_the_newest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = image_path(dir.path()).unwrap();
        std::fs::write(&a, b"a").unwrap();
        let b = image_path(dir.path()).unwrap();
        assert_ne!(a, b);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&b, b"b").unwrap();
        prune(dir.path());
        assert!(!a.exists() && b.exists());
    }
}
