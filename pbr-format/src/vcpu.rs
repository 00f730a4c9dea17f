//! vCPU state (`spec/format.md` §7.2).
//!
//! The x86-64 record is laid out so Linux KVM's `kvm_regs`, `kvm_sregs`,
//! `kvm_debugregs`, `kvm_vcpu_events`, `kvm_lapic_state`, `kvm_msr_entry`
//! and `kvm_xsave` map onto it byte for byte.

pub use crate::pod::{KvmDebugregs, KvmDtable, KvmRegs, KvmSegment, KvmSregs, MsrEntry};

/// Size of the local APIC register page.
pub const LAPIC_SIZE: usize = 1024;
/// Size of `struct kvm_vcpu_events`.
pub const EVENTS_SIZE: usize = 64;

/// The state of one x86-64 vCPU.
///
/// # Example
/// ```
/// let mut v = pbr_format::X86Vcpu::new(0);
/// v.regs.rip.set(0x7c00);
/// v.sregs.cs.selector.set(0);
/// v.tsc = Some(1_000_000);
/// let record = pbr_format::Vcpu::X86_64(Box::new(v));
/// assert_eq!(record.id(), 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X86Vcpu {
    /// vCPU index.
    pub id: u32,
    /// General registers, rip and rflags.
    pub regs: KvmRegs,
    /// Segments with their hidden parts, descriptor tables, control
    /// registers, EFER, APIC base.
    pub sregs: KvmSregs,
    /// Debug registers, when known.
    pub debugregs: Option<KvmDebugregs>,
    /// `struct kvm_vcpu_events`, when known.
    pub events: Option<[u8; EVENTS_SIZE]>,
    /// The local APIC register page, when known.
    pub lapic: Option<Box<[u8; LAPIC_SIZE]>>,
    /// Guest TSC at capture, when known.
    pub tsc: Option<u64>,
    /// TSC frequency in kHz, 0 = unknown.
    pub tsc_khz: u32,
    /// KVM `KVM_MP_STATE_*` value.
    pub mp_state: u32,
    /// XCR0.
    pub xcr0: u64,
    /// Model-specific registers.
    pub msrs: Vec<MsrEntry>,
    /// Standard-format XSAVE image; empty when unknown.
    pub xsave: Vec<u8>,
}

impl X86Vcpu {
    /// A vCPU with every register zero and nothing optional known.
    ///
    /// # Example
    /// ```
    /// let v = pbr_format::X86Vcpu::new(3);
    /// assert_eq!((v.id, v.regs.rip.get(), v.lapic.is_none()), (3, 0, true));
    /// ```
    pub fn new(id: u32) -> Self {
        X86Vcpu {
            id,
            regs: KvmRegs::default(),
            sregs: KvmSregs::default(),
            debugregs: None,
            events: None,
            lapic: None,
            tsc: None,
            tsc_khz: 0,
            mp_state: 0,
            xcr0: 0,
            msrs: Vec::new(),
            xsave: Vec::new(),
        }
    }

    /// The value of MSR `index`, if the record has it.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let pbr_format::Vcpu::X86_64(v) = &image.vcpus()[0] else { panic!("not x86") };
    /// if let Some(lstar) = v.msr(0xc000_0082) {
    ///     println!("syscall entry at {lstar:#x}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index.get() == index).map(|m| m.data.get())
    }
}

/// One vCPU record of any architecture.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// for v in image.vcpus() {
///     match v {
///         pbr_format::Vcpu::X86_64(x) => println!("x86-64 vCPU {}", x.id),
///         pbr_format::Vcpu::Other { arch, id, .. } => println!("vCPU {id} of architecture {arch}"),
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vcpu {
    /// An x86-64 vCPU.
    X86_64(Box<X86Vcpu>),
    /// A record of an architecture this crate does not know, kept as bytes.
    Other {
        /// Architecture tag.
        arch: u32,
        /// vCPU index.
        id: u32,
        /// Flags word.
        flags: u32,
        /// The record body after its header.
        body: Vec<u8>,
    },
}

impl Vcpu {
    /// The vCPU index.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let ids: Vec<u32> = image.vcpus().iter().map(pbr_format::Vcpu::id).collect();
    /// assert_eq!(ids, [0, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> u32 {
        match self {
            Vcpu::X86_64(v) => v.id,
            Vcpu::Other { id, .. } => *id,
        }
    }

    /// The architecture name.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.vcpus()[0].arch_name(), "x86_64");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn arch_name(&self) -> &'static str {
        match self {
            Vcpu::X86_64(_) => "x86_64",
            Vcpu::Other { .. } => "unknown",
        }
    }
}
