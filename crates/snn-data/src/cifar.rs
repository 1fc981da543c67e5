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

/// Decodes one 32×32 RGB image (JPEG or PNG) into CHW bytes.
fn decode_image(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let img = image::load_from_memory(bytes).map_err(|e| format_err(path, format!("cannot decode image: {e}")))?;
    if (img.width(), img.height()) != (32, 32) {
        return Err(format_err(path, format!("image is {}x{}, CIFAR-10 images are 32x32", img.width(), img.height())));
    }
    let rgb = img.to_rgb8();
    let mut chw = vec![0u8; 3 * 1024];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * 1024 + i] = p.0[c];
        }
    }
    Ok(chw)
}

/// Collects `split/<class>/<file>` entries, in class order then file-name order.
#[derive(Default)]
struct FolderEntries {
    /// (class, file name) → encoded bytes.
    files: BTreeMap<(u8, String), Vec<u8>>,
}

impl FolderEntries {
    fn offer(
        &mut self,
        rel: &Path,
        split_name: &str,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<()> {
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
        if let Some(class) = CLASSES.iter().position(|c| *c == tail[1]) {
            self.files.insert((class as u8, tail[2].clone()), read()?);
        }
        Ok(())
    }

    fn into_dataset(self, source: &Path) -> Result<ImageDataset> {
        if self.files.is_empty() {
            return Err(format_err(source, "no images found under <split>/<class>/ with a CIFAR-10 class name"));
        }
        // Interleave the classes (rank 0 of every class, then rank 1, ...) so that any prefix of the set,
        // as taken by a sample limit, is class-balanced; within a class, files keep their name order.
        let mut rank = [0usize; 10];
        type Keyed = ((usize, u8), (String, Vec<u8>));
        let mut ordered: Vec<Keyed> = self
            .files
            .into_iter()
            .map(|((class, name), bytes)| {
                let r = rank[class as usize];
                rank[class as usize] += 1;
                ((r, class), (name, bytes))
            })
            .collect();
        ordered.sort_by_key(|(key, _)| *key);
        let mut images = Vec::with_capacity(ordered.len() * 3072);
        let mut labels = Vec::with_capacity(ordered.len());
        for ((_, class), (name, bytes)) in ordered {
            let p = source.join(CLASSES[class as usize]).join(&name);
            images.extend(decode_image(&bytes, &p)?);
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
            entries.offer(rel, split, || std::fs::read(&p)).map_err(|source| Error::Io { path: p.clone(), source })?;
        }
    }
    Ok(())
}

/// Reads an image-folder tree from a `.tar.gz` archive (`[top/]{train,test}/<class>/*.jpg|png`).
pub fn load_archive(path: &Path, split: Split) -> Result<ImageDataset> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = FolderEntries::default();
    let bad = |e: std::io::Error| format_err(path, format!("corrupt archive: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel = entry.path().map_err(bad)?.into_owned();
        entries
            .offer(&rel, split_name(split), || {
                let mut v = Vec::new();
                entry.read_to_end(&mut v)?;
                Ok(v)
            })
            .map_err(bad)?;
    }
    entries.into_dataset(&path.join(split_name(split)))
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
        let mut entries = FolderEntries::default();
        walk(path, &split_dir, split_name(split), &mut entries)?;
        return entries.into_dataset(&split_dir);
    }
    Err(Error::NotFound {
        what: format!("CIFAR-10 {} split", split_name(split)),
        dir: path.to_path_buf(),
        candidates: "data_batch_1..5.bin / test_batch.bin, or train/<class>/*.jpg, or a .tar.gz of that tree".into(),
    })
}
