//! The QEMU a recovery restores into: one started before the decision
//! (a standby, waiting for the state, or prestaged, holding the latest
//! candidate paused), else one started at the decision.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pbr_format::Image;
use pbr_replay::qemu::{QemuAdapter, ServedRam};

use crate::beside::{Takeover, beside};
use crate::error::{Error, Result};
use crate::vmm::Vmm;

/// A candidate, opened once for the whole recovery.
pub(crate) struct Opened {
    /// Where it is.
    pub(crate) path: PathBuf,
    /// The image.
    pub(crate) image: Image,
    /// The server of its RAM, when it is a store image's shell.
    pub(crate) served: Option<Arc<dyn ServedRam>>,
}

/// A QEMU started before the decision.
pub(crate) struct Standby {
    /// The QEMU.
    pub(crate) vm: QemuAdapter,
    /// The arguments of the machine it stands for (a candidate's own).
    stands_for: Vec<String>,
    /// What it takes over from the VM it replaces once that one is gone.
    takeover: Vec<Takeover>,
}

impl Standby {
    /// A QEMU for the `latest` candidate, as `vmm` says: waiting for a
    /// stream, or holding the candidate paused. It runs the machine's
    /// arguments and the recovery's `own` (its sockets). With `beside_in`,
    /// it starts while the VM it will replace still runs: the machine's
    /// arguments get stand-ins in that directory ([`crate::beside`]).
    /// `None` for [`Vmm::Spawn`].
    ///
    /// # Errors
    /// Why no QEMU waits: the command line cannot run beside the VM, or
    /// QEMU did not start.
    pub(crate) fn start(
        qemu: &str,
        (machine, own): (Vec<String>, Vec<String>),
        latest: &Opened,
        vmm: Vmm,
        beside_in: Option<&Path>,
    ) -> std::result::Result<Option<Standby>, String> {
        if latest.served.is_some() {
            return Err("a store candidate restored as it runs needs a QEMU of its own, started for it".into());
        }
        let prestaged = match vmm {
            Vmm::Spawn => return Ok(None),
            Vmm::Prestaged => true,
            Vmm::Standby => false,
        };
        let (mut run, takeover) = match beside_in {
            Some(dir) => {
                let b = beside(&machine, dir)?;
                (b.args, b.takeover)
            }
            None => (machine.clone(), Vec::new()),
        };
        run.extend(own.iter().cloned());
        let args = [machine, own].concat();
        let vm = if prestaged {
            // Preparing before a failure must not prevent the recovery: an
            // image that does not load leaves a plain standby QEMU (and is
            // refused at the decision if invalid).
            QemuAdapter::prestage(qemu, run.clone(), &latest.path, &latest.image)
                .or_else(|_| QemuAdapter::standby(qemu, run))
        } else {
            QemuAdapter::standby_prepared(qemu, run, &latest.path, &latest.image)
        };
        let vm = vm.map_err(|e| format!("the standby QEMU did not start: {e}"))?;
        Ok(Some(Standby { vm, stands_for: args, takeover }))
    }

    /// Whether its QEMU still runs.
    fn alive(&mut self) -> bool {
        self.vm.process().is_some_and(|p| matches!(p.child().try_wait(), Ok(None)))
    }
}

/// Restores `o` with `args` into the waiting QEMU where it can take it,
/// else into a new `qemu` (the waiting one is stopped first: it holds the
/// ports and sockets of `args`); says which way it went. A waiting QEMU
/// that was started beside the VM takes over what that VM held.
///
/// # Errors
/// QEMU failed, or the image is damaged (the guest never ran).
pub(crate) fn restore_into(
    qemu: &str,
    args: &[String],
    o: &Opened,
    standby: Option<Standby>,
) -> Result<(QemuAdapter, Vmm)> {
    let hash = o.image.image_blake3();
    // One that died while it waited (killed, out of memory) is replaced;
    // a served RAM is mapped only by a QEMU started for it.
    let standby = standby.and_then(|mut s| (s.alive() && o.served.is_none()).then_some(s));
    match standby {
        Some(mut s) if s.vm.held() == Some(hash) => {
            take_over(&mut s)?;
            s.vm.cont()?;
            Ok((s.vm, Vmm::Prestaged))
        }
        // It holds another candidate, maps another's RAM, or runs another
        // machine type: a new QEMU after all.
        Some(s) if s.vm.held().is_some() || s.vm.maps().is_some_and(|h| h != hash) || s.stands_for != args => {
            drop(s);
            Ok((spawn_load(qemu, args, o)?, Vmm::Spawn))
        }
        Some(mut s) => {
            s.vm.set_image(&o.path);
            load(o, &mut s.vm)?;
            take_over(&mut s)?;
            Ok((s.vm, Vmm::Standby))
        }
        None => Ok((spawn_load(qemu, args, o)?, Vmm::Spawn)),
    }
}

/// The waiting QEMU takes over what the VM it replaces held.
fn take_over(s: &mut Standby) -> Result<()> {
    let process = s.vm.process().ok_or_else(|| Error::Guest("the standby QEMU is not running".into()))?;
    for t in &s.takeover {
        t.apply(process)?;
    }
    Ok(())
}

fn spawn_load(qemu: &str, args: &[String], o: &Opened) -> Result<QemuAdapter> {
    let mut q = QemuAdapter::new(&o.path, qemu, args.to_vec())?;
    if let Some(ram) = &o.served {
        q.serve_ram(ram.clone());
    }
    load(o, &mut q)?;
    Ok(q)
}

fn load(o: &Opened, q: &mut QemuAdapter) -> Result<()> {
    let file = std::fs::File::open(&o.path).map_err(|e| Error::io("candidate", e))?;
    pbr_replay::replay(&o.image, &file, q)?;
    Ok(())
}
