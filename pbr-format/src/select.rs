//! Restartable-point selection: which candidate of a boot is still valid
//! against the files a restore would see now.
//!
//! A candidate is valid when every file its manifest lists still matches:
//! size and mtime equal (the fast path; with `strict` the content is hashed
//! anyway), or, when those differ, the same blake3 of the content. Files
//! flagged cache-only do not disqualify a candidate when they change; their
//! cache pages are listed as stale instead.
//!
//! [`select`] also checks the stored pages of the candidate it is about to
//! choose against their crc32 ([`Image::check_page_crcs`]): a damaged
//! candidate is never chosen, the next older valid one is.
//! [`select_fast`] skips that check, for callers that check every page as
//! they restore it. [`select_files`] does either for candidates named by
//! their files, refusing those that cannot be opened.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::manifest::{CacheRef, FileEntry, check_path};
use crate::phase::Phase;
use crate::read::Image;

/// Why a manifest entry does not match the current files.
///
/// # Example
/// ```
/// use pbr_format::select::{Mismatch, resolve_under};
/// let root = std::path::Path::new("/");
/// assert!(matches!(resolve_under(root, "../etc/passwd"), Err(Mismatch::Escapes(_))));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The file is gone.
    Deleted,
    /// The content differs.
    Changed,
    /// The path leaves the root (an absolute path, `..`, or a symlink
    /// pointing out); it is never followed.
    Escapes(String),
    /// The path cannot be read.
    Unreadable(String),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Deleted => f.write_str("deleted"),
            Mismatch::Changed => f.write_str("changed"),
            Mismatch::Escapes(why) => write!(f, "refused: {why}"),
            Mismatch::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// The verdict on one candidate.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let root = tempfile::tempdir()?;
/// let v = pbr_format::select::judge(0, &image, root.path(), false);
/// assert!(!v.valid, "etc/hostname is missing under the root");
/// println!("{:?}", v.first_mismatch);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Index of the candidate in the input.
    pub index: usize,
    /// Whether the candidate may be restored.
    pub valid: bool,
    /// The first file that disqualified it, and why.
    pub first_mismatch: Option<(String, Mismatch)>,
    /// Files checked.
    pub files_checked: usize,
    /// Files whose content was hashed (size or mtime differed, or strict).
    pub files_hashed: usize,
    /// Cache pages whose file changed: a restore must drop or refresh them.
    pub stale_cache: Vec<CacheRef>,
    /// Whether the stored pages were checked against their crc32 (only
    /// candidates whose files match are, latest first, until one passes).
    pub pages_checked: bool,
    /// The first damaged page, when the check found one: the candidate is
    /// then not valid.
    pub damage: Option<String>,
}

/// The outcome of [`select`].
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let root = tempfile::tempdir()?;
/// let s = pbr_format::select::select(&[&image], root.path(), false);
/// assert_eq!(s.chosen, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// One verdict per candidate, latest phase first.
    pub verdicts: Vec<Verdict>,
    /// Index (in the input) of the latest valid candidate.
    pub chosen: Option<usize>,
}

/// `rel` resolved under `root`, refusing anything that leaves it.
///
/// # Errors
/// `Err(Mismatch::Escapes)` for a hostile path or a symlink out of the root,
/// `Err(Mismatch::Deleted)` when nothing is there.
///
/// # Example
/// ```
/// use pbr_format::select::{Mismatch, resolve_under};
/// let root = tempfile::tempdir()?;
/// assert_eq!(resolve_under(root.path(), "etc/hostname"), Err(Mismatch::Deleted));
/// std::fs::create_dir(root.path().join("etc"))?;
/// std::fs::write(root.path().join("etc/hostname"), "lab\n")?;
/// let p = resolve_under(root.path(), "etc/hostname").unwrap();
/// assert!(p.ends_with("etc/hostname"));
/// assert!(pbr_format::select::resolve_under(root.path(), "/etc/hostname").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn resolve_under(root: &Path, rel: &str) -> Result<PathBuf, Mismatch> {
    check_path(rel).map_err(Mismatch::Escapes)?;
    let root = std::fs::canonicalize(root).map_err(|e| Mismatch::Unreadable(format!("root: {e}")))?;
    let joined = root.join(rel);
    if std::fs::symlink_metadata(&joined).is_err() {
        return Err(Mismatch::Deleted);
    }
    match std::fs::canonicalize(&joined) {
        Ok(real) if real.starts_with(&root) => Ok(real),
        Ok(real) => Err(Mismatch::Escapes(format!("'{rel}' resolves to {}, outside the root", real.display()))),
        Err(_) => Err(Mismatch::Deleted),
    }
}

/// blake3 of a file's content.
///
/// # Errors
/// Any I/O error.
///
/// # Example
/// ```
/// let dir = tempfile::tempdir()?;
/// let f = dir.path().join("hostname");
/// std::fs::write(&f, "lab\n")?;
/// assert_eq!(pbr_format::select::hash_file(&f)?, *blake3::hash(b"lab\n").as_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
    }
}

/// Checks one manifest entry against the files under `root`; returns
/// whether the content was hashed.
fn check_entry(root: &Path, e: &FileEntry<'_>, strict: bool) -> Result<bool, Mismatch> {
    let path = resolve_under(root, &e.path)?;
    let meta = std::fs::metadata(&path).map_err(|err| Mismatch::Unreadable(err.to_string()))?;
    if !meta.is_file() {
        return Err(Mismatch::Changed);
    }
    if meta.len() != e.size {
        return Err(Mismatch::Changed);
    }
    let mtime = meta.mtime() as i128 * 1_000_000_000 + i128::from(meta.mtime_nsec());
    if mtime == i128::from(e.mtime_ns) && !strict {
        return Ok(false);
    }
    let h = hash_file(&path).map_err(|err| Mismatch::Unreadable(err.to_string()))?;
    if h == e.blake3 { Ok(true) } else { Err(Mismatch::Changed) }
}

/// Judges one candidate.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let root = tempfile::tempdir()?;
/// std::fs::create_dir(root.path().join("etc"))?;
/// std::fs::write(root.path().join("etc/hostname"), "other\n")?;
/// let v = pbr_format::select::judge(0, &image, root.path(), true);
/// assert!(!v.valid);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn judge(index: usize, image: &Image, root: &Path, strict: bool) -> Verdict {
    let mut v = Verdict {
        index,
        valid: true,
        first_mismatch: None,
        files_checked: 0,
        files_hashed: 0,
        stale_cache: Vec::new(),
        pages_checked: false,
        damage: None,
    };
    let mut changed = Vec::new();
    for (i, e) in image.manifest().iter().enumerate() {
        v.files_checked += 1;
        match check_entry(root, e, strict) {
            Ok(hashed) => v.files_hashed += usize::from(hashed),
            Err(m) => {
                changed.push(i as u32);
                let escapes = matches!(m, Mismatch::Escapes(_));
                if (!e.cache_only || escapes) && v.valid {
                    v.valid = false;
                    v.first_mismatch = Some((e.path.to_string(), m));
                }
            }
        }
    }
    v.stale_cache = image.cache_refs().iter().filter(|c| changed.contains(&c.file_index)).copied().collect();
    v
}

/// Picks the latest valid candidate among the images of one boot, given in
/// any order: candidates are judged latest phase first (by phase sequence,
/// then time since boot). The latest whose files match has its stored
/// pages checked too; a damaged one is refused ([`Verdict::damage`]) and
/// the next is tried.
///
/// # Example
/// ```no_run
/// use pbr_format::{Image, select::select};
/// let kernel = Image::open("kernel.pbr")?;
/// let daemons = Image::open("daemons.pbr")?;
/// let s = select(&[&kernel, &daemons], "/".as_ref(), false);
/// match s.chosen {
///     Some(i) => println!("restore candidate {i}"),
///     None => println!("no valid candidate: boot from scratch"),
/// }
/// # Ok::<(), pbr_format::Error>(())
/// ```
pub fn select(candidates: &[&Image], root: &Path, strict: bool) -> Selection {
    let mut s = select_fast(candidates, root, strict);
    s.chosen = None;
    for v in s.verdicts.iter_mut().filter(|v| v.valid) {
        v.pages_checked = true;
        match candidates[v.index].check_page_crcs() {
            Ok(_) => {
                s.chosen = Some(v.index);
                break;
            }
            Err(e) => {
                v.valid = false;
                v.damage = Some(e.to_string());
            }
        }
    }
    s
}

/// As [`select`], judging the files only: the stored pages are not read.
/// For a caller that checks every page as it restores it, and falls back
/// to the next candidate when one is damaged.
///
/// # Example
/// ```no_run
/// use pbr_format::{Image, select::select_fast};
/// let daemons = Image::open("daemons.pbr")?;
/// let s = select_fast(&[&daemons], "/".as_ref(), false);
/// assert!(!s.verdicts[0].pages_checked);
/// # Ok::<(), pbr_format::Error>(())
/// ```
pub fn select_fast(candidates: &[&Image], root: &Path, strict: bool) -> Selection {
    let key = |img: &Image| img.phase().map_or((0, 0), |p| (p.sequence, p.since_boot_ns));
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(key(candidates[i])));
    let verdicts: Vec<Verdict> = order.iter().map(|&i| judge(i, candidates[i], root, strict)).collect();
    let chosen = verdicts.iter().find(|v| v.valid).map(|v| v.index);
    Selection { verdicts, chosen }
}

/// One candidate named by its file, as [`select_files`] judged it.
///
/// # Example
/// ```
/// use pbr_format::select::select_files;
/// let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let root = tempfile::tempdir()?;
/// let s = select_files(&[sample.into()], root.path(), false, true);
/// let v = &s.candidates[0];
/// assert_eq!(v.path, std::path::Path::new(sample));
/// assert!(!v.verdict.as_ref().unwrap().valid, "the files it read are not under the root");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileVerdict {
    /// The candidate's file.
    pub path: PathBuf,
    /// Its phase, when it was opened and records one.
    pub phase: Option<Phase<'static>>,
    /// The verdict ([`Verdict::index`] is the file's position in the
    /// input), or why the file could not be opened: such a candidate is
    /// refused, never trusted.
    pub verdict: Result<Verdict, String>,
}

/// The outcome of [`select_files`].
///
/// # Example
/// ```
/// use pbr_format::select::select_files;
/// let root = tempfile::tempdir()?;
/// let s = select_files(&[root.path().join("none.pbr")], root.path(), false, true);
/// assert_eq!((s.candidates.len(), s.chosen), (1, None), "refused, never trusted");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSelection {
    /// The candidates that were opened, latest phase first, then those
    /// that could not be, in the input order.
    pub candidates: Vec<FileVerdict>,
    /// The file of the latest valid candidate.
    pub chosen: Option<PathBuf>,
}

/// [`select`] (or, when `fast`, [`select_fast`]) over the candidate images
/// at `paths`, given in any order. A file that cannot be opened (missing,
/// corrupt, a hostile manifest) is refused with the reason; the others are
/// still judged.
///
/// # Example
/// ```
/// use pbr_format::select::select_files;
/// let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let root = tempfile::tempdir()?;
/// std::fs::create_dir(root.path().join("etc"))?;
/// let paths = [sample.into(), root.path().join("missing.pbr")];
/// let s = select_files(&paths, root.path(), false, false);
/// assert_eq!(s.chosen, None, "etc/hostname is missing under the root");
/// assert_eq!(s.candidates[0].phase.as_ref().map(|p| p.sequence), Some(2));
/// assert!(s.candidates[1].verdict.is_err(), "missing.pbr cannot be opened");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn select_files(paths: &[PathBuf], root: &Path, strict: bool, fast: bool) -> FileSelection {
    let opened: Vec<Result<Image, String>> = paths.iter().map(|p| Image::open(p).map_err(|e| e.to_string())).collect();
    let (index, images): (Vec<usize>, Vec<&Image>) =
        opened.iter().enumerate().filter_map(|(i, r)| r.as_ref().ok().map(|img| (i, img))).unzip();
    let s = if fast { select_fast(&images, root, strict) } else { select(&images, root, strict) };
    let judged = s.verdicts.into_iter().map(|v| {
        let i = index[v.index];
        let phase = images[v.index].phase().cloned();
        FileVerdict { path: paths[i].clone(), phase, verdict: Ok(Verdict { index: i, ..v }) }
    });
    let refused = opened.iter().zip(paths).filter_map(|(r, path)| {
        let why = r.as_ref().err()?;
        Some(FileVerdict { path: path.clone(), phase: None, verdict: Err(why.clone()) })
    });
    FileSelection { candidates: judged.chain(refused).collect(), chosen: s.chosen.map(|i| paths[index[i]].clone()) }
}
