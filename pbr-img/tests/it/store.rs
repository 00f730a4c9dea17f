//! The fleet store through a real S3-compatible server: SeaweedFS on
//! loopback (`scripts/store`: a master, two volume servers holding every
//! chunk twice, a filer with its S3 gateway). `push` stores an image as
//! chunks; a second image that differs in a few pages uploads only their
//! chunks; `pull` on a "second host" (its own chunk cache, no access to
//! the first one's files) gives back every page; a damaged chunk in the
//! store refuses the pull with one line; a volume server stopped during a
//! pull does not stop it; `gc` removes only the chunks no image names; a
//! push writes again the chunks it finds older than `--renew-after`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pbr_format::{Image, ImageWriter, PageClass, Region, WriterOptions};

use crate::format_common::page;

/// A store started for one test, stopped when dropped.
pub struct Store {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Store {
    /// Starts the store (`scripts/store start`).
    pub fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/store");
        let out = Command::new(&script).arg("start").arg(dir.path()).output().unwrap();
        if !out.status.success() {
            let _ = Command::new(&script).arg("stop").arg(dir.path()).status();
            panic!("scripts/store start: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Store { dir, env }
    }

    /// `pbr-img ARGS` against this store.
    pub fn pbr_img(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pbr-img")).args(args).envs(self.env.iter().cloned()).output().unwrap()
    }

    /// As [`Store::pbr_img`], which must succeed: its stdout as JSON.
    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.pbr_img(args);
        assert!(out.status.success(), "pbr-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// As [`Store::ok`], volume server 1 stopped `after_ms` into the run.
    pub fn ok_with_volume_stopped(&self, args: &[&str], after_ms: u64) -> serde_json::Value {
        let child = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
            .args(args)
            .envs(self.env.iter().cloned())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        self.stop_volume(1);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "pbr-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Stops volume server `n` (1 or 2).
    pub fn stop_volume(&self, n: u32) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/store");
        let ok = Command::new(script).arg("stop-node").arg(self.dir.path()).arg(format!("volume{n}")).status();
        assert!(ok.unwrap().success());
    }

    /// The store `s3://fleet/t`, as the library opens it.
    pub fn client(&self) -> pbr_store::Store {
        let endpoint = self.env.iter().find(|(k, _)| k == "AWS_ENDPOINT_URL").unwrap().1.clone();
        pbr_store::Store::open(
            &pbr_store::Location::parse("s3://fleet/t", false).unwrap(),
            &pbr_store::Config::new(Some(endpoint), "us-east-1", "pbr-test", "pbr-test-secret"),
        )
        .unwrap()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/store");
        let _ = Command::new(script).arg("stop").arg(self.dir.path()).status();
    }
}

/// An image of `pages` pages whose content comes from `seed(gfn)`, every
/// tenth page zero.
fn write(path: &Path, pages: u64, seed: impl Fn(u64) -> u64) {
    let mut w = ImageWriter::create(path, &[Region::ram("pc.ram", 0, pages * 4096)], WriterOptions::default()).unwrap();
    for gfn in 0..pages {
        if gfn % 10 == 9 {
            continue;
        }
        w.write_page(gfn, &page(seed(gfn)), if gfn % 2 == 0 { PageClass::Kernel } else { PageClass::User }).unwrap();
    }
    w.set_metadata("vm", "test").unwrap();
    w.finish().unwrap();
}

/// Whether two images hold the same pages, classes and metadata.
fn same(a: &Path, b: &Path) -> bool {
    let (a, b) = (Image::open(a).unwrap(), Image::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    let pages = a.regions().iter().map(|r| r.length / 4096).sum::<u64>();
    a.metadata().eq(b.metadata())
        && (0..pages).all(|gfn| {
            a.read_page(gfn, &mut x).unwrap() == b.read_page(gfn, &mut y).unwrap()
                && a.extent_of(gfn).unwrap().class == b.extent_of(gfn).unwrap().class
        })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn images_share_chunks_come_back_whole_and_damage_is_refused() {
    let store = Store::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.pbr"), dir.path().join("b.pbr"));
    write(&a, 2048, |gfn| gfn);
    // B: A with 5 pages changed.
    write(&b, 2048, |gfn| if [7, 300, 301, 1500, 2000].contains(&gfn) { gfn + 1_000_000 } else { gfn });

    let pa = store.ok(&["push", s(&a), "s3://fleet/t/vm-a", "--json"]);
    assert_eq!(pa["uploaded"], pa["chunks"], "a first image uploads every chunk: {pa}");
    // Pushed again: its chunks are there, and fresh; renewed when asked.
    let again = store.ok(&["push", s(&a), "s3://fleet/t/vm-a", "--json"]);
    assert_eq!(again["uploaded"], 0, "{again}");
    let renewed = store.ok(&["push", s(&a), "s3://fleet/t/vm-a", "--renew-after", "0", "--json"]);
    assert_eq!(renewed["uploaded"], pa["chunks"], "{renewed}");
    let pb = store.ok(&["push", s(&b), "s3://fleet/t/vm-b", "--json"]);
    let (chunks, uploaded) = (pb["chunks"].as_u64().unwrap(), pb["uploaded"].as_u64().unwrap());
    assert!(uploaded <= 10 && uploaded * 10 < chunks, "only the changed pages' chunks: {pb}");

    let listed = store.pbr_img(&["ls", "s3://fleet/t"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("s3://fleet/t/vm-a") && listed.contains("s3://fleet/t/vm-b"), "{listed}");

    // A second host: its own cache, nothing of the first one's.
    let host2 = tempfile::tempdir().unwrap();
    let cache = host2.path().join("cache");
    let got = host2.path().join("b.pbr");
    let pulled = store.ok(&["pull", "s3://fleet/t/vm-b", "-o", s(&got), "--cache", s(&cache), "--json"]);
    assert_eq!(pulled["cached"], 0, "{pulled}");
    assert!(same(&b, &got), "the pulled image holds the pushed one's pages");
    let again =
        store.ok(&["pull", "s3://fleet/t/vm-a", "-o", s(&host2.path().join("a.pbr")), "--cache", s(&cache), "--json"]);
    assert!(again["cached"].as_u64().unwrap() * 2 > again["chunks"].as_u64().unwrap(), "A's chunks are B's: {again}");
    let verified = Command::new(env!("CARGO_BIN_EXE_pbr-img")).args(["verify", s(&got)]).output().unwrap();
    assert_eq!(verified.status.code(), Some(0), "{}", String::from_utf8_lossy(&verified.stdout));

    // A damaged chunk in the store: refused in one line, nothing written.
    let s3 = store.client();
    let index = pbr_store::index(&s3, "vm-b").unwrap();
    s3.put(&pbr_store::chunk::key(&index.chunks[0].hash), b"not a chunk".to_vec()).unwrap();
    let host3 = tempfile::tempdir().unwrap();
    let out = store.pbr_img(&[
        "pull",
        "s3://fleet/t/vm-b",
        "-o",
        s(&host3.path().join("b.pbr")),
        "--cache",
        s(&host3.path().join("cache")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("damaged: chunk "), "{err}");
    assert!(!host3.path().join("b.pbr").exists());

    // gc: every chunk is named by an image; none is removed.
    let gc = store.ok(&["gc", "s3://fleet/t", "--grace", "0", "--json"]);
    assert_eq!((gc["images"].as_u64(), gc["removed"].as_u64()), (Some(2), Some(0)), "{gc}");
}

#[test]
fn a_pull_survives_a_volume_server_stopped_during_it() {
    let store = Store::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.pbr");
    write(&a, 16384, |gfn| gfn * 7);
    store.ok(&["push", s(&a), "s3://fleet/t/big", "--json"]);
    let got: PathBuf = dir.path().join("got.pbr");
    let cache = dir.path().join("cache");
    store.ok_with_volume_stopped(&["pull", "s3://fleet/t/big", "-o", s(&got), "--cache", s(&cache), "--json"], 150);
    assert!(same(&a, &got));
}

/// The Debian guest's candidates, pushed by the host that captured them,
/// are recovered by `pbr-img recover s3://...` on a second host: its own
/// directory and chunk cache, the first host's candidate files gone (the
/// disks are the VM's, shared as they would be on a SAN). The latest
/// candidate is chosen and the guest's agent says ready.
#[test]
fn the_distribution_guest_is_recovered_from_the_store_on_a_second_host() {
    let _one = crate::common::distro::ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let store = Store::start();
    // QEMU 10: a stream or lazy restore maps the RAM (8.2 and later).
    let (qemu, firmware) = crate::common::vm::qemu10();
    let lab = crate::common::distro::Lab::with_qemu(512, &qemu, &firmware);
    let cmd = pbr_reboot::machine::UserCommand::parse(&lab.argv).unwrap();
    let r = pbr_reboot::points::capture_points(&cmd, &lab.out(), &Default::default(), &mut |_| {}).unwrap();
    let names: Vec<&str> = r.candidates.iter().map(|c| c.phase.as_str()).collect();
    assert_eq!(names, ["kernel", "daemons"]);
    for c in &r.candidates {
        store.ok(&["push", s(&c.path), &format!("s3://fleet/t/distro-{}", c.phase), "--json"]);
    }
    std::fs::remove_dir_all(lab.out()).unwrap();
    let (kernel, daemons) = ("s3://fleet/t/distro-kernel", "s3://fleet/t/distro-daemons");

    // Each way on a host of its own, holding nothing.
    let recover = |fetch: &str| {
        let host = tempfile::tempdir().unwrap();
        let v = store.ok(&["recover", "--json", "--fetch", fetch, "--cache", s(host.path()), kernel, daemons]);
        (v, host)
    };
    let (v, host) = recover("pull");
    assert_eq!(v["chosen"].as_str(), Some(daemons), "named by its address: {v:#}");
    assert!(host.path().join("images/fleet/t/distro-daemons.pbr").is_file(), "pulled: {v:#}");
    assert!(v["refused"].as_array().is_some_and(Vec::is_empty), "{v:#}");
    assert_eq!(v["store"], serde_json::Value::Null, "{v:#}");

    // Streamed: QEMU maps the RAM from the store's mount, every chunk read
    // into it before the guest runs; nothing is pulled to a file.
    let (v, host) = recover("stream");
    assert_eq!((v["chosen"].as_str(), v["ram"].as_str()), (Some(daemons), Some("mapped")), "{v:#}");
    assert_eq!(v["store"]["fetch"], "stream", "{v:#}");
    assert!(v["store"]["chunks_from_store"].as_u64().unwrap() > 100, "{v:#}");
    assert_eq!(v["store"]["failed"], serde_json::Value::Null, "{v:#}");
    assert!(!host.path().join("images").exists(), "nothing pulled: {v:#}");

    // A chunk only `daemons` has, damaged in the store: before its guest
    // runs, the streamed restore refuses it, and `kernel` is restored.
    let s3 = store.client();
    let (k, d) = (pbr_store::index(&s3, "distro-kernel").unwrap(), pbr_store::index(&s3, "distro-daemons").unwrap());
    let own = d.chunks.iter().find(|c| !k.chunks.contains(c)).expect("a chunk only daemons has");
    let key = pbr_store::chunk::key(&own.hash);
    let object = s3.get(&key).unwrap().unwrap();
    s3.put(&key, b"not a chunk".to_vec()).unwrap();
    let (v, _host) = recover("stream");
    assert_eq!(v["chosen"].as_str(), Some(kernel), "{v:#}");
    let refused = v["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{v:#}");
    assert_eq!(refused[0]["candidate"], daemons, "{v:#}");
    let why = refused[0]["reason"].as_str().unwrap();
    assert!(why.contains("its RAM from the store") && why.contains("damaged: chunk"), "{why}");
    s3.put(&key, object).unwrap();

    // Lazy, with a volume server stopped while the guest runs on pages
    // fetched as it touches them: the other one serves.
    let host = tempfile::tempdir().unwrap();
    let v = store.ok_with_volume_stopped(
        &["recover", "--json", "--fetch", "lazy", "--cache", s(host.path()), kernel, daemons],
        300,
    );
    assert_eq!((v["chosen"].as_str(), v["ram"].as_str()), (Some(daemons), Some("mapped")), "{v:#}");
    assert_eq!(v["store"]["fetch"], "lazy", "{v:#}");
    assert!(v["store"]["reads"].as_u64().unwrap() > 0, "{v:#}");
}

/// `run` with its candidates in the store: on host A it pushes each
/// candidate as it is captured; host A dies (its QEMU stopped at once).
/// Host B, its own cache and no candidate of its own, starts the same VM
/// from the store's latest candidate instead of booting it: the service
/// answers, with the file written before host A died.
#[test]
fn run_keeps_its_candidates_in_the_store_and_another_host_starts_from_them() {
    use crate::run::{Run, events, wait_for};
    let _one = crate::common::distro::ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let store = Store::start();
    let lab = crate::common::distro::Lab::new(512);
    let start = |host: &Path| {
        let log = host.join("run.jsonl");
        // Where `Run::stop` reads it.
        let err = std::fs::File::create(lab.dir.path().join("run.err")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
            .args(["run", "--candidates", "s3://fleet/t/vm1", "--cache", s(host), "--log", s(&log), "--"])
            .args(&lab.argv)
            .envs(store.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        (Run(child), log)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut run, log) = start(a.path());
    wait_for(&log, "pushed", 2, std::time::Duration::from_secs(900), &mut run.0);
    let pushed: Vec<String> = events(&log)
        .iter()
        .filter(|e| e["event"] == "pushed")
        .map(|e| e["image"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pushed, ["s3://fleet/t/vm1-kernel", "s3://fleet/t/vm1-daemons"]);
    let (_, status) = lab.shell("date > /srv/data/on-host-a && sync");
    assert_eq!(status, 0);
    // Host A dies: `run` stops its QEMU at once (a second SIGTERM).
    drop(run);

    let (mut run, log) = start(b.path());
    wait_for(&log, "recovered", 1, std::time::Duration::from_secs(300), &mut run.0);
    let all = events(&log);
    assert!(all.iter().all(|e| e["event"] != "booting"), "started from the store, not booted: {all:#?}");
    let recovered = all.iter().find(|e| e["event"] == "recovered").unwrap();
    assert_eq!(recovered["chosen"], "s3://fleet/t/vm1-daemons", "named by its address: {all:#?}");
    assert_eq!(lab.get().1, "served from the data disk\n");
    let (_, status) = lab.shell("test -s /srv/data/on-host-a");
    assert_eq!(status, 0, "the file written on host A is there");
    run.stop(&lab, &log);
    lab.fsck_clean();
}
