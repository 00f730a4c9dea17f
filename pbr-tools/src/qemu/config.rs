//! The configuration section (type 0x07): machine type and validated
//! capabilities.

use std::io::Read;

use crate::error::Result;
use crate::stream::StreamReader;

/// The decoded configuration section, with its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The bytes after the 0x07 type byte, as read.
    pub raw: Vec<u8>,
    /// Resolved machine type, e.g. `pc-q35-7.2`.
    pub machine: String,
    /// `configuration/capabilities`, in order.
    pub capabilities: Vec<String>,
    /// `configuration/target-page-bits`.
    pub page_bits: Option<u32>,
    /// `configuration/uuid`.
    pub uuid: Option<[u8; 16]>,
}

/// Longest machine name accepted.
const MAX_MACHINE: u32 = 256;

impl Config {
    /// Reads the section body (the 0x07 byte already consumed).
    pub fn read<R: Read>(r: &mut StreamReader<R>) -> Result<Config> {
        let start = r.pos();
        let mut raw = Vec::new();
        let len = r.be32("configuration name length")?;
        if len > MAX_MACHINE {
            return Err(r.err_at(start, format!("machine name length {len} exceeds {MAX_MACHINE}")));
        }
        let name = r.read_vec(u64::from(len), "machine name")?;
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend_from_slice(&name);
        let machine = String::from_utf8(name).map_err(|_| r.err_at(start, "machine name is not UTF-8"))?;
        let mut cfg = Config { raw: Vec::new(), machine, capabilities: Vec::new(), page_bits: None, uuid: None };
        while r.peek()? == Some(0x05) {
            let at = r.pos();
            r.u8("subsection marker")?;
            let sub = r.counted_str("subsection name")?;
            let version = r.be32("subsection version")?;
            raw.push(0x05);
            raw.push(sub.len() as u8);
            raw.extend_from_slice(sub.as_bytes());
            raw.extend_from_slice(&version.to_be_bytes());
            match sub.as_str() {
                "configuration/target-page-bits" => {
                    let bits = r.be32("target-page-bits")?;
                    raw.extend_from_slice(&bits.to_be_bytes());
                    cfg.page_bits = Some(bits);
                }
                "configuration/capabilities" => {
                    let n = r.be32("capability count")?;
                    raw.extend_from_slice(&n.to_be_bytes());
                    for _ in 0..n {
                        let cap = r.counted_str("capability name")?;
                        raw.push(cap.len() as u8);
                        raw.extend_from_slice(cap.as_bytes());
                        cfg.capabilities.push(cap);
                    }
                }
                "configuration/uuid" => {
                    let mut u = [0u8; 16];
                    r.read_exact(&mut u, "uuid")?;
                    raw.extend_from_slice(&u);
                    cfg.uuid = Some(u);
                }
                other => {
                    return Err(
                        r.err_at(at, format!("unknown configuration subsection '{other}': its length is not known"))
                    );
                }
            }
        }
        cfg.raw = raw;
        Ok(cfg)
    }

    /// Whether capability `name` is on.
    pub fn has(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }

    /// The section body with `drop` removed from the capabilities (the
    /// subsection disappears when none remain).
    pub fn without_capability(&self, drop: &str) -> Vec<u8> {
        if !self.has(drop) {
            return self.raw.clone();
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(self.machine.len() as u32).to_be_bytes());
        out.extend_from_slice(self.machine.as_bytes());
        let sub = |out: &mut Vec<u8>, name: &str| {
            out.push(0x05);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&1u32.to_be_bytes());
        };
        if let Some(bits) = self.page_bits {
            sub(&mut out, "configuration/target-page-bits");
            out.extend_from_slice(&bits.to_be_bytes());
        }
        let caps: Vec<&String> = self.capabilities.iter().filter(|c| *c != drop).collect();
        if !caps.is_empty() {
            sub(&mut out, "configuration/capabilities");
            out.extend_from_slice(&(caps.len() as u32).to_be_bytes());
            for c in caps {
                out.push(c.len() as u8);
                out.extend_from_slice(c.as_bytes());
            }
        }
        if let Some(u) = self.uuid {
            sub(&mut out, "configuration/uuid");
            out.extend_from_slice(&u);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ram_config_round_trips_and_drops() {
        let mut b = Vec::new();
        b.extend_from_slice(&11u32.to_be_bytes());
        b.extend_from_slice(b"pc-q35-10.0");
        b.push(5);
        b.push(26);
        b.extend_from_slice(b"configuration/capabilities");
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.push(10);
        b.extend_from_slice(b"mapped-ram");
        let mut tail = b.clone();
        tail.push(0x01);
        let mut r = StreamReader::new("qemu", &tail[..], 0);
        let c = Config::read(&mut r).unwrap();
        assert_eq!(c.raw, b);
        assert_eq!(c.machine, "pc-q35-10.0");
        assert!(c.has("mapped-ram"));
        let dropped = c.without_capability("mapped-ram");
        assert_eq!(dropped, [&11u32.to_be_bytes()[..], b"pc-q35-10.0"].concat());
    }
}
