//! The QEMU command lines of a restore: recorded in the image, built from
//! what its stream records, and the arguments that map its RAM.

use std::path::Path;

use pbr_format::{DeviceOrigin, Image, keys};

/// Machine arguments built from what a converted QEMU stream records
/// when it has no `restore.cmdline`: `-machine` with the resolved type
/// (`qemu.machine`, TCG), `-m` from `guest.ram_size`, no display, and
/// `-nodefaults` unless the stream holds a VGA device (QEMU's default
/// devices come with one). `None` when either value is missing.
pub fn machine_args(image: &Image) -> Option<Vec<String>> {
    let machine = image.metadata_value(keys::QEMU_MACHINE)?;
    let ram: u64 = image.metadata_value(keys::GUEST_RAM_SIZE)?.parse().ok()?;
    let mut args = vec![
        "-machine".to_string(),
        format!("{machine},accel=tcg"),
        "-m".to_string(),
        format!("{}k", ram / 1024),
        "-display".to_string(),
        "none".to_string(),
    ];
    if !image.devices().any(|d| d.origin == DeviceOrigin::QEMU_SECTION && d.name.contains("vga")) {
        args.push("-nodefaults".to_string());
    }
    Some(args)
}

/// The arguments recorded in the image's `restore.cmdline` (a JSON array
/// of strings, or a line split on white space), if any. The machine type
/// is pinned to the one the stream was saved with (`qemu.machine`,
/// [`pbr_tools::compat::pin_machine`]), so that a later QEMU builds
/// the machine the stream describes: these are arguments to restore the
/// image with. [`recorded_boot_args`] are the command line as recorded, to
/// boot the machine afresh.
pub fn recorded_args(image: &Image) -> Option<Vec<String>> {
    let args = recorded_boot_args(image)?;
    Some(pbr_tools::compat::restore_args(args, image))
}

/// The command line `restore.cmdline` records (a JSON array of strings, or
/// a line split on white space), as recorded.
pub fn recorded_boot_args(image: &Image) -> Option<Vec<String>> {
    let c = image.metadata_value(keys::RESTORE_CMDLINE)?;
    Some(
        serde_json::from_str::<Vec<String>>(c)
            .ok()
            .unwrap_or_else(|| c.split_whitespace().map(str::to_owned).collect()),
    )
}

/// `qemu --version` as (major, minor).
pub fn qemu_version(qemu: &str) -> Option<(u32, u32)> {
    let v = pbr_tools::compat::qemu_full_version(qemu)?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// QEMU arguments that back the `pc.ram` block with the flat image at
/// `path`: a private (copy on write) mapping of a file opened read-only,
/// which the guest may write (`rom=off`), at the block's offset in the
/// file. `None` when the image is not flat or its `pc.ram` is not one
/// range of the file.
pub fn mapped_ram_args(image: &Image, path: &Path) -> Option<Vec<String>> {
    use pbr_tools::flat;
    use pbr_tools::qemu::export::MAIN_RAM;
    if image.metadata_value(flat::LAYOUT_KEY) != Some("flat") {
        return None;
    }
    let regions: Vec<(usize, &pbr_format::Region<'_>)> =
        image.regions().iter().enumerate().filter(|(_, r)| r.name == MAIN_RAM).collect();
    let (first, _) = *regions.first()?;
    let base = flat::region_offset(image, first)?;
    let mut size = 0;
    for &(i, r) in &regions {
        if flat::region_offset(image, i)? != base + r.source_offset {
            return None;
        }
        size = size.max(r.source_offset + r.length);
    }
    Some(ram_backend_args(&std::fs::canonicalize(path).ok()?, base, size))
}

/// QEMU arguments that back the `pc.ram` block with bytes `offset ..
/// offset + size` of the file at `path`: a private (copy on write) mapping
/// of the file opened read-only, which the guest may write (`rom=off`,
/// QEMU 8.2 and later).
pub(crate) fn ram_backend_args(path: &Path, offset: u64, size: u64) -> Vec<String> {
    use pbr_tools::qemu::export::MAIN_RAM;
    let file = path.display().to_string().replace(',', ",,");
    vec![
        "-object".into(),
        format!(
            "memory-backend-file,id={MAIN_RAM},mem-path={file},offset={offset},size={size},share=off,readonly=on,rom=off"
        ),
        "-machine".into(),
        format!("memory-backend={MAIN_RAM}"),
    ]
}

/// The arguments that map `image`'s RAM from its file at `path`, where
/// `qemu` can (8.2 and later; asked only for a flat image).
pub fn mapping_for(qemu: &str, image: &Image, path: &Path) -> Option<Vec<String>> {
    mapped_ram_args(image, path).filter(|_| qemu_version(qemu).is_some_and(|v| v >= (8, 2)))
}
