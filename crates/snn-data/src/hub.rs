//! Datasets and files from the Hugging Face Hub, through a local cache that works offline.
//!
//! Each image dataset is taken from a well-known public dataset repository in the form that repository
//! publishes: Parquet shards `<config>/<split>-NNNNN-of-NNNNN.parquet` whose rows hold the image as PNG
//! bytes and an integer label (see [`HubDataset`]). Files are stored in the Hub's standard cache layout
//! (`<cache>/datasets--owner--name/{blobs,snapshots,refs}`, shared with other Hub clients), under
//! `$HF_HOME/hub` or an explicit folder.
//!
//! Integrity: the Hub names every large (LFS) file by the SHA-256 of its content, and the cache stores the
//! file under that name. [`fetch_file`] hashes each download and compares it with that name; a mismatch
//! deletes the bad copy and fails. [`verify_dataset`] re-checks a cached copy at any time.
//!
//! With `HF_HUB_OFFLINE=1` (or [`HubOptions::offline`]) nothing touches the network: files come from the
//! cache or the call fails, naming the command that fetches them.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use parquet::column::page::Page;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use sha2::{Digest, Sha256};

use crate::mnist::Split;
use crate::{Dataset, Error, ImageDataset, Result};

/// Where an image dataset lives on the Hub and how its Parquet rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubDataset {
    /// The dataset.
    pub dataset: Dataset,
    /// Repository id (`owner/name`).
    pub repo: &'static str,
    /// Folder of the Parquet shards within the repository (the dataset's configuration).
    pub config: &'static str,
    /// Column holding the image (a struct with a `bytes` field, or plain bytes).
    pub image_column: &'static str,
    /// Column holding the integer label.
    pub label_column: &'static str,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// Published sizes of the train and test splits.
    pub sizes: [usize; 2],
}

/// The Hub sources of the image datasets.
pub const HUB_DATASETS: [HubDataset; 4] = [
    HubDataset {
        dataset: Dataset::Mnist,
        repo: "ylecun/mnist",
        config: "mnist",
        image_column: "image",
        label_column: "label",
        shape: [1, 28, 28],
        classes: 10,
        sizes: [60_000, 10_000],
    },
    HubDataset {
        dataset: Dataset::FashionMnist,
        repo: "zalando-datasets/fashion_mnist",
        config: "fashion_mnist",
        image_column: "image",
        label_column: "label",
        shape: [1, 28, 28],
        classes: 10,
        sizes: [60_000, 10_000],
    },
    HubDataset {
        dataset: Dataset::Cifar10,
        repo: "uoft-cs/cifar10",
        config: "plain_text",
        image_column: "img",
        label_column: "label",
        shape: [3, 32, 32],
        classes: 10,
        sizes: [50_000, 10_000],
    },
    HubDataset {
        dataset: Dataset::Svhn,
        repo: "ufldl-stanford/svhn",
        config: "cropped_digits",
        image_column: "image",
        label_column: "label",
        shape: [3, 32, 32],
        classes: 10,
        sizes: [73_257, 26_032],
    },
];

impl HubDataset {
    /// The Hub source of `dataset`, if it has one.
    pub fn of(dataset: Dataset) -> Result<&'static HubDataset> {
        HUB_DATASETS.iter().find(|h| h.dataset == dataset).ok_or_else(|| {
            Error::Mismatch(format!(
                "dataset '{}' has no Hub source (available: {})",
                dataset.name(),
                HUB_DATASETS.iter().map(|h| h.dataset.name()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    fn repo_handle(&self) -> Repo {
        Repo::new(self.repo.to_string(), RepoType::Dataset)
    }

    /// Whether `file` (a path in the repository) is a shard of `split`.
    fn is_shard(&self, file: &str, split: Split) -> bool {
        let Some(name) = file.strip_prefix(self.config).and_then(|f| f.strip_prefix('/')) else { return false };
        let stem = match split {
            Split::Train => "train-",
            Split::Test => "test-",
        };
        name.starts_with(stem) && name.ends_with(".parquet") && !name.contains('/')
    }
}

/// How to reach the Hub and where its cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The cache folder (the Hub cache layout: `datasets--owner--name/...`).
    pub cache_dir: PathBuf,
    /// The Hub's base URL; `None` for the public Hub.
    pub endpoint: Option<String>,
    /// Never use the network.
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    /// Options from the environment: cache `$HF_HOME/hub` (default `~/.cache/huggingface/hub`), endpoint
    /// `$HF_ENDPOINT`, offline when `$HF_HUB_OFFLINE` is `1`/`true`/`yes`.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            cache_dir: Cache::from_env().path().clone(),
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            offline,
            progress: false,
        }
    }

    fn api(&self) -> Result<hf_hub::api::sync::Api> {
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone())).with_progress(self.progress);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        builder.build().map_err(|e| hub_error("the Hub client", &e))
    }

    fn offline_error(&self, what: &str, fetch_hint: &str) -> Error {
        let mode = if self.offline { " and offline mode is on (HF_HUB_OFFLINE)" } else { "" };
        Error::Hub {
            what: what.to_string(),
            msg: format!("not in the cache at {}{mode}; fetch it with `{fetch_hint}`", self.cache_dir.display()),
        }
    }
}

fn hub_error(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Hub { what: what.to_string(), msg: e.to_string() }
}

/// A file of a Hub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// Repository id (`owner/name`).
    pub repo: String,
    /// True for a dataset repository, false for a model repository.
    pub is_dataset: bool,
    /// Path of the file within the repository.
    pub file: String,
}

impl HubFile {
    /// Parses `hf://owner/repo/path/to/file` (a model repository) or `hf://datasets/owner/repo/path`.
    pub fn parse_url(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::Mismatch(format!("'{url}' is not a Hub file address ({why})"));
        let rest = url.strip_prefix("hf://").ok_or_else(|| bad("expected hf://owner/repo/file"))?;
        let (is_dataset, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(owner), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected hf://owner/repo/file"));
        };
        if owner.is_empty() || name.is_empty() || file.is_empty() || file.split('/').any(|p| p.is_empty() || p == "..")
        {
            return Err(bad("empty or '..' path component"));
        }
        Ok(Self { repo: format!("{owner}/{name}"), is_dataset, file: file.to_string() })
    }

    fn repo_handle(&self) -> Repo {
        let kind = if self.is_dataset { RepoType::Dataset } else { RepoType::Model };
        Repo::new(self.repo.clone(), kind)
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.repo, self.file)
    }
}

/// The local path of a Hub file: from the cache when present, else downloaded (unless offline) and checked
/// against the content hash the Hub reports.
pub fn fetch_file(file: &HubFile, opts: &HubOptions) -> Result<PathBuf> {
    if let Some(path) = Cache::new(opts.cache_dir.clone()).repo(file.repo_handle()).get(&file.file) {
        return Ok(path);
    }
    if opts.offline {
        return Err(opts.offline_error(&file.describe(), "unset HF_HUB_OFFLINE and run again"));
    }
    let path =
        opts.api()?.repo(file.repo_handle()).download(&file.file).map_err(|e| hub_error(&file.describe(), &e))?;
    if let Err(e) = verify_cached_file(&path) {
        discard(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a cached file and the blob it points to, so that the next fetch downloads it again.
fn discard(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(pointer);
}

/// Re-hashes a cached Hub file and compares the SHA-256 with the content hash the cache names its blob by.
/// Returns the hash.
pub fn verify_cached_file(path: &Path) -> Result<String> {
    let blob = std::fs::canonicalize(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let expected = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: "the Hub reported no SHA-256 for this file (its blob is not named by a content hash)".into(),
        });
    }
    let actual = sha256_file(&blob)?;
    if actual != expected {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("checksum mismatch: content SHA-256 {actual}, the Hub announced {expected}"),
        });
    }
    Ok(actual)
}

/// SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::hex(&hasher.finalize()))
}

/// Downloads every Parquet shard of both splits of a dataset, each checked against its content hash, unless
/// both splits are already complete in the cache (then no request is made). Returns the local paths, train
/// shards first.
pub fn fetch_dataset(dataset: Dataset, opts: &HubOptions) -> Result<Vec<PathBuf>> {
    let hub = HubDataset::of(dataset)?;
    match cached_dataset(hub, opts) {
        Ok(all) => return Ok(all),
        Err(e) if opts.offline => return Err(e),
        Err(_) => {}
    }
    let info = opts.api()?.repo(hub.repo_handle()).info().map_err(|e| hub_error(hub.repo, &e))?;
    let mut paths = Vec::new();
    for split in [Split::Train, Split::Test] {
        let mut shards: Vec<&str> =
            info.siblings.iter().map(|s| s.rfilename.as_str()).filter(|f| hub.is_shard(f, split)).collect();
        shards.sort_unstable();
        if shards.is_empty() {
            return Err(Error::Hub {
                what: hub.repo.to_string(),
                msg: format!("the repository lists no {}/{}-*.parquet shards", hub.config, split_stem(split)),
            });
        }
        for shard in shards {
            let file = HubFile { repo: hub.repo.to_string(), is_dataset: true, file: shard.to_string() };
            paths.push(fetch_file(&file, opts)?);
        }
    }
    Ok(paths)
}

fn split_stem(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// The cached shards of a split, complete (`-00000-of-0000N` through `N-1`) or an error.
fn cached_shards(hub: &HubDataset, split: Split, opts: &HubOptions) -> Result<Vec<PathBuf>> {
    let fetch_hint = format!("snn-cli data fetch {}", hub.dataset.name());
    let missing = || opts.offline_error(&format!("{} ({} split)", hub.repo, split_stem(split)), &fetch_hint);
    let repo_dir = opts.cache_dir.join(hub.repo_handle().folder_name());
    let commit = std::fs::read_to_string(repo_dir.join("refs").join("main")).map_err(|_| missing())?;
    let folder = repo_dir.join("snapshots").join(commit.trim()).join(hub.config);
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map_err(|_| missing())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| hub.is_shard(&format!("{}/{n}", hub.config), split))
        })
        .collect();
    shards.sort();
    let total = shards.first().and_then(|p| shard_total(p)).ok_or_else(missing)?;
    if shards.len() != total || shards.iter().any(|p| shard_total(p) != Some(total)) {
        return Err(Error::Hub {
            what: format!("{} ({} split)", hub.repo, split_stem(split)),
            msg: format!(
                "the cache holds {} of {total} shards in {}; run `{fetch_hint}` again",
                shards.len(),
                folder.display()
            ),
        });
    }
    Ok(shards)
}

/// `N` of a shard named `<split>-XXXXX-of-N.parquet`.
fn shard_total(path: &Path) -> Option<usize> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit_once("-of-")?.1.parse().ok()
}

/// Loads a split of a dataset from the Hub cache (never the network): every shard decoded, in shard order.
pub fn load_cached(dataset: Dataset, split: Split, opts: &HubOptions) -> Result<ImageDataset> {
    let hub = HubDataset::of(dataset)?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for shard in cached_shards(hub, split, opts)? {
        read_parquet_images(&shard, hub, &mut images, &mut labels)?;
    }
    ImageDataset::new(images, labels, hub.shape, hub.classes)
}

/// Whether both splits of a dataset are complete in the cache.
pub fn is_cached(dataset: Dataset, opts: &HubOptions) -> bool {
    HubDataset::of(dataset).is_ok_and(|hub| cached_dataset(hub, opts).is_ok())
}

/// The cached shards of both splits, train first, or the error naming the first incomplete split.
fn cached_dataset(hub: &HubDataset, opts: &HubOptions) -> Result<Vec<PathBuf>> {
    let mut all = cached_shards(hub, Split::Train, opts)?;
    all.extend(cached_shards(hub, Split::Test, opts)?);
    Ok(all)
}

/// Result of re-checking a cached dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedShard {
    /// The cached file.
    pub path: PathBuf,
    /// Its SHA-256 (equal to the Hub's content hash).
    pub sha256: String,
    /// Rows decoded from it.
    pub rows: usize,
}

/// Re-hashes every cached shard of a dataset and decodes it fully; fails on the first mismatch or
/// undecodable row.
pub fn verify_dataset(dataset: Dataset, opts: &HubOptions) -> Result<Vec<VerifiedShard>> {
    let hub = HubDataset::of(dataset)?;
    cached_dataset(hub, opts)?
        .into_iter()
        .map(|path| {
            let sha256 = verify_cached_file(&path)?;
            let (mut images, mut labels) = (Vec::new(), Vec::new());
            read_parquet_images(&path, hub, &mut images, &mut labels)?;
            Ok(VerifiedShard { path, sha256, rows: labels.len() })
        })
        .collect()
}

/// Decodes the rows of one Parquet shard: each image (PNG or JPEG bytes) to `[C, H, W]` bytes appended to
/// `images`, each label to `labels`.
pub fn read_parquet_images(path: &Path, hub: &HubDataset, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    decode_parquet_images(file, path, hub, images, labels)
}

/// Like [`read_parquet_images`], from the bytes of a shard; `path` names it in errors.
pub fn parse_parquet_images(
    bytes: &[u8],
    path: &Path,
    hub: &HubDataset,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    decode_parquet_images(bytes::Bytes::copy_from_slice(bytes), path, hub, images, labels)
}

/// Decodes a shard, turning a panic inside the Parquet crate (it still panics on some malformed pages
/// instead of returning an error) into a format error naming the file.
fn decode_parquet_images<R: ChunkReader + 'static>(
    source: R,
    path: &Path,
    hub: &HubDataset,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let (rows_before, bytes_before) = (labels.len(), images.len());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_parquet_unguarded(source, path, hub, images, labels)
    }));
    outcome.unwrap_or_else(|panic| {
        labels.truncate(rows_before);
        images.truncate(bytes_before);
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(Error::Format { path: path.to_path_buf(), msg: format!("malformed Parquet data ({what})") })
    })
}

/// The Parquet reader sizes a column's dictionary by the count its page header declares before decoding it
/// (a 1 kB file can ask for tens of gigabytes): check the first page of every column chunk and refuse a
/// dictionary that declares more values than its bytes can hold (a value takes at least one bit).
fn check_dictionary_sizes<R: ChunkReader + 'static>(reader: &SerializedFileReader<R>, path: &Path) -> Result<()> {
    let format = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let unreadable = |e: parquet::errors::ParquetError| format(format!("unreadable page: {e}"));
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(unreadable)?;
        for c in 0..group.num_columns() {
            let mut pages = group.get_column_page_reader(c).map_err(unreadable)?;
            if let Some(Page::DictionaryPage { buf, num_values, .. }) = pages.get_next_page().map_err(unreadable)? {
                if u64::from(num_values) > 8 * buf.len() as u64 + 8 {
                    return Err(format(format!(
                        "row group {g}, column {c}: a dictionary page of {} bytes declares {num_values} values",
                        buf.len()
                    )));
                }
            }
        }
    }
    Ok(())
}

fn decode_parquet_unguarded<R: ChunkReader + 'static>(
    source: R,
    path: &Path,
    hub: &HubDataset,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let format = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let file_len = source.len();
    let reader = SerializedFileReader::new(source).map_err(|e| format(format!("not a readable Parquet file: {e}")))?;
    // The Parquet reader trusts the footer's column-chunk ranges (it panics on negative ones): check every
    // range against the file first.
    for (g, group) in reader.metadata().row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk.dictionary_page_offset().unwrap_or(chunk.data_page_offset());
            let size = chunk.compressed_size();
            if start < 0 || size < 0 || (start as u64).saturating_add(size as u64) > file_len {
                return Err(format(format!(
                    "row group {g}, column {c}: byte range {start}+{size} lies outside the {file_len}-byte file"
                )));
            }
        }
    }
    check_dictionary_sizes(&reader, path)?;
    let rows = reader.get_row_iter(None).map_err(|e| format(format!("cannot iterate rows: {e}")))?;
    let [c, h, w] = hub.shape;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| format(format!("row {i}: {e}")))?;
        let bytes = column(&row, hub.image_column)
            .and_then(image_bytes)
            .ok_or_else(|| format(format!("row {i}: no image bytes in column '{}'", hub.image_column)))?;
        let label = column(&row, hub.label_column)
            .and_then(integer)
            .ok_or_else(|| format(format!("row {i}: no integer label in column '{}'", hub.label_column)))?;
        if !(0..hub.classes as i64).contains(&label) {
            return Err(format(format!("row {i}: label {label} is not below {} classes", hub.classes)));
        }
        // Check the size in the image header before decoding, so a header claiming a huge image costs nothing.
        let undecodable = |e: image::ImageError| format(format!("row {i}: undecodable image: {e}"));
        let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format();
        let (width, height) =
            reader().map_err(|e| format(format!("row {i}: {e}")))?.into_dimensions().map_err(undecodable)?;
        if (height as usize, width as usize) != (h, w) {
            return Err(format(format!("row {i}: image is {width}×{height}, expected {h}×{w}")));
        }
        let img = reader().map_err(|e| format(format!("row {i}: {e}")))?.decode().map_err(undecodable)?;
        if c == 1 {
            images.extend_from_slice(img.to_luma8().as_raw());
        } else {
            let rgb = img.to_rgb8();
            let raw = rgb.as_raw();
            for ch in 0..3 {
                images.extend(raw.iter().skip(ch).step_by(3));
            }
        }
        labels.push(label as u8);
    }
    Ok(())
}

fn column<'a>(row: &'a Row, name: &str) -> Option<&'a Field> {
    row.get_column_iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f)
}

/// Image bytes from a `{bytes, path}` struct or a plain binary column.
fn image_bytes(field: &Field) -> Option<&[u8]> {
    match field {
        Field::Bytes(b) => Some(b.data()),
        Field::Group(g) => column(g, "bytes").and_then(image_bytes),
        _ => None,
    }
}

fn integer(field: &Field) -> Option<i64> {
    match *field {
        Field::Byte(v) => Some(v.into()),
        Field::Short(v) => Some(v.into()),
        Field::Int(v) => Some(v.into()),
        Field::Long(v) => Some(v),
        Field::UByte(v) => Some(v.into()),
        Field::UShort(v) => Some(v.into()),
        Field::UInt(v) => Some(v.into()),
        Field::ULong(v) => i64::try_from(v).ok(),
        _ => None,
    }
}
