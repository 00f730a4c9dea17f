//! Which agent candidates may be restored now: their seals against the
//! host, and for the one to be chosen, every stored page.

use std::path::PathBuf;

use pbr_format::Image;
use pbr_tools::compat::QemuHost;
use pbr_tools::seal::{SEALS_KEY, Seals};

use crate::error::{Error, Result};
use crate::machine::UserCommand;
use crate::points::{AGENT_KEY, QEMU_KEY};

/// Whether `img` was captured at an agent's point.
pub fn is_agent_candidate(img: &Image) -> bool {
    img.metadata_value(AGENT_KEY) == Some("1")
}

/// The user's command line a candidate records (as recorded: to boot
/// afresh; [`pbr_tools::compat::restore_args`] makes it restore the
/// candidate), with `qemu` in place of the recorded binary when given.
///
/// # Errors
/// The candidate records none.
pub fn recorded_command(img: &Image, qemu: Option<&str>) -> Result<UserCommand> {
    let args = pbr_replay::qemu::args::recorded_boot_args(img)
        .ok_or_else(|| Error::Usage("the candidate records no QEMU command line".into()))?;
    let binary = qemu.or(img.metadata_value(QEMU_KEY)).unwrap_or("qemu-system-x86_64");
    Ok(UserCommand { qemu: binary.to_owned(), args })
}

/// Checks a candidate's seals against the host now, `host` being the QEMU
/// that would restore it.
///
/// # Errors
/// Why it may not be restored (one line).
pub fn check(img: &Image, host: &QemuHost) -> std::result::Result<(), String> {
    let seals = img.metadata_value(SEALS_KEY).ok_or("it records no seals")?;
    let seals = Seals::from_json(seals).map_err(|e| e.to_string())?;
    seals.check(host, img.metadata_value(pbr_format::keys::QEMU_MACHINE)).map_err(|r| r.0)
}

/// How [`select`] judged the candidates, latest first.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The candidate a recovery would restore: the latest valid one.
    pub chosen: Option<PathBuf>,
    /// Each candidate with `Ok` when it may be restored, else why not.
    pub verdicts: Vec<(PathBuf, std::result::Result<(), String>)>,
    /// No stored page was read ([`select`]'s `fast`).
    pub fast: bool,
}

/// Judges agent candidates as a recovery would, latest first: each must
/// open, record its command line and have seals that hold against the
/// QEMU that would restore it (`qemu`, else the one it records). The one
/// to be chosen has every stored page checked too, unless `fast`: a
/// recovery checks every page it restores anyway.
pub fn select(images: &[PathBuf], qemu: Option<&str>, fast: bool) -> Selection {
    let mut opened: Vec<(&PathBuf, pbr_format::Result<Image>)> = images.iter().map(|p| (p, Image::open(p))).collect();
    opened.sort_by_key(|(_, i)| std::cmp::Reverse(i.as_ref().ok().map_or((0, 0), phase_order)));
    let mut selection = Selection { chosen: None, verdicts: Vec::new(), fast };
    for (path, img) in &opened {
        let verdict = match img {
            Err(e) => Err(format!("refused: {e}")),
            Ok(img) => recorded_command(img, qemu)
                .map_err(|e| e.to_string())
                .and_then(|cmd| check(img, &QemuHost::of(&cmd.qemu)?)),
        };
        let verdict = match (img, verdict) {
            (Ok(img), Ok(())) if selection.chosen.is_none() && !fast => {
                img.check_page_crcs().map(|_| ()).map_err(|e| format!("damaged: {e}"))
            }
            (_, v) => v,
        };
        if verdict.is_ok() && selection.chosen.is_none() {
            selection.chosen = Some((*path).clone());
        }
        selection.verdicts.push(((*path).clone(), verdict));
    }
    selection
}

/// Where a candidate's phase stands in its boot: later phases sort higher.
pub fn phase_order(img: &Image) -> (u32, u64) {
    img.phase().map_or((0, 0), |p| (p.sequence, p.since_boot_ns))
}
