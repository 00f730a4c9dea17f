//! The trailing VMDESCRIPTION JSON: the length of every device section and
//! where each field sits in it, so sections are split and registers found
//! without hard-coded offsets.

use serde_json::Value;

/// Where one field (or array of fields) sits inside a section body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldLoc {
    /// The JSON field name, e.g. `env.regs`.
    pub name: String,
    /// The subsection's vmsd name, for subsection fields.
    pub subsection: Option<String>,
    /// Offset of the first element in the body.
    pub offset: u64,
    /// Size of one element.
    pub size: u64,
    /// Number of elements.
    pub count: u64,
    /// QEMU's type name of the field (`uint32`, `buffer`, `struct`, ...).
    pub kind: String,
}

/// One device entry of the description, in stream order.
#[derive(Clone, Debug)]
pub struct DeviceDesc {
    /// Section idstr.
    pub name: String,
    /// Instance id.
    pub instance: u32,
    /// Body length: fields plus subsections.
    pub body_len: u64,
    /// Every field, top level first, then subsections.
    pub fields: Vec<FieldLoc>,
}

impl DeviceDesc {
    /// The field named `name` (top level first, then subsections).
    pub fn field(&self, name: &str) -> Option<&FieldLoc> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The parsed description.
#[derive(Clone, Debug)]
pub struct VmDesc {
    /// Target page size.
    pub page_size: u64,
    /// Devices, in the order of the FULL sections.
    pub devices: Vec<DeviceDesc>,
}

/// Parses the JSON; `Err` says what is wrong with it.
pub fn parse(json: &[u8]) -> Result<VmDesc, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("vmdescription is not JSON: {e}"))?;
    let page_size = v["page_size"].as_u64().ok_or("vmdescription has no page_size")?;
    let devices = v["devices"].as_array().ok_or("vmdescription has no devices list")?;
    let mut out = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let name = d["name"].as_str().ok_or(format!("device {i} has no name"))?.to_owned();
        let instance = d["instance_id"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(format!("device {i} '{name}' has no instance_id"))?;
        let mut fields = Vec::new();
        let body_len = walk(d, 0, None, &mut fields).map_err(|e| format!("device {i} '{name}': {e}"))?;
        out.push(DeviceDesc { name, instance, body_len, fields });
    }
    Ok(VmDesc { page_size, devices: out })
}

/// Walks a vmsd description starting at body offset `base`; returns its
/// length.
fn walk(desc: &Value, base: u64, sub: Option<&str>, out: &mut Vec<FieldLoc>) -> Result<u64, String> {
    let mut off = base;
    let mut last: Option<usize> = None;
    for f in desc["fields"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = f["name"].as_str().ok_or("field without a name")?;
        let size = f["size"].as_u64().ok_or(format!("field '{name}' has no size"))?;
        let kind = f["type"].as_str().unwrap_or("unknown");
        let count = f["array_len"].as_u64().unwrap_or(1);
        let len = size.checked_mul(count).ok_or(format!("field '{name}' overflows"))?;
        match last.map(|i| &mut out[i]) {
            // Consecutive same-name entries are one array (QEMU writes
            // non-compressible arrays one element per entry).
            Some(prev)
                if prev.name == name
                    && prev.size == size
                    && prev.kind == kind
                    && prev.offset + prev.size * prev.count == off =>
            {
                prev.count += count;
            }
            _ => {
                out.push(FieldLoc {
                    name: name.to_owned(),
                    subsection: sub.map(str::to_owned),
                    offset: off,
                    size,
                    count,
                    kind: kind.to_owned(),
                });
                last = Some(out.len() - 1);
            }
        }
        off = off.checked_add(len).ok_or("section length overflows")?;
    }
    for s in desc["subsections"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let vmsd = s["vmsd_name"].as_str().ok_or("subsection without vmsd_name")?;
        // 0x05, u8 len, name, be32 version_id.
        off = off.checked_add(2 + vmsd.len() as u64 + 4).ok_or("section length overflows")?;
        off = walk(s, off, Some(vmsd), out)?;
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_offsets() {
        let json = br#"{"page_size":4096,"devices":[
          {"name":"cpu","instance_id":0,"vmsd_name":"cpu","version":12,
           "fields":[{"name":"env.regs","array_len":16,"type":"uint64","size":8},
                     {"name":"env.eip","type":"uint64","size":8},
                     {"name":"dev","index":0,"type":"struct","size":3},
                     {"name":"dev","type":"struct","size":3}],
           "subsections":[{"vmsd_name":"cpu/tsc_khz","version":1,"fields":[{"name":"env.tsc_khz","type":"int64","size":8}]}]}]}"#;
        let d = parse(json).unwrap();
        let cpu = &d.devices[0];
        assert_eq!(cpu.field("env.eip").unwrap().offset, 128);
        assert_eq!(cpu.field("dev").unwrap().count, 2);
        let khz = cpu.field("env.tsc_khz").unwrap();
        assert_eq!(khz.offset, 128 + 8 + 6 + 2 + 11 + 4);
        assert_eq!(khz.subsection.as_deref(), Some("cpu/tsc_khz"));
        assert_eq!(cpu.body_len, khz.offset + 8);
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"page_size":4096,"devices":[{"name":"x"}]}"#).is_err());
    }
}
