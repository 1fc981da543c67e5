//! CIFAR-10: the official binary batches, or an image-folder tree (plain or inside a `.tar.gz`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::mnist::Split;
use crate::{Error, ImageDataset, Result};

/// The ten classes in label order.
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Bytes of one record of the binary format: a label byte and 3×32×32 pixels (R, G, B planes).
pub const RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// Per-channel mean and standard deviation of the paper's CIFAR-10 normalisation (applied to pixels in
/// [0, 1]). The unusual standard deviations map pixels to about [−0.9, 1.0], a valid signed firing rate.
pub const PAPER_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// See [`PAPER_MEAN`].
pub const PAPER_STD: [f32; 3] = [0.557, 0.549, 0.5534];

/// Largest image file accepted in an image tree or archive: a 32×32 RGB image takes about 3 kB in any common
/// encoding, so anything much larger is not a CIFAR-10 image (and is refused before it is read).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 10;

/// Most images accepted in one split of an image tree or archive (CIFAR-10 has 60,000 in all), so the decoded
/// pixels of a split never exceed 60,000 × 3,072 bytes.
pub const MAX_IMAGES: usize = 60_000;

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// Parses records of the binary format (`data_batch_N.bin`, `test_batch.bin`).
pub fn parse_binary(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        return Err(format_err(
            path,
            format!("{} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records", bytes.len()),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * (RECORD_BYTES - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] >= 10 {
            return Err(format_err(path, format!("record {i} has label {} (must be 0..9)", rec[0])));
        }
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

fn binary_files(dir: &Path, split: Split) -> Option<Vec<PathBuf>> {
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    for base in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        let files: Vec<PathBuf> = names.iter().map(|n| base.join(n)).collect();
        if files.iter().all(|f| f.is_file()) {
            return Some(files);
        }
    }
    None
}

/// Decodes one 32×32 RGB image (JPEG or PNG) into CHW bytes. The size in the image's header is checked
/// before any pixel is decoded, so an image that claims to be huge costs nothing.
fn decode_image(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let cannot = |e: image::ImageError| format_err(path, format!("cannot decode image: {e}"));
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format_err(path, format!("cannot read image: {e}")))
    };
    let (width, height) = open()?.into_dimensions().map_err(cannot)?;
    if (width, height) != (32, 32) {
        return Err(format_err(path, format!("image is {width}x{height}, CIFAR-10 images are 32x32")));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(32);
    limits.max_image_height = Some(32);
    limits.max_alloc = Some(1 << 20);
    let mut reader = open()?;
    reader.limits(limits);
    let img = reader.decode().map_err(cannot)?;
    let rgb = img.to_rgb8();
    let mut chw = vec![0u8; 3 * 1024];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * 1024 + i] = p.0[c];
        }
    }
    Ok(chw)
}

/// Collects the decoded images of `split/<class>/<file>` entries, in class order then file-name order.
struct FolderEntries {
    /// The tree or archive, for error messages.
    source: PathBuf,
    /// (class, file name) → decoded CHW pixels.
    files: BTreeMap<(u8, String), Vec<u8>>,
}

impl FolderEntries {
    fn new(source: &Path) -> Self {
        Self { source: source.to_path_buf(), files: BTreeMap::new() }
    }

    /// Takes the entry at `rel` if it is an image of the split: checks its `size` against
    /// [`MAX_IMAGE_FILE_BYTES`] and the image count against [`MAX_IMAGES`] before reading it, then reads
    /// (at most the checked size) and decodes it.
    fn offer(
        &mut self,
        rel: &Path,
        split_name: &str,
        size: u64,
        read: impl FnOnce(u64) -> std::io::Result<Vec<u8>>,
    ) -> Result<()> {
        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        // Accept an optional leading folder (e.g. an archive's top directory).
        let tail = match parts.len() {
            3 => &parts[..],
            4 => &parts[1..],
            _ => return Ok(()),
        };
        let ext = Path::new(&tail[2]).extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        if tail[0] != split_name || !matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
            return Ok(());
        }
        let Some(class) = CLASSES.iter().position(|c| *c == tail[1]) else { return Ok(()) };
        let at = self.source.join(rel);
        if size > MAX_IMAGE_FILE_BYTES {
            return Err(format_err(
                &at,
                format!("{size} bytes is far larger than a 32x32 image (limit {MAX_IMAGE_FILE_BYTES})"),
            ));
        }
        if self.files.len() >= MAX_IMAGES {
            return Err(format_err(&self.source, format!("more than {MAX_IMAGES} images in one split")));
        }
        let bytes = read(MAX_IMAGE_FILE_BYTES + 1).map_err(|source| Error::Io { path: at.clone(), source })?;
        if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
            return Err(format_err(&at, format!("larger than a 32x32 image (limit {MAX_IMAGE_FILE_BYTES} bytes)")));
        }
        self.files.insert((class as u8, tail[2].clone()), decode_image(&bytes, &at)?);
        Ok(())
    }

    fn into_dataset(self) -> Result<ImageDataset> {
        if self.files.is_empty() {
            return Err(format_err(&self.source, "no images found under <split>/<class>/ with a CIFAR-10 class name"));
        }
        // Interleave the classes (rank 0 of every class, then rank 1, ...) so that any prefix of the set,
        // as taken by a sample limit, is class-balanced; within a class, files keep their name order.
        let mut rank = [0usize; 10];
        type Keyed = ((usize, u8), (String, Vec<u8>));
        let mut ordered: Vec<Keyed> = self
            .files
            .into_iter()
            .map(|((class, name), pixels)| {
                let r = rank[class as usize];
                rank[class as usize] += 1;
                ((r, class), (name, pixels))
            })
            .collect();
        ordered.sort_by_key(|(key, _)| *key);
        let mut images = Vec::with_capacity(ordered.len() * 3072);
        let mut labels = Vec::with_capacity(ordered.len());
        for ((_, class), (_, pixels)) in ordered {
            images.extend(pixels);
            labels.push(class);
        }
        ImageDataset::new(images, labels, [3, 32, 32], 10)
    }
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

fn walk(root: &Path, dir: &Path, split: &str, entries: &mut FolderEntries) -> Result<()> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut items: Vec<_> = std::fs::read_dir(dir).map_err(io)?.collect::<std::io::Result<_>>().map_err(io)?;
    items.sort_by_key(|e| e.file_name());
    for e in items {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, split, entries)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            let size = std::fs::metadata(&p).map_err(|source| Error::Io { path: p.clone(), source })?.len();
            entries.offer(rel, split, size, |limit| {
                let mut v = Vec::new();
                std::fs::File::open(&p)?.take(limit).read_to_end(&mut v)?;
                Ok(v)
            })?;
        }
    }
    Ok(())
}

/// Reads an image-folder tree from a `.tar.gz` archive (`[top/]{train,test}/<class>/*.jpg|png`).
pub fn load_archive(path: &Path, split: Split) -> Result<ImageDataset> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse_archive(file, path, split)
}

/// Reads an image-folder tree from a `.tar.gz` stream; `path` names it in errors. Each image is read only
/// after its size in the archive's header has been checked ([`MAX_IMAGE_FILE_BYTES`], [`MAX_IMAGES`]) and is
/// decoded at once, so memory holds one encoded image and the decoded pixels, whatever the archive claims.
pub fn parse_archive(reader: impl Read, path: &Path, split: Split) -> Result<ImageDataset> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let mut entries = FolderEntries::new(path);
    let bad = |e: std::io::Error| format_err(path, format!("corrupt archive: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel = entry.path().map_err(bad)?.into_owned();
        let size = entry.header().size().map_err(bad)?;
        entries.offer(&rel, split_name(split), size, |limit| {
            let mut v = Vec::new();
            (&mut entry).take(limit).read_to_end(&mut v)?;
            Ok(v)
        })?;
    }
    entries.into_dataset()
}

/// Loads one split of CIFAR-10 from `path`, which may be
/// * a folder with the official binary batches (directly or in `cifar-10-batches-bin/`),
/// * a folder with an image tree `{train,test}/<class>/*.jpg|png` (class names as in [`CLASSES`]; the
///   classes are interleaved: the first image of every class in label order, then the second, ...),
/// * or a `.tar.gz` archive of such a tree.
pub fn load(path: &Path, split: Split) -> Result<ImageDataset> {
    if path.is_file() {
        return load_archive(path, split);
    }
    if let Some(files) = binary_files(path, split) {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for f in files {
            let bytes = std::fs::read(&f).map_err(|source| Error::Io { path: f.clone(), source })?;
            let (i, l) = parse_binary(&bytes, &f)?;
            images.extend(i);
            labels.extend(l);
        }
        return ImageDataset::new(images, labels, [3, 32, 32], 10);
    }
    let split_dir = path.join(split_name(split));
    if split_dir.is_dir() {
        let mut entries = FolderEntries::new(path);
        walk(path, &split_dir, split_name(split), &mut entries)?;
        return entries.into_dataset();
    }
    Err(Error::NotFound {
        what: format!("CIFAR-10 {} split", split_name(split)),
        dir: path.to_path_buf(),
        candidates: "data_batch_1..5.bin / test_batch.bin, or train/<class>/*.jpg, or a .tar.gz of that tree".into(),
    })
}
