//! An adapter that records every call, for tests of replay itself.

use std::fs::File;

use pbr_format::{DeviceBlob, Image, Vcpu};

use crate::Result;
use crate::{HypervisorAdapter, RegionPlan, Taken};

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `memory`: region name, mapped runs, copied pages, zero pages.
    Memory(String, usize, usize, u64),
    /// `vcpu`: its id.
    Vcpu(u32),
    /// `device`: origin, name, instance, bytes.
    Device(u32, String, u32, usize),
    /// `resume`.
    Resume,
}

/// Records calls; refuses device blobs of the origins in `refuse`.
#[derive(Debug, Default)]
pub struct Recording {
    /// The calls, in order.
    pub calls: Vec<Call>,
    /// Device origins to refuse.
    pub refuse: Vec<u32>,
}

impl HypervisorAdapter for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn memory(&mut self, _image: &Image, _file: &File, plan: &RegionPlan) -> Result<Taken> {
        self.calls.push(Call::Memory(
            plan.region.name.to_string(),
            plan.mapped.len(),
            plan.copied.len(),
            plan.zero_pages,
        ));
        Ok(Taken::Yes)
    }

    fn vcpu(&mut self, vcpu: &Vcpu) -> Result<Taken> {
        self.calls.push(Call::Vcpu(vcpu.id()));
        Ok(Taken::Yes)
    }

    fn device(&mut self, blob: &DeviceBlob<'_>) -> Result<Taken> {
        self.calls.push(Call::Device(blob.origin.0, blob.name.to_string(), blob.instance, blob.data.len()));
        if self.refuse.contains(&blob.origin.0) {
            return Ok(Taken::No("refused by the test".into()));
        }
        Ok(Taken::Yes)
    }

    fn resume(&mut self, _image: &Image) -> Result<()> {
        self.calls.push(Call::Resume);
        Ok(())
    }
}
