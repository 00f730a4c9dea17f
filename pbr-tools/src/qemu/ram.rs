//! The `ram` section: the MEM_SIZE block list, ZERO and PAGE records,
//! CONTINUE, EOS, mapped-ram headers; and where each RAMBlock lands in the
//! image's address space.

use std::io::Read;

use pbr_format::Region;

use super::plan::{BlockInfo, RamSection, RunKind};
use crate::error::Result;
use crate::stream::StreamReader;

/// Record flags (`migration/ram.c`).
pub mod flags {
    /// Obsolete full-page record.
    pub const FULL: u64 = 0x01;
    /// A page of one repeated byte.
    pub const ZERO: u64 = 0x02;
    /// The block list.
    pub const MEM_SIZE: u64 = 0x04;
    /// A raw page.
    pub const PAGE: u64 = 0x08;
    /// End of the section's records.
    pub const EOS: u64 = 0x10;
    /// Same block as the previous record.
    pub const CONTINUE: u64 = 0x20;
    /// XBZRLE delta page.
    pub const XBZRLE: u64 = 0x40;
    /// RDMA hook.
    pub const HOOK: u64 = 0x80;
    /// zlib-compressed page.
    pub const COMPRESS_PAGE: u64 = 0x100;
    /// Multifd channel sync.
    pub const MULTIFD_FLUSH: u64 = 0x200;
}

/// Where a mapped-ram block keeps its bitmap and pages in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedBlock {
    /// Index into the block list.
    pub block: usize,
    /// File offset of the bitmap.
    pub bitmap_offset: u64,
    /// File offset of page 0.
    pub pages_offset: u64,
}

/// Receives what the RAM records carry.
pub trait PageSink {
    /// The block list is complete (called once, from the START section).
    fn blocks(&mut self, blocks: &[BlockInfo], mapped: &[MappedBlock]) -> Result<()>;
    /// Page at `offset` of block `block`: `fill` repeated, or `data`.
    fn page(&mut self, block: usize, offset: u64, fill: u8, data: Option<&[u8]>) -> Result<()>;
}

/// State that persists across RAM sections.
pub struct RamParser {
    /// The block list, once MEM_SIZE was read.
    pub blocks: Vec<BlockInfo>,
    last_block: Option<usize>,
    page_size: u64,
    mapped_ram: bool,
    buf: Vec<u8>,
}

/// At most this many RAM blocks.
const MAX_BLOCKS: usize = 4096;

impl RamParser {
    /// A parser for `page_size` pages; `mapped_ram` when the configuration
    /// lists that capability.
    pub fn new(page_size: u64, mapped_ram: bool) -> Self {
        RamParser { blocks: Vec::new(), last_block: None, page_size, mapped_ram, buf: vec![0; page_size as usize] }
    }

    /// Parses one section body's records up to EOS, recording the shape in
    /// `plan` and handing pages to `sink`.
    pub fn section<R: Read>(
        &mut self,
        r: &mut StreamReader<R>,
        plan: &mut RamSection,
        sink: &mut dyn PageSink,
    ) -> Result<()> {
        let ps = self.page_size;
        loop {
            let at = r.pos();
            let header = r.be64("ram record header")?;
            let fl = header & (ps - 1);
            let offset = header & !(ps - 1);
            if fl & flags::MEM_SIZE != 0 {
                self.mem_size(r, offset, at, plan, sink)?;
                continue;
            }
            if fl == flags::EOS {
                return Ok(());
            }
            let unsupported = |cap: &str| {
                r.err_at(
                    at,
                    format!("the stream uses the '{cap}' capability, which pbr does not decode; save without it"),
                )
            };
            if fl & flags::XBZRLE != 0 {
                return Err(unsupported("xbzrle"));
            }
            if fl & flags::COMPRESS_PAGE != 0 {
                return Err(unsupported("compress"));
            }
            if fl & flags::HOOK != 0 {
                return Err(unsupported("rdma"));
            }
            if fl & flags::MULTIFD_FLUSH != 0 {
                return Err(unsupported("multifd (pages travel on other channels than this stream)"));
            }
            let kind = match fl & !flags::CONTINUE {
                flags::ZERO => RunKind::Zero,
                flags::PAGE => RunKind::Page,
                _ => return Err(r.err_at(at, format!("unknown ram record flags {fl:#x}"))),
            };
            let block = if fl & flags::CONTINUE != 0 {
                self.last_block.ok_or_else(|| r.err_at(at, "CONTINUE record with no previous block"))?
            } else {
                let name = r.counted_str("ram block name")?;
                self.blocks
                    .iter()
                    .position(|b| b.name == name)
                    .ok_or_else(|| r.err_at(at, format!("page of unknown ram block '{name}'")))?
            };
            self.last_block = Some(block);
            let b = &self.blocks[block];
            if offset >= b.used_length {
                return Err(r.err_at(
                    at,
                    format!("page offset {offset:#x} is past the {:#x} bytes of block '{}'", b.used_length, b.name),
                ));
            }
            let page = offset / ps;
            plan.push(block as u16, page, kind);
            match kind {
                RunKind::Zero => {
                    let fill = r.u8("zero page fill byte")?;
                    sink.page(block, offset, fill, None)?;
                }
                RunKind::Page => {
                    let mut buf = std::mem::take(&mut self.buf);
                    let res = r.read_exact(&mut buf, "page data");
                    let res = res.and_then(|()| sink.page(block, offset, 0, Some(&buf)));
                    self.buf = buf;
                    res?;
                }
            }
        }
    }

    fn mem_size<R: Read>(
        &mut self,
        r: &mut StreamReader<R>,
        total: u64,
        at: u64,
        plan: &mut RamSection,
        sink: &mut dyn PageSink,
    ) -> Result<()> {
        if !self.blocks.is_empty() {
            return Err(r.err_at(at, "a second MEM_SIZE block list"));
        }
        let mut left = total;
        let mut mapped = Vec::new();
        while left > 0 {
            if self.blocks.len() >= MAX_BLOCKS {
                return Err(r.err_at(at, format!("more than {MAX_BLOCKS} ram blocks")));
            }
            let entry = r.pos();
            let name = r.counted_str("ram block name")?;
            let used_length = r.be64("ram block length")?;
            if name.is_empty() {
                return Err(r.err_at(entry, "ram block with an empty name"));
            }
            if self.blocks.iter().any(|b| b.name == name) {
                return Err(r.err_at(entry, format!("ram block '{name}' listed twice")));
            }
            left = left.checked_sub(used_length).ok_or_else(|| {
                r.err_at(
                    entry,
                    format!("block '{name}' of {used_length:#x} bytes exceeds the MEM_SIZE total {total:#x}"),
                )
            })?;
            if self.mapped_ram {
                mapped.push(self.mapped_header(r, self.blocks.len(), used_length)?);
            }
            self.blocks.push(BlockInfo { name, used_length });
        }
        if let Some(s) = plan.start.as_mut() {
            s.1 = self.blocks.clone();
        }
        sink.blocks(&self.blocks, &mapped)
    }

    fn mapped_header<R: Read>(&self, r: &mut StreamReader<R>, block: usize, used_length: u64) -> Result<MappedBlock> {
        let at = r.pos();
        let version = r.be32("mapped-ram header version")?;
        let page_size = r.be64("mapped-ram page size")?;
        let bitmap_offset = r.be64("mapped-ram bitmap offset")?;
        let pages_offset = r.be64("mapped-ram pages offset")?;
        if version != 1 {
            return Err(r.err_at(at, format!("mapped-ram header version {version}, only 1 is known")));
        }
        if page_size != self.page_size {
            return Err(r.err_at(at, format!("mapped-ram page size {page_size} differs from {}", self.page_size)));
        }
        let bitmap_len = used_length.div_ceil(self.page_size).div_ceil(8);
        if bitmap_offset < r.pos()
            || bitmap_offset.checked_add(bitmap_len).is_none_or(|e| e > pages_offset)
            || pages_offset % self.page_size != 0
        {
            return Err(r.err_at(
                at,
                format!(
                    "mapped-ram bitmap at {bitmap_offset:#x} and pages at {pages_offset:#x} are not laid out forward"
                ),
            ));
        }
        let next =
            pages_offset.checked_add(used_length).ok_or_else(|| r.err_at(at, "mapped-ram page area overflows"))?;
        r.skip_to(next, "the next mapped-ram block entry")?;
        Ok(MappedBlock { block, bitmap_offset, pages_offset })
    }
}

/// Where each RAM block lands in the image.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Regions, sorted by base.
    pub regions: Vec<Region<'static>>,
    /// Per block: `(source_offset, length, base)` pieces.
    pieces: Vec<Vec<(u64, u64, u64)>>,
}

/// Synthetic regions start here, far above any guest-physical address.
pub const SYNTHETIC_BASE: u64 = 1 << 48;

impl Layout {
    /// Maps blocks to regions: `pc.ram` at its guest-physical addresses for
    /// the PC machines (split around the PCI hole as QEMU does); every other
    /// block at a synthetic address.
    pub fn new(machine: &str, blocks: &[BlockInfo], page_size: u64) -> Layout {
        let mut regions = Vec::new();
        let mut pieces = Vec::new();
        let mut synth = SYNTHETIC_BASE;
        for b in blocks {
            let len = b.used_length.div_ceil(page_size) * page_size;
            let mut p = Vec::new();
            let low = if b.name == "pc.ram" { low_ram(machine, len) } else { None };
            if let Some(low) = low {
                p.push((0, low, 0));
                if len > low {
                    p.push((low, len - low, 1 << 32));
                }
            } else if len > 0 {
                p.push((0, len, synth));
                synth = (synth + len).next_multiple_of(2 << 20);
            }
            for &(source_offset, length, base) in &p {
                regions.push(Region {
                    base,
                    length,
                    source_offset,
                    read_only: is_rom(&b.name),
                    synthetic: base >= SYNTHETIC_BASE,
                    name: b.name.clone().into(),
                });
            }
            pieces.push(p);
        }
        regions.sort_by_key(|r| r.base);
        Layout { regions, pieces }
    }

    /// The address of byte `offset` of block `block`.
    pub fn address(&self, block: usize, offset: u64) -> Option<u64> {
        self.pieces
            .get(block)?
            .iter()
            .find(|(src, len, _)| offset >= *src && offset < src + len)
            .map(|(src, _, base)| base + (offset - src))
    }
}

/// Guest-physical bytes of `pc.ram` below 4 GiB for the PC machine types,
/// or `None` for a machine whose layout is not known.
fn low_ram(machine: &str, len: u64) -> Option<u64> {
    const GIB: u64 = 1 << 30;
    if machine.starts_with("pc-q35") || machine == "q35" {
        Some(if len >= 0xb000_0000 { 2 * GIB } else { len })
    } else if machine.starts_with("pc-i440fx") || machine == "pc" || machine.starts_with("pc-") {
        Some(if len >= 0xe000_0000 { 3 * GIB } else { len })
    } else if len <= 2 * GIB {
        Some(len)
    } else {
        None
    }
}

fn is_rom(name: &str) -> bool {
    name == "pc.bios" || name.ends_with(".rom") || name.starts_with("/rom@") || name.contains("isa-bios")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(ram: u64) -> Vec<BlockInfo> {
        vec![
            BlockInfo { name: "pc.ram".into(), used_length: ram },
            BlockInfo { name: "/rom@etc/acpi/tables".into(), used_length: 0x20000 },
            BlockInfo { name: "pc.bios".into(), used_length: 0x40000 },
        ]
    }

    #[test]
    fn q35_small_and_large() {
        let l = Layout::new("pc-q35-7.2", &blocks(128 << 20), 4096);
        assert_eq!(l.address(0, 0x1234), Some(0x1234));
        assert_eq!(l.address(2, 0), Some(SYNTHETIC_BASE + (2 << 20)));
        assert!(l.regions[2].read_only && l.regions[2].synthetic);
        let l = Layout::new("pc-q35-7.2", &blocks(4 << 30), 4096);
        assert_eq!(l.address(0, (2 << 30) - 1), Some((2 << 30) - 1));
        assert_eq!(l.address(0, 2 << 30), Some(4 << 30));
        assert_eq!(l.regions[1].source_offset, 2 << 30);
        let l = Layout::new("pc-i440fx-7.2", &blocks(4 << 30), 4096);
        assert_eq!(l.address(0, 3 << 30), Some(4 << 30));
    }
}
