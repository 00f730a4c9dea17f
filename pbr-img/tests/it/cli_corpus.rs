//! The CLI never panics: `pbr-img` over the fuzz seeds and their mutants
//! exits 0 or with one clean error line.

use crate::common;

use crate::mutate;

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
}

fn clean(args: &[&str], what: &str) {
    let out = common::pbr_img(args);
    let code = out.status.code();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(code, Some(0..=2)), "{what}: pbr-img {args:?} exited {code:?}: {err}");
    if code != Some(0) {
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(err.starts_with("pbr-img: error: "), "{what}: {err}");
    }
}

#[test]
fn cli_survives_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    let mut rng = mutate::Rng::new(2024);
    let mut runs = 0;
    for target in ["pbr_image", "manifest_select", "qemu_stream", "xl_save", "diff_apply"] {
        let seeds = seeds(target);
        let mut inputs = seeds.clone();
        inputs.extend((0..120).map(|i| mutate::mutant(&seeds[i % seeds.len()], &mut rng)));
        for (i, data) in inputs.iter().enumerate() {
            std::fs::write(&input, data).unwrap();
            let what = format!("{target} input {i}");
            let (i_s, o_s) = (input.to_str().unwrap(), out.to_str().unwrap());
            if let Some(to) = match target {
                "qemu_stream" => Some("qemu"),
                "xl_save" => Some("xl"),
                _ => None,
            } {
                clean(&["convert", "-q", i_s, "-o", o_s], &what);
                if out.exists() {
                    clean(&["inspect", o_s], &what);
                    clean(&["export", "--to", to, o_s, "-o", dir.path().join("back").to_str().unwrap()], &what);
                }
            } else {
                clean(&["inspect", "--json", "--pages", i_s], &what);
                clean(&["verify", i_s], &what);
                clean(&["trim", i_s, "-o", o_s], &what);
            }
            let _ = std::fs::remove_file(&out);
            runs += 1;
        }
    }
    assert!(runs > 500);
}
