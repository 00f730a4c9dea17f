//! Candidates in a fleet store (`s3://`), made restorable on a host that
//! holds none of them, three ways ([`Fetch`]): pulled whole first; or
//! restored from a shell and a mount of their RAM ([`pbr_store::lazy`]),
//! the RAM streamed in before the guest runs, or fetched page by page as
//! the guest touches it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbr_replay::qemu::ServedRam;
use pbr_store::cache::Cache;
use pbr_store::lazy::Lazy;
use pbr_store::pages::Fetched;

use crate::recovery::Refused;

/// How a store candidate's pages reach the restored guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fetch {
    /// The whole image pulled into a local file, then restored.
    #[default]
    Pull,
    /// QEMU maps the RAM from the store's mount while every chunk is
    /// fetched and read into it; the guest runs once all are in.
    Stream,
    /// QEMU maps the RAM from the store's mount; the guest runs at once
    /// and a page is fetched when it is first touched (the rest is
    /// fetched into the chunk cache meanwhile).
    Lazy,
}

impl Fetch {
    /// The way named `pull`, `stream` or `lazy` (any other name: pull).
    pub fn parse(name: &str) -> Fetch {
        match name {
            "stream" => Fetch::Stream,
            "lazy" => Fetch::Lazy,
            _ => Fetch::Pull,
        }
    }

    /// Its name: `pull`, `stream` or `lazy`.
    pub fn name(self) -> &'static str {
        match self {
            Fetch::Pull => "pull",
            Fetch::Stream => "stream",
            Fetch::Lazy => "lazy",
        }
    }
}

/// A store image's RAM, mounted: what a restore maps. Dropped (its guest
/// gone), the mount stops serving and goes.
#[derive(Debug)]
struct StoreRam {
    /// The image's store address.
    url: String,
    lazy: Arc<Lazy>,
    fetch: Fetch,
    /// Why the background fill failed, once it did.
    background: Arc<Mutex<Option<String>>>,
    /// The background fill (lazy).
    filler: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How long a dropped mount waits for its background fill to end (it ends
/// at its next read): the fill holds the mount, which unmounts as the last
/// holder lets it go.
const FILLER_GRACE: Duration = Duration::from_secs(2);

impl ServedRam for StoreRam {
    fn path(&self) -> &Path {
        self.lazy.ram.path()
    }

    fn size(&self) -> u64 {
        self.lazy.ram.size()
    }

    fn settle(&self) -> Result<(), String> {
        match self.fetch {
            Fetch::Lazy => {
                let mut filler = self.filler.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if filler.is_some() {
                    return Err("this mount's guest was restored before".into());
                }
                let (lazy, failed) = (self.lazy.clone(), self.background.clone());
                *filler = Some(std::thread::spawn(move || {
                    if let Err(e) = lazy.ram.fill() {
                        *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    }
                }));
                Ok(())
            }
            Fetch::Stream | Fetch::Pull => self.lazy.ram.fill().map_err(|e| e.to_string()),
        }
    }

    fn cancel(&self) {
        self.lazy.ram.stop();
    }
}

impl Drop for StoreRam {
    fn drop(&mut self) {
        self.cancel();
        if let Some(t) = self.filler.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let t0 = Instant::now();
            while !t.is_finished() && t0.elapsed() < FILLER_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A recovery's candidates, those of a store made local.
#[derive(Debug, Default)]
pub struct Candidates {
    /// Every candidate that could be made local, as a file: a local one
    /// as it was, a pulled one, or a store image's shell.
    pub paths: Vec<PathBuf>,
    /// The shells, with the mounts that serve their RAM
    /// ([`crate::RecoverOptions::served`]).
    pub served: Vec<(PathBuf, Arc<dyn ServedRam>)>,
    /// The shells' mounts.
    mounts: Vec<Arc<StoreRam>>,
    /// Each store candidate's local file (pulled, or a shell) and address.
    origins: Vec<(PathBuf, String)>,
}

/// What the mount of the store candidate a recovery chose did.
#[derive(Clone, Debug, PartialEq)]
pub struct MountReport {
    /// Its store address.
    pub url: String,
    /// Seconds it took to make the shell and mount the RAM.
    pub prepare_s: f64,
    /// Reads of its RAM file served.
    pub reads: u64,
    /// Its chunks fetched.
    pub fetched: Fetched,
    /// Why a read or the background fetch failed, if one did.
    pub failed: Option<String>,
}

impl Candidates {
    /// Local candidates only, as they are.
    pub fn files(paths: &[PathBuf]) -> Candidates {
        Candidates { paths: paths.to_vec(), ..Default::default() }
    }

    /// How to name candidate `path` to a user: one from a store (pulled,
    /// or a shell) by its store address, any other by its path.
    pub fn name(&self, path: &Path) -> String {
        self.origins.iter().find(|(p, _)| p == path).map_or_else(|| path.display().to_string(), |(_, url)| url.clone())
    }

    /// What the mount of `shell` (one of [`Candidates::paths`]) did so far.
    pub fn mount_report(&self, shell: &Path) -> Option<MountReport> {
        let m = self.mounts.iter().find(|m| m.lazy.shell == shell)?;
        let lazy = &m.lazy;
        let failed = lazy
            .ram
            .failed()
            .or_else(|| m.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone());
        Some(MountReport {
            url: m.url.clone(),
            prepare_s: lazy.seconds,
            reads: lazy.ram.reads(),
            fetched: lazy.ram.fetched(),
            failed,
        })
    }
}

/// `candidates` as local files: those in a store (`s3://`) pulled into
/// `images` or mounted as `fetch` says, their chunks read through
/// `cache`; one that cannot be is refused (`refused` hears why) and the
/// others go on.
pub fn local(
    candidates: &[PathBuf],
    images: &Path,
    cache: &Cache,
    fetch: Fetch,
    refused: &mut dyn FnMut(&Refused),
) -> Candidates {
    let mut out = Candidates::default();
    for c in candidates {
        let Some(url) = c.to_str().filter(|s| pbr_store::is_s3(s)) else {
            out.paths.push(c.clone());
            continue;
        };
        let made = match fetch {
            Fetch::Pull => pbr_store::fetch(url, images, cache).map(|p| (p, None)),
            Fetch::Stream | Fetch::Lazy => pbr_store::lazy::open(url, cache).map(|l| {
                let lazy = Arc::new(l);
                (lazy.shell.clone(), Some(lazy))
            }),
        };
        if let Ok((path, _)) = &made {
            out.origins.push((path.clone(), url.to_owned()));
        }
        match made {
            Ok((path, None)) => out.paths.push(path),
            Ok((path, Some(lazy))) => {
                let background = Arc::new(Mutex::new(None));
                let ram = Arc::new(StoreRam { url: url.to_owned(), lazy, fetch, background, filler: Mutex::new(None) });
                out.served.push((path.clone(), ram.clone()));
                out.mounts.push(ram);
                out.paths.push(path);
            }
            Err(e) => refused(&Refused { path: c.clone(), reason: e.to_string() }),
        }
    }
    out
}

/// Where a kept VM's candidates go besides its host's directory: images
/// `VM-POINT` of a store (`s3://BUCKET[/PREFIX]/VM`), shared with the
/// other VMs of that store, listed in the VM's own object `runs/VM.json`
/// (so that no other image is taken for one of the VM's). `run` pushes
/// each candidate it captures there; a host that holds none of the VM's
/// candidates recovers from them.
#[derive(Debug)]
pub struct Remote {
    store: pbr_store::Store,
    location: pbr_store::Location,
    /// The VM's name.
    vm: String,
    cache: Cache,
    images: PathBuf,
    fetch: Fetch,
}

impl Remote {
    /// The candidates of the VM at `url` (`s3://BUCKET[/PREFIX]/VM`), with
    /// the credentials of the environment; pulled ones go in `images`, the
    /// chunks through `cache`, and a recovery takes them as `fetch` says.
    ///
    /// # Errors
    /// The address or credentials do not serve.
    pub fn open(url: &str, cache: Cache, images: PathBuf, fetch: Fetch) -> pbr_store::Result<Remote> {
        let store = pbr_store::Store::at(url, true)?;
        let location = store.location.clone();
        let vm = location.name.clone().unwrap_or_default();
        Ok(Remote { store, location, vm, cache, images, fetch })
    }

    /// The store address of the VM's candidate of `point`.
    pub fn url(&self, point: &str) -> String {
        self.location.image(&self.image(point))
    }

    /// The image name of the VM's candidate of `point`.
    fn image(&self, point: &str) -> String {
        format!("{}-{point}", self.vm)
    }

    /// The key of the VM's list of images.
    fn list_key(&self) -> String {
        format!("runs/{}.json", self.vm)
    }

    /// Pushes `c` as the VM's candidate of its point, and lists it.
    ///
    /// # Errors
    /// The image is damaged, the store failed.
    pub fn push(&self, c: &crate::Candidate) -> pbr_store::Result<pbr_store::PushReport> {
        let name = self.image(&c.phase);
        let report = pbr_store::push(&c.path, &self.store, &name, pbr_store::PushOptions::default())?;
        let mut names = self.names()?;
        if !names.contains(&name) {
            names.push(name);
            self.store.put(&self.list_key(), serde_json::to_vec(&names).unwrap_or_default())?;
        }
        Ok(report)
    }

    /// The store addresses of the VM's candidates.
    ///
    /// # Errors
    /// The store failed, or the VM's list is damaged.
    pub fn candidates(&self) -> pbr_store::Result<Vec<PathBuf>> {
        Ok(self.names()?.iter().map(|n| PathBuf::from(self.location.image(n))).collect())
    }

    /// Removes the VM's candidates from the store, and its list (their
    /// chunks stay, for `gc`).
    ///
    /// # Errors
    /// The store failed.
    pub fn remove(&self) -> pbr_store::Result<()> {
        let keys: Vec<String> = self.names()?.iter().map(|n| pbr_store::index_key(n)).collect();
        self.store.delete_many(&keys)?;
        self.store.delete_many(&[self.list_key()])
    }

    /// The VM's candidates made local, as [`local`] does.
    ///
    /// # Errors
    /// As [`Remote::candidates`].
    pub fn local(&self, refused: &mut dyn FnMut(&Refused)) -> pbr_store::Result<Candidates> {
        Ok(local(&self.candidates()?, &self.images, &self.cache, self.fetch, refused))
    }

    /// The names of the VM's images, as its list says (none without one).
    fn names(&self) -> pbr_store::Result<Vec<String>> {
        let Some(bytes) = self.store.get(&self.list_key())? else { return Ok(Vec::new()) };
        let names: Vec<String> = serde_json::from_slice(&bytes)
            .map_err(|e| pbr_store::Error::Damaged(format!("{}: {e}", self.list_key())))?;
        // Only the VM's own images, each a valid name.
        let mine = format!("{}-", self.vm);
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(&mine) && pbr_store::Location::parse(&self.location.image(n), true).is_ok())
            .collect())
    }
}
