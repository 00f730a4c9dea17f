//! The KVM adapter: guest memory mapped `MAP_PRIVATE` from the image file
//! (copy on write: the image is never written), anonymous memory for
//! zero and trimmed pages, lz4 and duplicate pages copied in; vCPU state
//! through `KVM_SET_*`; vCPUs run by [`KvmAdapter::run_until_io`].
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

use kvm_bindings::{Msrs, kvm_msr_entry, kvm_userspace_memory_region, kvm_xsave};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use pbr_format::kvm::{events_to_kvm, xsave_to_kvm};
use pbr_format::{DeviceBlob, Image, Vcpu, X86Vcpu};

use crate::error::{Error, Result};
use crate::{HypervisorAdapter, RegionPlan, Taken};

/// Host memory backing one KVM memory slot; unmapped on drop.
struct Mapping {
    host: *mut u8,
    len: usize,
    gpa: u64,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `host`/`len` are exactly what mmap returned for this
        // mapping, and the VM using it is dropped before (field order).
        unsafe {
            libc::munmap(self.host.cast(), self.len);
        }
    }
}

/// Why [`KvmAdapter::run_until_io`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest wrote `data` to I/O port `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// The guest halted.
    Halt,
}

/// A KVM virtual machine receiving an image.
pub struct KvmAdapter {
    vcpus: Vec<(u32, VcpuFd)>,
    vm: VmFd,
    memory: Vec<Mapping>,
    _kvm: Kvm,
    /// Optional vCPU state KVM refused (the vCPU still runs).
    pub notes: Vec<String>,
}

/// The vCPU's XSAVE area as KVM loads it. KVM restores only the components
/// of XSTATE_BV and resets the others; an area recorded with XSTATE_BV 0
/// that holds state (QEMU under TCG writes so) gets the components that
/// hold it, so that they are restored. The note says so.
fn xsave_for_kvm(x: &X86Vcpu) -> (kvm_xsave, Option<String>) {
    let area = pbr_tools::vcpu_state::xsave_for_restore(&x.xsave, x.xcr0);
    let note = matches!(area, std::borrow::Cow::Owned(_)).then(|| {
        let bv = pbr_tools::vcpu_state::xstate_bv(&area);
        format!(
            "vcpu{}: XSTATE_BV was recorded 0 over live state; loaded as {bv:#x} ({})",
            x.id,
            pbr_tools::vcpu_state::component_names(bv).join(" ")
        )
    });
    (xsave_to_kvm(&area), note)
}

fn kvm_err(what: &'static str, source: kvm_ioctls::Error) -> Error {
    Error::Kvm { what, source }
}

impl KvmAdapter {
    /// Opens `/dev/kvm` and creates an empty VM.
    ///
    /// # Errors
    /// No KVM here, or it refused a VM.
    pub fn new() -> Result<KvmAdapter> {
        let kvm = Kvm::new().map_err(|e| kvm_err("open /dev/kvm", e))?;
        let vm = kvm.create_vm().map_err(|e| kvm_err("create a VM", e))?;
        Ok(KvmAdapter { vcpus: Vec::new(), vm, memory: Vec::new(), _kvm: kvm, notes: Vec::new() })
    }

    /// Maps `len` bytes of fresh anonymous memory at guest-physical `gpa`
    /// and returns its slot index.
    ///
    /// # Errors
    /// mmap or KVM refused.
    pub fn add_ram(&mut self, gpa: u64, len: u64) -> Result<usize> {
        let len = usize::try_from(len).map_err(|_| Error::Image("region too large".into()))?;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to
        // the address range it returns.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(Error::io("cannot map guest memory", std::io::Error::last_os_error()));
        }
        self.memory.push(Mapping { host: host.cast(), len, gpa });
        let slot = self.memory.len() - 1;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mapping of `len` bytes owned by
        // `self.memory`, which outlives the VM's use of it (it is dropped
        // after the VM fd).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| kvm_err("set a memory region", e))?;
        Ok(slot)
    }

    /// The guest memory of slot `slot`, read while no vCPU runs.
    pub fn slot_memory(&self, slot: usize) -> Option<(u64, &[u8])> {
        let m = self.memory.get(slot)?;
        // SAFETY: the mapping is live for `&self`; vCPUs only run inside
        // `run_until_io(&mut self)`, so nothing writes it while this shared
        // borrow exists.
        Some((m.gpa, unsafe { std::slice::from_raw_parts(m.host, m.len) }))
    }

    /// Writes `bytes` into guest memory at `gpa` (inside one slot).
    ///
    /// # Errors
    /// The range is not inside one slot.
    pub fn write_guest(&mut self, gpa: u64, bytes: &[u8]) -> Result<()> {
        let m = self
            .memory
            .iter()
            .find(|m| gpa >= m.gpa && gpa + bytes.len() as u64 <= m.gpa + m.len as u64)
            .ok_or_else(|| Error::Guest(format!("guest address {gpa:#x} is not in guest memory")))?;
        // SAFETY: the destination range was just checked to lie inside the
        // live mapping; `&mut self` excludes running vCPUs.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.host.add((gpa - m.gpa) as usize), bytes.len());
        }
        Ok(())
    }

    /// The vCPU with `id`.
    pub fn vcpu_fd(&self, id: u32) -> Option<&VcpuFd> {
        self.vcpus.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// Creates vCPU `x.id` and loads its state.
    ///
    /// # Errors
    /// KVM refused the registers.
    pub fn add_vcpu(&mut self, x: &X86Vcpu) -> Result<()> {
        let fd = self.vm.create_vcpu(u64::from(x.id)).map_err(|e| kvm_err("create a vCPU", e))?;
        fd.set_sregs(&(&x.sregs).into()).map_err(|e| kvm_err("set sregs", e))?;
        fd.set_regs(&(&x.regs).into()).map_err(|e| kvm_err("set regs", e))?;
        if !x.xsave.is_empty() {
            let (area, note) = xsave_for_kvm(x);
            self.notes.extend(note);
            // SAFETY: `kvm_xsave` is the legacy fixed-size 4 KiB area, which
            // is what this ioctl reads.
            if let Err(e) = unsafe { fd.set_xsave(&area) } {
                self.notes.push(format!("vcpu{}: XSAVE state refused: {e}", x.id));
            }
        }
        if !x.msrs.is_empty() {
            let entries: Vec<kvm_msr_entry> = x.msrs.iter().map(Into::into).collect();
            match Msrs::from_entries(&entries)
                .map_err(|e| e.to_string())
                .and_then(|m| fd.set_msrs(&m).map_err(|e| e.to_string()))
            {
                Ok(n) if n == entries.len() => {}
                Ok(n) => self.notes.push(format!("vcpu{}: KVM took {n} of {} MSRs", x.id, entries.len())),
                Err(e) => self.notes.push(format!("vcpu{}: MSRs refused: {e}", x.id)),
            }
        }
        if let Some(dr) = &x.debugregs
            && let Err(e) = fd.set_debug_regs(&dr.into())
        {
            self.notes.push(format!("vcpu{}: debug registers refused: {e}", x.id));
        }
        if let Some(ev) = &x.events
            && let Err(e) = fd.set_vcpu_events(&events_to_kvm(ev))
        {
            self.notes.push(format!("vcpu{}: pending events refused: {e}", x.id));
        }
        if x.tsc.is_some() || x.lapic.is_some() {
            self.notes.push(format!("vcpu{}: TSC and LAPIC are not loaded (no in-kernel irqchip)", x.id));
        }
        self.vcpus.push((x.id, fd));
        Ok(())
    }

    /// Runs vCPU `id` until it writes to an I/O port or halts, giving reads
    /// of I/O ports and MMIO all-ones (no device there).
    ///
    /// # Errors
    /// No such vCPU, KVM failed, or the guest shut down or hit an exit this
    /// adapter does not handle.
    pub fn run_until_io(&mut self, id: u32) -> Result<Exit> {
        let (_, fd) =
            self.vcpus.iter_mut().find(|(i, _)| *i == id).ok_or_else(|| Error::Image(format!("no vcpu{id}")))?;
        loop {
            match fd.run().map_err(|e| kvm_err("run", e))? {
                VcpuExit::IoOut(port, data) => return Ok(Exit::IoOut { port, data: data.to_vec() }),
                VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data) => data.fill(0xff),
                VcpuExit::MmioWrite(..) => {}
                VcpuExit::Hlt => return Ok(Exit::Halt),
                other => return Err(Error::Guest(format!("guest stopped with KVM exit {other:?}"))),
            }
        }
    }
}

impl HypervisorAdapter for KvmAdapter {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn memory(&mut self, image: &Image, file: &File, plan: &RegionPlan) -> Result<Taken> {
        let r = &plan.region;
        if r.synthetic {
            return Ok(Taken::No("not guest-physical memory".into()));
        }
        pbr_tools::refill::refuse_refill(image, "the KVM adapter")?;
        plan.check_mapped(image)?;
        let slot = self.add_ram(r.base, r.length)?;
        let m = &self.memory[slot];
        for run in &plan.mapped {
            // Never map past the end of the file: that would SIGBUS.
            if run.file_offset + run.len > image.file_len() || run.region_offset + run.len > r.length {
                return Err(Error::Image(format!("raw run at {:#x} lies outside the image", run.file_offset)));
            }
            // SAFETY: the target range lies inside the anonymous mapping of
            // this slot (checked above); MAP_FIXED replaces those pages with
            // a private copy-on-write view of the image file, which is open
            // read-only and never written through this mapping.
            let p = unsafe {
                libc::mmap(
                    m.host.add(run.region_offset as usize).cast(),
                    run.len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    run.file_offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(Error::io("cannot map image pages", std::io::Error::last_os_error()));
            }
        }
        let ps = u64::from(image.page_size());
        let mut buf = vec![0u8; ps as usize];
        for &gfn in &plan.copied {
            let page = image.read_page(gfn, &mut buf)?.to_vec();
            self.write_guest(gfn * ps, &page)?;
        }
        Ok(Taken::Yes)
    }

    fn vcpu(&mut self, vcpu: &Vcpu) -> Result<Taken> {
        match vcpu {
            Vcpu::X86_64(x) => {
                self.add_vcpu(x)?;
                Ok(Taken::Yes)
            }
            Vcpu::Other { arch, .. } => Ok(Taken::No(format!("architecture {arch} is not x86-64"))),
        }
    }

    fn device(&mut self, _blob: &DeviceBlob<'_>) -> Result<Taken> {
        Ok(Taken::No("the KVM adapter emulates no devices".into()))
    }

    fn resume(&mut self, _image: &Image) -> Result<()> {
        if self.vcpus.is_empty() {
            return Err(Error::Image("the image has no vCPU to run".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vCPU 0 of the real QEMU stream `testdata/qemu/counter-q35-16m.qemu`.
    fn counter_vcpu0() -> X86Vcpu {
        let stream = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c.pbr");
        pbr_tools::qemu::convert(std::fs::File::open(&stream).unwrap(), None, &out, &Default::default(), &|_| {})
            .unwrap();
        let img = pbr_format::Image::open(&out).unwrap();
        let pbr_format::Vcpu::X86_64(x) = &img.vcpus()[0] else { panic!("x86-64") };
        (**x).clone()
    }

    /// The real QEMU stream (TCG: XSTATE_BV 0) loads as recorded while its
    /// area is in the init state; with x87 and SSE state in it, XSTATE_BV
    /// is set to those components. A recorded XSTATE_BV is kept.
    #[test]
    fn tcg_xsave_gets_the_components_it_holds() {
        let mut x = counter_vcpu0();
        assert_eq!(pbr_tools::vcpu_state::xstate_bv(&x.xsave), 0);
        let (area, note) = xsave_for_kvm(&x);
        assert_eq!(pbr_format::kvm::xsave_from_kvm(&area), x.xsave);
        assert!(note.is_none());

        x.xsave[24..28].copy_from_slice(&0x1fa0u32.to_le_bytes()); // MXCSR
        x.xsave[32..40].copy_from_slice(&0x8000_0000_0000_0000u64.to_le_bytes()); // st0 = 1.0
        x.xsave[40..42].copy_from_slice(&0x3fffu16.to_le_bytes());
        let (area, note) = xsave_for_kvm(&x);
        let loaded = pbr_format::kvm::xsave_from_kvm(&area);
        assert_eq!(pbr_tools::vcpu_state::xstate_bv(&loaded), 0b11);
        assert!(note.unwrap().ends_with("loaded as 0x3 (x87 sse)"));
        // Only XSTATE_BV changed.
        assert_eq!(loaded[..512], x.xsave[..512]);
        assert_eq!(loaded[520..], x.xsave[520..]);

        x.xsave[512] = 0b1;
        let (area, note) = xsave_for_kvm(&x);
        assert_eq!(pbr_format::kvm::xsave_from_kvm(&area), x.xsave);
        assert!(note.is_none());
    }
}
