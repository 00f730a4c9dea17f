//! The `VCPUS` section (`spec/format.md` §7.2).

use std::ops::Range;

use zerocopy::FromBytes;

use crate::error::{Error, Result};
use crate::limits::{MAX_MSRS, MAX_VCPUS, MAX_XSAVE};
use crate::pod::{
    ARCH_X86_64, MsrEntry, TablePrefix, VCPU_DEBUGREGS, VCPU_EVENTS, VCPU_LAPIC, VCPU_TSC, VcpuHeader, X86VcpuFixed,
};
use crate::vcpu::{LAPIC_SIZE, Vcpu, X86Vcpu};

const NAME: &str = "VCPUS";

/// Decodes every record of the `VCPUS` section at `range`.
pub(crate) fn parse(bytes: &[u8], range: Range<usize>) -> Result<Vec<Vcpu>> {
    let base = range.start as u64;
    let section = &bytes[range];
    let (prefix, _) = TablePrefix::read_from_prefix(section)
        .map_err(|_| Error::malformed(NAME, base, "section is shorter than its 8-byte prefix"))?;
    let count = prefix.count.get();
    if count > MAX_VCPUS {
        return Err(Error::malformed(NAME, base, format!("count {count} exceeds the limit of {MAX_VCPUS}")));
    }
    let mut pos = 8usize;
    let mut out: Vec<Vcpu> = Vec::new();
    for i in 0..count {
        let at = base + pos as u64;
        let rest = &section[pos..];
        let (h, _) = VcpuHeader::read_from_prefix(rest)
            .map_err(|_| Error::malformed(NAME, at, format!("record {i}: header runs past the section end")))?;
        let length = h.length.get() as usize;
        if length < size_of::<VcpuHeader>() || !length.is_multiple_of(8) || length > rest.len() {
            return Err(Error::malformed(
                NAME,
                at,
                format!("record {i}: length {length} is not a multiple of 8 in 16..={}", rest.len()),
            ));
        }
        let body = &rest[size_of::<VcpuHeader>()..length];
        let (arch, id, flags) = (h.arch.get(), h.id.get(), h.flags.get());
        if out.last().is_some_and(|p| p.id() >= id) {
            return Err(Error::malformed(
                NAME,
                at,
                format!("record {i}: vCPU id {id} is not above the previous record's"),
            ));
        }
        let v = if arch == ARCH_X86_64 {
            Vcpu::X86_64(Box::new(parse_x86(body, id, flags, at, i)?))
        } else {
            Vcpu::Other { arch, id, flags, body: body.to_vec() }
        };
        out.push(v);
        pos += length;
    }
    Ok(out)
}

fn parse_x86(body: &[u8], id: u32, flags: u32, at: u64, i: u32) -> Result<X86Vcpu> {
    let (f, tail) = X86VcpuFixed::read_from_prefix(body).map_err(|_| {
        Error::malformed(NAME, at, format!("record {i}: {} bytes are too few for an x86-64 record", body.len() + 16))
    })?;
    let (msr_count, xsave_len) = (f.msr_count.get(), f.xsave_len.get());
    if msr_count > MAX_MSRS {
        return Err(Error::malformed(NAME, at, format!("record {i}: msr_count {msr_count} exceeds {MAX_MSRS}")));
    }
    if xsave_len > MAX_XSAVE || xsave_len % 4 != 0 {
        return Err(Error::malformed(
            NAME,
            at,
            format!("record {i}: xsave_len {xsave_len} is not a multiple of 4 up to {MAX_XSAVE}"),
        ));
    }
    let msr_bytes = msr_count as usize * size_of::<MsrEntry>();
    if msr_bytes + xsave_len as usize > tail.len() {
        return Err(Error::malformed(
            NAME,
            at,
            format!("record {i}: {msr_count} MSRs and {xsave_len} XSAVE bytes run past the record end"),
        ));
    }
    let msrs = <[MsrEntry]>::ref_from_bytes(&tail[..msr_bytes])
        .map_err(|_| Error::malformed(NAME, at, format!("record {i}: bad MSR list")))?
        .to_vec();
    let xsave = tail[msr_bytes..msr_bytes + xsave_len as usize].to_vec();
    let lapic = (flags & VCPU_LAPIC != 0).then(|| {
        let mut page = Box::new([0u8; LAPIC_SIZE]);
        page.copy_from_slice(&f.lapic);
        page
    });
    Ok(X86Vcpu {
        id,
        regs: f.regs,
        sregs: f.sregs,
        debugregs: (flags & VCPU_DEBUGREGS != 0).then_some(f.debugregs),
        events: (flags & VCPU_EVENTS != 0).then_some(f.events),
        lapic,
        tsc: (flags & VCPU_TSC != 0).then_some(f.tsc.get()),
        tsc_khz: f.tsc_khz.get(),
        mp_state: f.mp_state.get(),
        xcr0: f.xcr0.get(),
        msrs,
        xsave,
    })
}
