//! The end-to-end tests of `pbr-img` and the libraries under it, on real
//! input: one test binary, since each one links the whole tree again.

mod common;
#[path = "../../../pbr-format/tests/it/common/mod.rs"]
mod format_common;
#[path = "../../../fuzz/src/mutate.rs"]
mod mutate;

mod cli;
mod cli_checks;
mod cli_corpus;
mod cli_files;
mod cli_messages;
mod damage;
mod distro;
mod distro_faults;
mod distro_integrity;
mod distro_update;
mod flat;
mod libvirt;
mod libvirt_hostile;
mod pages;
mod phase_reboot;
mod processes;
mod qemu_e2e;
mod qemu_fixtures;
mod qemu_hostile;
mod replay;
mod run;
mod select;
mod select_guest;
mod store;
mod xl;
mod xl_hostile;
