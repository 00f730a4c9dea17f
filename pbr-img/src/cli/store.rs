//! `pbr-img push`, `pull`, `ls` and `gc`: images in an S3-compatible
//! object store ([`pbr_store`]), their pages in content-addressed chunks
//! shared across images. Credentials and the endpoint come from the
//! environment or the profile file, as other S3 clients take them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use pbr_reboot::fleet::{Candidates, Fetch, Remote};
use pbr_store::cache::Cache;
use pbr_store::{Location, PushOptions, Store};
use serde_json::json;

use super::error::{Error, Result};

/// The arguments of `push`.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The image.
    pub image: PathBuf,
    /// Where it goes: s3://BUCKET[/PREFIX]/NAME.
    #[arg(value_name = "S3_URL")]
    pub to: String,
    /// Pages per chunk, on average (a power of two, 1 to 1024).
    #[arg(long, default_value_t = PushOptions::default().chunk_pages, value_name = "PAGES",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(pbr_store::chunk::MAX_AVG)))]
    pub chunk_pages: u32,
    /// Write again the chunks the store holds from longer ago than this
    /// many seconds (a `gc` cannot take them during this push; keep it
    /// under gc's grace period).
    #[arg(long, default_value_t = PushOptions::default().renew_after.as_secs(), value_name = "SECONDS")]
    pub renew_after: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// The image: s3://BUCKET[/PREFIX]/NAME.
    #[arg(value_name = "S3_URL")]
    pub from: String,
    /// The image file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The local chunk cache (default: $PBR_CACHE, else
    /// ~/.cache/pbr/chunks).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `ls` and `gc`.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The store: s3://BUCKET[/PREFIX].
    #[arg(value_name = "S3_URL")]
    pub store: String,
    /// (`gc`) Keep chunks younger than this many seconds: a push may be
    /// uploading them.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub grace: u64,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `candidates` as local files: those in a store (`s3://`) pulled into
/// `dir` (default: the chunk cache's parent), or mounted, as `fetch` says
/// ([`pbr_reboot::fleet`]), their chunks cached in `dir/chunks`; one that
/// cannot be made local is refused (`refused` hears why) and the others
/// go on.
///
/// # Errors
/// The cache cannot be made.
pub fn local_candidates(
    candidates: &[PathBuf],
    dir: Option<&PathBuf>,
    fetch: Fetch,
    refused: &mut dyn FnMut(&pbr_reboot::Refused),
) -> Result<Candidates> {
    if !candidates.iter().any(|c| c.to_str().is_some_and(pbr_store::is_s3)) {
        return Ok(Candidates::files(candidates));
    }
    let (chunks, root) = places(dir)?;
    Ok(pbr_reboot::fleet::local(candidates, &root.join("images"), &chunks, fetch, refused))
}

/// The chunk cache under `dir` (`dir/chunks`; default: the default cache)
/// and the directory beside it, where pulled images (`images`) and the
/// candidates of VMs kept from a store (`runs`) go.
///
/// # Errors
/// The cache cannot be made.
fn places(dir: Option<&PathBuf>) -> Result<(Cache, PathBuf)> {
    let chunks = cache(dir.map(|d| d.join("chunks")).as_ref())?;
    let root = match dir {
        Some(d) => d.clone(),
        None => chunks.dir().parent().map_or_else(|| chunks.dir().to_path_buf(), Path::to_path_buf),
    };
    Ok((chunks, root))
}

/// Where `run` keeps, on this host, the candidates of the VM whose
/// candidates are `candidates`: that directory itself, or for a store's
/// (`s3://BUCKET[/PREFIX]/VM`) `runs/BUCKET/PREFIX/VM` beside the cache
/// (`dir`, as [`local_candidates`] takes it).
///
/// # Errors
/// The cache cannot be made, the address does not parse.
pub fn run_dir(candidates: &Path, dir: Option<&PathBuf>) -> Result<PathBuf> {
    let Some(url) = candidates.to_str().filter(|s| pbr_store::is_s3(s)) else {
        return Ok(candidates.to_path_buf());
    };
    let (_, root) = places(dir)?;
    let location = Location::parse(url, true)?;
    let mut local = root.join("runs").join(&location.bucket);
    if !location.prefix.is_empty() {
        local = local.join(&location.prefix);
    }
    Ok(local.join(location.name.as_deref().unwrap_or_default()))
}

/// [`run_dir`], and for a store's candidates the store they are pushed to
/// and recovered from (taken as `fetch` says).
///
/// # Errors
/// As [`run_dir`], and an address or credentials that do not serve.
pub fn run_candidates(candidates: &Path, dir: Option<&PathBuf>, fetch: Fetch) -> Result<(PathBuf, Option<Remote>)> {
    let local = run_dir(candidates, dir)?;
    let remote = match candidates.to_str().filter(|s| pbr_store::is_s3(s)) {
        Some(url) => {
            let (chunks, root) = places(dir)?;
            Some(Remote::open(url, chunks, root.join("images"), fetch)?)
        }
        None => None,
    };
    Ok((local, remote))
}

/// The chunk cache `dir`, or the default one.
pub fn cache(dir: Option<&PathBuf>) -> Result<Cache> {
    let dir = match dir {
        Some(d) => d.clone(),
        None => match (std::env::var_os("PBR_CACHE"), std::env::var_os("HOME")) {
            (Some(c), _) => PathBuf::from(c),
            (None, Some(h)) => PathBuf::from(h).join(".cache/pbr/chunks"),
            (None, None) => return Err(Error::Usage("no chunk cache: give --cache DIR or set PBR_CACHE".into())),
        },
    };
    Ok(Cache::open(&dir)?)
}

/// `push`.
pub fn push(a: &PushArgs) -> Result<ExitCode> {
    let store = Store::at(&a.to, true)?;
    let name = store.location.name.as_deref().unwrap_or_default();
    let opts = PushOptions { chunk_pages: a.chunk_pages, renew_after: Duration::from_secs(a.renew_after) };
    let r = pbr_store::push(&a.image, &store, name, opts)?;
    if a.json {
        println!(
            "{}",
            json!({"image": a.to, "data_pages": r.data_pages, "chunks": r.chunks, "uploaded": r.uploaded,
                   "uploaded_bytes": r.uploaded_bytes, "index_bytes": r.index_bytes, "seconds": r.seconds})
        );
    } else {
        println!(
            "pushed {} as {}: {} pages in {} chunks, {} new ({} bytes uploaded) in {:.2} s",
            a.image.display(),
            a.to,
            r.data_pages,
            r.chunks,
            r.uploaded,
            r.uploaded_bytes,
            r.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pull`.
pub fn pull(a: &PullArgs) -> Result<ExitCode> {
    let store = Store::at(&a.from, true)?;
    let name = store.location.name.as_deref().unwrap_or_default();
    let r = pbr_store::pull(&store, name, &a.output, &cache(a.cache.as_ref())?)?;
    if a.json {
        println!(
            "{}",
            json!({"image": a.from, "output": a.output, "data_pages": r.data_pages, "chunks": r.chunks,
                   "cached": r.cached, "downloaded_bytes": r.downloaded_bytes, "seconds": r.seconds})
        );
    } else {
        println!(
            "pulled {} into {}: {} pages from {} chunks ({} cached, {} bytes downloaded) in {:.2} s",
            a.from,
            a.output.display(),
            r.data_pages,
            r.chunks,
            r.cached,
            r.downloaded_bytes,
            r.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `ls`: the images, then what the store holds in all.
pub fn ls(a: &StoreArgs) -> Result<ExitCode> {
    let store = Store::at(&a.store, false)?;
    let location = &store.location;
    let images = pbr_store::list(&store)?;
    let usage = pbr_store::usage(&store)?;
    for i in &images {
        let at = i.modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if a.json {
            println!(
                "{}",
                json!({"image": location.image(&i.name), "index_bytes": i.index_bytes, "pushed_unix_s": at})
            );
        } else {
            println!("{}  index {} bytes", location.image(&i.name), i.index_bytes);
        }
    }
    if a.json {
        println!(
            "{}",
            json!({"store": a.store, "images": images.len(), "chunks": usage.chunks, "chunk_bytes": usage.chunk_bytes,
                   "index_bytes": usage.index_bytes})
        );
    } else {
        println!(
            "{} images, {} chunks: {} bytes in all ({} of indexes)",
            images.len(),
            usage.chunks,
            usage.chunk_bytes + usage.index_bytes,
            usage.index_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gc`.
pub fn gc(a: &StoreArgs) -> Result<ExitCode> {
    let store = Store::at(&a.store, false)?;
    let r = pbr_store::gc(&store, Duration::from_secs(a.grace))?;
    if a.json {
        println!(
            "{}",
            json!({"images": r.images, "chunks": r.chunks, "removed": r.removed, "removed_bytes": r.removed_bytes,
                   "young": r.young})
        );
    } else {
        println!(
            "{} images name {} of {} chunks; removed {} ({} bytes), kept {} younger than {} s",
            r.images,
            r.chunks - r.removed - r.young,
            r.chunks,
            r.removed,
            r.removed_bytes,
            r.young,
            a.grace
        );
    }
    Ok(ExitCode::SUCCESS)
}
