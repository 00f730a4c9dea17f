//! Candidates in a fleet store (`s3://`), made restorable on a host that
//! holds none of them, three ways ([`Fetch`]): pulled whole first; or
//! restored from a shell and a mount of their RAM ([`pbr_store::lazy`]),
//! the RAM streamed in before the guest runs, or fetched page by page as
//! the guest touches it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

/// A store image's RAM, mounted: what a restore maps.
#[derive(Debug)]
struct StoreRam {
    /// The image's store address.
    url: String,
    lazy: Arc<Lazy>,
    fetch: Fetch,
    /// Why the background fill failed, once it did.
    background: Arc<Mutex<Option<String>>>,
    /// Stops a fill; the background one, joined before the mount goes.
    stop: Arc<AtomicBool>,
    filler: Mutex<Option<std::thread::JoinHandle<()>>>,
}

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
                let (lazy, failed, stop) = (self.lazy.clone(), self.background.clone(), self.stop.clone());
                let filler = std::thread::spawn(move || {
                    if let Err(e) = lazy.ram.fill(&stop) {
                        *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    }
                });
                *self.filler.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(filler);
                Ok(())
            }
            Fetch::Stream | Fetch::Pull => self.lazy.ram.fill(&self.stop).map_err(|e| e.to_string()),
        }
    }

    fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for StoreRam {
    fn drop(&mut self) {
        self.cancel();
        if let Some(t) = self.filler.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = t.join();
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

    /// How to name candidate `path` to a user: a shell by its store
    /// address, any other by its path.
    pub fn name(&self, path: &Path) -> String {
        self.mounts.iter().find(|m| m.lazy.shell == path).map_or_else(|| path.display().to_string(), |m| m.url.clone())
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
        match made {
            Ok((path, None)) => out.paths.push(path),
            Ok((path, Some(lazy))) => {
                let background = Arc::new(Mutex::new(None));
                let ram = Arc::new(StoreRam {
                    url: url.to_owned(),
                    lazy,
                    fetch,
                    background,
                    stop: Arc::new(AtomicBool::new(false)),
                    filler: Mutex::new(None),
                });
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
/// `VM-PHASE` of a store (`s3://BUCKET[/PREFIX]/VM`), shared with the
/// other VMs of that store. `run` pushes each candidate it captures there;
/// a host that holds none of the VM's candidates recovers from them.
#[derive(Debug)]
pub struct Remote {
    store: pbr_store::Store,
    /// `s3://BUCKET[/PREFIX]`.
    base: String,
    /// The VM's name: its images are `VM-PHASE`.
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
        let location = pbr_store::Location::parse(url, true)?;
        let store = pbr_store::Store::open(&location, &pbr_store::Config::from_env()?)?;
        let vm = location.name.clone().unwrap_or_default();
        let base = url.trim_end_matches('/').strip_suffix(vm.as_str()).unwrap_or(url).trim_end_matches('/').to_owned();
        Ok(Remote { store, base, vm, cache, images, fetch })
    }

    /// The store address of the VM's candidate of `phase`.
    pub fn url(&self, phase: &str) -> String {
        format!("{}/{}-{phase}", self.base, self.vm)
    }

    /// Pushes `c` as the VM's candidate of its phase.
    ///
    /// # Errors
    /// The image is damaged, the store failed.
    pub fn push(&self, c: &crate::Candidate) -> pbr_store::Result<pbr_store::PushReport> {
        let name = format!("{}-{}", self.vm, c.phase);
        pbr_store::push(&c.path, &self.store, &name, pbr_store::PushOptions::default())
    }

    /// The store addresses of the VM's candidates.
    ///
    /// # Errors
    /// The store failed.
    pub fn candidates(&self) -> pbr_store::Result<Vec<PathBuf>> {
        Ok(self.names()?.into_iter().map(|n| PathBuf::from(format!("{}/{n}", self.base))).collect())
    }

    /// Removes the VM's candidates from the store (their chunks stay, for
    /// `gc`).
    ///
    /// # Errors
    /// The store failed.
    pub fn remove(&self) -> pbr_store::Result<()> {
        let keys: Vec<String> = self.names()?.iter().map(|n| pbr_store::index_key(n)).collect();
        self.store.delete_many(&keys)
    }

    /// The VM's candidates made local, as [`local`] does.
    pub fn local(&self, refused: &mut dyn FnMut(&Refused)) -> pbr_store::Result<Candidates> {
        Ok(local(&self.candidates()?, &self.images, &self.cache, self.fetch, refused))
    }

    /// The names of the VM's images in the store.
    fn names(&self) -> pbr_store::Result<Vec<String>> {
        let mine = format!("{}-", self.vm);
        Ok(pbr_store::list(&self.store)?.into_iter().map(|s| s.name).filter(|n| n.starts_with(&mine)).collect())
    }
}
