//! What an image converted from an `xl save` file holds of Xen's records.

use pbr_format::keys;
use pbr_format::{DeviceBlob, DeviceOrigin, Image};

use super::pages::Shape;
use super::record::{libxc, libxl};

/// What an image converted from an `xl save` file holds of Xen's records,
/// for `inspect`: the guest type and versions from metadata, record counts,
/// and the device model's state (`EMULATOR_CONTEXT`) summarised.
pub fn summary(img: &Image) -> Option<serde_json::Value> {
    if img.metadata_value(keys::SOURCE_FORMAT) != Some("xl") {
        return None;
    }
    let blobs: Vec<DeviceBlob<'_>> = img.devices().collect();
    let count = |o: DeviceOrigin, f: u32| blobs.iter().filter(|b| b.origin == o && b.flags == f).count();
    let shapes: usize = blobs
        .iter()
        .filter(|b| b.origin == DeviceOrigin::XEN_LIBXC && b.flags == libxc::PAGE_DATA)
        .filter_map(|b| Shape::decode(&b.data).ok())
        .map(|s| s.records.len())
        .sum();
    let emulator = blobs
        .iter()
        .rev()
        .find(|b| b.origin == DeviceOrigin::XEN_LIBXL && b.flags == libxl::EMULATOR_CONTEXT)
        .map(|b| {
            let state = b.data.get(8..).unwrap_or_default();
            let kind =
                ["unknown", "qemu-traditional", "qemu-upstream"].get(b.version as usize).copied().unwrap_or("unknown");
            let sections = crate::qemu::device_section_names(state);
            serde_json::json!({
                "emulator": kind, "index": b.instance, "bytes": state.len(),
                "qemu_stream": sections.is_ok(),
                "sections": sections.as_ref().ok(),
                "note": sections.err(),
            })
        });
    Some(serde_json::json!({
        "guest_type": img.metadata_value(keys::XEN_GUEST_TYPE),
        "libxc_version": img.metadata_value(keys::XEN_LIBXC_VERSION),
        "xen_version": img.metadata_value(keys::XEN_VERSION),
        "page_data_records": shapes,
        "hvm_context_entries": blobs.iter().filter(|b| b.origin == DeviceOrigin::XEN_HVM).count(),
        "checkpoints": count(DeviceOrigin::XEN_LIBXC, libxc::CHECKPOINT),
        "emulator_context": emulator,
    }))
}
