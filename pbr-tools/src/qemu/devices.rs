//! QEMU device sections decoded field by field through the stream's own
//! vmdescription, as QEMU's `analyze-migration.py -d state` does: integers
//! as hex strings (QEMU writes them big-endian), everything else (buffers,
//! structs, arrays of them) as hex bytes.

use pbr_format::{DeviceOrigin, Image};
use serde_json::{Value, json};

use super::sections::section_body;
use super::vmdesc::{self, DeviceDesc};

/// The integer types of QEMU's vmstate descriptions.
fn is_integer(kind: &str) -> bool {
    matches!(
        kind,
        "bool"
            | "int8"
            | "int16"
            | "int32"
            | "int64"
            | "uint8"
            | "uint16"
            | "uint32"
            | "uint64"
            | "int32 equal"
            | "uint32 equal"
            | "uint8 equal"
            | "uint16 equal"
            | "int32 le"
            | "uint64 timer"
            | "timer"
    )
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The fields of one section body, each with its value.
fn fields(body: &[u8], desc: &DeviceDesc) -> Vec<Value> {
    desc.fields
        .iter()
        .map(|f| {
            let start = usize::try_from(f.offset).unwrap_or(usize::MAX);
            let len = f.size.checked_mul(f.count).and_then(|l| usize::try_from(l).ok()).unwrap_or(usize::MAX);
            let bytes = start.checked_add(len).and_then(|end| body.get(start..end));
            let value = match bytes {
                None => json!(null),
                Some(b) if is_integer(&f.kind) && (1..=8).contains(&f.size) => {
                    let ints: Vec<Value> = b
                        .chunks(f.size as usize)
                        .map(|c| json!(format!("{:#x}", c.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))))
                        .collect();
                    if f.count == 1 { ints.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(ints) }
                }
                Some(b) => json!(hex_bytes(b)),
            };
            json!({"name": f.name, "subsection": f.subsection, "type": f.kind, "offset": f.offset, "size": f.size,
                   "count": f.count, "value": value})
        })
        .collect()
}

/// Every QEMU device section of `image` with its fields decoded, in stream
/// order: `None` for an image with no vmdescription (not from QEMU, or a
/// machine type that writes none); `Err` names a description that does not
/// parse or does not match the sections.
pub fn decode(image: &Image) -> Option<Result<Vec<Value>, String>> {
    let json = image.devices().find(|b| b.origin == DeviceOrigin::QEMU_STREAM && b.name == "vmdescription")?;
    let desc = match vmdesc::parse(&json.data) {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    let sections: Vec<_> = image.devices().filter(|b| b.origin == DeviceOrigin::QEMU_SECTION).collect();
    let mut out = Vec::with_capacity(sections.len());
    for (i, s) in sections.iter().enumerate() {
        let Some(d) = desc.devices.get(i).filter(|d| d.name == s.name && d.instance == s.instance) else {
            return Some(Err(format!(
                "device section {i} ({}.{}) has no matching vmdescription entry",
                s.name, s.instance
            )));
        };
        let body = section_body(s);
        out.push(json!({
            "name": s.name, "instance": s.instance, "version": s.version, "bytes": body.len(),
            "described_bytes": d.body_len, "fields": fields(body, d),
        }));
    }
    Some(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_arrays_buffers_and_short_bodies() {
        let json = br#"{"page_size":4096,"devices":[{"name":"d","instance_id":0,"fields":[
            {"name":"a","type":"uint16","size":2},
            {"name":"b","type":"uint8","size":1,"array_len":3},
            {"name":"c","type":"buffer","size":4},
            {"name":"e","type":"uint64","size":8}]}]}"#;
        let desc = vmdesc::parse(json).unwrap();
        let f = fields(&[0x12, 0x34, 1, 2, 3, 0xde, 0xad, 0xbe, 0xef, 0, 0], &desc.devices[0]);
        assert_eq!(f[0]["value"], "0x1234");
        assert_eq!(f[1]["value"], json!(["0x1", "0x2", "0x3"]));
        assert_eq!(f[2]["value"], "deadbeef");
        // The body ends before the field: no value, no panic.
        assert!(f[3]["value"].is_null());
    }
}
