//! The shape of each RAM section of a stream (which pages, in which order,
//! as ZERO or PAGE records), kept in the image so `export` can write the
//! same records again with the image's current page content.

/// How a page was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// A ZERO record.
    Zero = 0,
    /// A PAGE record.
    Page = 1,
}

/// Consecutive pages of one block sent the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Index into the block list.
    pub block: u16,
    /// How the pages were sent.
    pub kind: RunKind,
    /// First page index within the block.
    pub first: u64,
    /// Number of pages.
    pub count: u32,
}

/// One RAM block of the MEM_SIZE list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// RAMBlock id string.
    pub name: String,
    /// Used length in bytes.
    pub used_length: u64,
}

/// One START, PART or END section of `ram`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamSection {
    /// Section type byte: 1 START, 2 PART, 3 END.
    pub section_type: u8,
    /// Section id.
    pub section_id: u32,
    /// For START: the section version and the block list.
    pub start: Option<(u32, Vec<BlockInfo>)>,
    /// Page records in stream order.
    pub runs: Vec<Run>,
}

impl RamSection {
    /// Records one page; extends the last run when it continues it.
    pub fn push(&mut self, block: u16, page: u64, kind: RunKind) {
        if let Some(r) = self.runs.last_mut()
            && r.block == block
            && r.kind == kind
            && r.first + u64::from(r.count) == page
            && r.count < u32::MAX
        {
            r.count += 1;
            return;
        }
        self.runs.push(Run { block, kind, first: page, count: 1 });
    }

    /// Serialises the section shape (little-endian, versioned by the blob).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.section_type];
        out.extend_from_slice(&self.section_id.to_le_bytes());
        match &self.start {
            Some((version, blocks)) => {
                out.push(1);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
                for b in blocks {
                    out.push(b.name.len() as u8);
                    out.extend_from_slice(b.name.as_bytes());
                    out.extend_from_slice(&b.used_length.to_le_bytes());
                }
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            out.extend_from_slice(&r.block.to_le_bytes());
            out.push(r.kind as u8);
            out.extend_from_slice(&r.first.to_le_bytes());
            out.extend_from_slice(&r.count.to_le_bytes());
        }
        out
    }

    /// Parses [`RamSection::encode`] output; `Err` names the problem.
    pub fn decode(b: &[u8]) -> Result<RamSection, String> {
        let mut c = Cursor { b, pos: 0 };
        let section_type = c.take(1)?[0];
        let section_id = c.u32()?;
        let start = match c.take(1)?[0] {
            0 => None,
            1 => {
                let version = c.u32()?;
                let n = c.u32()?;
                let mut blocks = Vec::new();
                for _ in 0..n {
                    let len = c.take(1)?[0] as usize;
                    let name = String::from_utf8(c.take(len)?.to_vec()).map_err(|_| "block name is not UTF-8")?;
                    blocks.push(BlockInfo { name, used_length: c.u64()? });
                }
                Some((version, blocks))
            }
            x => return Err(format!("bad start marker {x}")),
        };
        let n = c.u32()?;
        let mut runs = Vec::new();
        for _ in 0..n {
            let block = u16::from_le_bytes(c.take(2)?.try_into().map_err(|_| "short")?);
            let kind = match c.take(1)?[0] {
                0 => RunKind::Zero,
                1 => RunKind::Page,
                k => return Err(format!("bad run kind {k}")),
            };
            runs.push(Run { block, kind, first: c.u64()?, count: c.u32()? });
        }
        if c.pos != b.len() {
            return Err("trailing bytes".into());
        }
        Ok(RamSection { section_type, section_id, start, runs })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.b.get(self.pos..self.pos + n).ok_or("ram section shape is truncated")?;
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "short")?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "short")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let mut s = RamSection {
            section_type: 1,
            section_id: 2,
            start: Some((4, vec![BlockInfo { name: "pc.ram".into(), used_length: 1 << 27 }])),
            runs: Vec::new(),
        };
        for p in 0..10 {
            s.push(0, p, if p < 4 { RunKind::Zero } else { RunKind::Page });
        }
        s.push(0, 3, RunKind::Page);
        assert_eq!(s.runs.len(), 3);
        assert_eq!(RamSection::decode(&s.encode()).unwrap(), s);
        let e = s.encode();
        for n in 0..e.len() {
            assert!(RamSection::decode(&e[..n]).is_err());
        }
    }
}
