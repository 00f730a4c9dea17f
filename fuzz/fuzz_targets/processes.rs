//! cargo-fuzz entry point of `pbr_fuzz::processes`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pbr_fuzz::processes::run(data));

/// Built on stable without libFuzzer: replays the files named on the
/// command line, as `cargo fuzz run` does with artifacts.
#[cfg(not(fuzzing))]
fn main() {
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        pbr_fuzz::processes::run(&data);
    }
}
