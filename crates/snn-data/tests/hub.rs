//! Hub download, cache, offline mode and checksum checks, against a local server in the Hub's layout
//! (nothing here touches the internet). Images served are real MNIST digits from the built-in subset, so
//! the decoded cache can be compared pixel for pixel with the IDX reader's output.

mod support;

use std::path::Path;

use snn_data::hub::{self, HubDataset, HubFile, HubOptions};
use snn_data::mnist::{builtin_subset, Split};
use snn_data::{Dataset, Samples};
use support::hub_server::{image_parquet, png, HubServer};

fn options(cache: &Path, server: &HubServer) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        endpoint: Some(server.endpoint.clone()),
        offline: false,
        progress: false,
    }
}

/// Serves the first `n` images of a built-in MNIST split as the Hub's MNIST shard of that split.
fn serve_mnist(server: &HubServer, split: Split, n: usize, shards: usize) {
    let data = builtin_subset(split).unwrap();
    let rows: Vec<(Vec<u8>, i64)> =
        (0..n).map(|i| (png(data.image(i), [1, 28, 28]), data.labels()[i].into())).collect();
    let stem = if split == Split::Train { "train" } else { "test" };
    let per = n.div_ceil(shards);
    for (k, chunk) in rows.chunks(per).enumerate() {
        let name = format!("mnist/{stem}-{k:05}-of-{shards:05}.parquet");
        server.serve("datasets/ylecun/mnist", &name, image_parquet("image", chunk));
    }
}

#[test]
fn fetched_mnist_decodes_to_the_same_pixels_and_then_loads_offline() {
    let server = HubServer::start();
    serve_mnist(&server, Split::Train, 30, 2);
    serve_mnist(&server, Split::Test, 12, 1);
    // An unrelated file in the repository is not fetched.
    server.serve("datasets/ylecun/mnist", "README.md", b"card".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &server);

    let paths = hub::fetch_dataset(Dataset::Mnist, &opts).unwrap();
    assert_eq!(paths.len(), 3, "two train shards and one test shard");
    assert!(hub::is_cached(Dataset::Mnist, &opts));

    let requests = server.requests();
    let offline = HubOptions { offline: true, endpoint: None, ..opts.clone() };
    let train = hub::load_cached(Dataset::Mnist, Split::Train, &offline).unwrap();
    let reference = builtin_subset(Split::Train).unwrap();
    assert_eq!(train.len(), 30);
    for i in 0..30 {
        assert_eq!(train.image(i), reference.image(i), "image {i}");
    }
    assert_eq!(train.labels(), &reference.labels()[..30]);
    // Through the dataset front door, with no folder: the cache, not the built-in subset.
    let samples = Dataset::Mnist.load_from(None, &offline, Split::Test).unwrap();
    assert!(matches!(&samples, Samples::Images(d) if d.len() == 12));
    // Fetching again with everything cached is offline-safe too.
    assert_eq!(hub::fetch_dataset(Dataset::Mnist, &offline).unwrap(), paths);
    assert_eq!(server.requests(), requests, "cache reads made no request");

    let verified = hub::verify_dataset(Dataset::Mnist, &offline).unwrap();
    assert_eq!(verified.iter().map(|v| v.rows).sum::<usize>(), 42);
    for v in &verified {
        assert_eq!(v.sha256, snn_data::sha256_hex(&std::fs::read(&v.path).unwrap()));
    }

    // Damage a cached blob: verify names the file and the mismatch.
    let victim = std::fs::canonicalize(&paths[0]).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let err = hub::verify_dataset(Dataset::Mnist, &offline).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch") && err.contains("train-00000-of-00002"), "{err}");
}

#[test]
fn offline_mode_with_an_empty_cache_names_the_fetch_command() {
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions { cache_dir: cache.path().to_path_buf(), endpoint: None, offline: true, progress: false };
    let err = hub::load_cached(Dataset::Cifar10, Split::Train, &opts).unwrap_err().to_string();
    assert!(err.contains("snn-cli data fetch cifar10") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(hub::fetch_dataset(Dataset::Svhn, &opts).is_err());
    // Without a cache and without a folder, MNIST falls back to the built-in subset; CIFAR-10 cannot.
    let mnist = Dataset::Mnist.load_from(None, &opts, Split::Test).unwrap();
    assert_eq!(mnist.len(), snn_data::mnist::SUBSET_TEST_LEN);
    assert!(Dataset::Cifar10.load_from(None, &opts, Split::Test).is_err());
    assert!(HubDataset::of(Dataset::Nmnist).is_err());
}

#[test]
fn a_download_that_does_not_match_its_announced_hash_is_rejected_and_discarded() {
    let server = HubServer::start();
    let body = image_parquet("image", &[(png(&[7u8; 784], [1, 28, 28]), 3)]);
    let wrong = snn_data::sha256_hex(b"something else");
    server.serve_with_etag("datasets/ylecun/mnist", "mnist/train-00000-of-00001.parquet", body.clone(), &wrong);
    server.serve("datasets/ylecun/mnist", "mnist/test-00000-of-00001.parquet", body);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &server);
    let err = hub::fetch_dataset(Dataset::Mnist, &opts).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch") && err.contains(&wrong), "{err}");
    assert!(!hub::is_cached(Dataset::Mnist, &opts), "the bad copy must not stay in the cache");
    let blobs = cache.path().join("datasets--ylecun--mnist/blobs");
    assert!(!blobs.join(&wrong).exists());
}

#[test]
fn cifar_rows_decode_to_channel_planes_and_bad_rows_are_named() {
    let server = HubServer::start();
    // A 32×32 RGB image whose channel c holds value 10·c + (pixel index mod 7).
    let image: Vec<u8> = (0..3).flat_map(|c| (0..1024).map(move |p| (10 * c + p % 7) as u8)).collect();
    let shard = image_parquet("img", &[(png(&image, [3, 32, 32]), 9), (png(&image, [3, 32, 32]), 0)]);
    server.serve("datasets/uoft-cs/cifar10", "plain_text/train-00000-of-00001.parquet", shard.clone());
    server.serve("datasets/uoft-cs/cifar10", "plain_text/test-00000-of-00001.parquet", shard);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &server);
    hub::fetch_dataset(Dataset::Cifar10, &opts).unwrap();
    let test = hub::load_cached(Dataset::Cifar10, Split::Test, &opts).unwrap();
    assert_eq!(test.shape(), [3, 32, 32]);
    assert_eq!(test.labels(), &[9, 0]);
    assert_eq!(test.image(1), &image[..]);

    let dir = tempfile::tempdir().unwrap();
    let cifar = HubDataset::of(Dataset::Cifar10).unwrap();
    let check = |name: &str, bytes: Vec<u8>, needle: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = hub::read_parquet_images(&path, cifar, &mut Vec::new(), &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    };
    check("label.parquet", image_parquet("img", &[(png(&image, [3, 32, 32]), 10)]), "label 10");
    check("size.parquet", image_parquet("img", &[(png(&[0u8; 3 * 16 * 16], [3, 16, 16]), 1)]), "16×16");
    check("column.parquet", image_parquet("image", &[(png(&image, [3, 32, 32]), 1)]), "column 'img'");
    check("pixels.parquet", image_parquet("img", &[(b"not an image".to_vec(), 1)]), "undecodable");
    check("garbage.parquet", b"PAR1 definitely not parquet".to_vec(), "Parquet");
    let good = image_parquet("img", &[(png(&image, [3, 32, 32]), 1)]);
    check("truncated.parquet", good[..good.len() / 2].to_vec(), "Parquet");
}

#[test]
fn hub_file_addresses_are_parsed_strictly() {
    let f = HubFile::parse_url("hf://someone/lenet-mnist/best.safetensors").unwrap();
    assert_eq!((f.repo.as_str(), f.is_dataset, f.file.as_str()), ("someone/lenet-mnist", false, "best.safetensors"));
    let f = HubFile::parse_url("hf://datasets/ylecun/mnist/mnist/test-00000-of-00001.parquet").unwrap();
    assert!(f.is_dataset && f.file == "mnist/test-00000-of-00001.parquet");
    for bad in ["someone/repo/file", "hf://someone/repo", "hf://someone//file", "hf://a/b/../secret", "hf://a/b/c/"] {
        assert!(HubFile::parse_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_model_file_is_fetched_once_and_then_served_from_the_cache() {
    let server = HubServer::start();
    server.serve("someone/lenet-mnist", "best.safetensors", b"weights".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &server);
    let file = HubFile::parse_url("hf://someone/lenet-mnist/best.safetensors").unwrap();
    let path = hub::fetch_file(&file, &opts).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"weights");
    let offline = HubOptions { offline: true, endpoint: None, ..opts };
    assert_eq!(hub::fetch_file(&file, &offline).unwrap(), path);
    let missing = HubFile::parse_url("hf://someone/lenet-mnist/other.safetensors").unwrap();
    assert!(hub::fetch_file(&missing, &offline).unwrap_err().to_string().contains("other.safetensors"));
}

/// With `SNN_FUZZ_SEEDS_OUT=DIR`, writes valid shards as seeds for the `parquet_images` fuzz target.
#[test]
fn write_fuzz_seeds_when_asked() {
    let Some(dir) = std::env::var_os("SNN_FUZZ_SEEDS_OUT") else { return };
    let dir = Path::new(&dir).join("parquet_images");
    std::fs::create_dir_all(&dir).unwrap();
    let gray = png(&[200u8; 784], [1, 28, 28]);
    let rgb = png(&[50u8; 3072], [3, 32, 32]);
    std::fs::write(dir.join("mnist.parquet"), image_parquet("image", &[(gray, 4)])).unwrap();
    std::fs::write(dir.join("cifar.parquet"), image_parquet("img", &[(rgb, 2)])).unwrap();
}
