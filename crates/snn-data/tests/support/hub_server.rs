//! A miniature Hugging Face Hub on 127.0.0.1 for tests: it answers the file (`/<repo>/resolve/main/<file>`,
//! with HTTP ranges, `ETag` and `X-Repo-Commit` headers) and repository-listing (`/api/.../revision/main`)
//! requests the Hub client makes, from files registered in memory. Also writes image Parquet shards in the
//! layout of the Hub's image datasets. Shared by the test suites of several crates.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// Commit id the server reports for every repository.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Served {
    body: Vec<u8>,
    etag: String,
}

/// A running server; it stops when the test process ends.
pub struct HubServer {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    files: Arc<Mutex<BTreeMap<String, Served>>>,
    requests: Arc<AtomicUsize>,
}

impl HubServer {
    /// Starts a server on a free local port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Mutex<BTreeMap<String, Served>>> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let (f, r) = (files.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                r.fetch_add(1, Ordering::SeqCst);
                let _ = answer(stream, &f);
            }
        });
        Self { endpoint, files, requests }
    }

    /// Serves `body` as `file` of `repo` (`owner/name` for a model, `datasets/owner/name` for a dataset),
    /// announcing its true SHA-256.
    pub fn serve(&self, repo: &str, file: &str, body: Vec<u8>) {
        let etag = snn_data::sha256_hex(&body);
        self.serve_with_etag(repo, file, body, &etag);
    }

    /// Serves `body` announcing `etag` as its content hash (to simulate corruption in transit).
    pub fn serve_with_etag(&self, repo: &str, file: &str, body: Vec<u8>, etag: &str) {
        self.files.lock().unwrap().insert(format!("{repo}/{file}"), Served { body, etag: etag.to_string() });
    }

    /// Connections accepted so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(mut stream: TcpStream, files: &Mutex<BTreeMap<String, Served>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = value.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let files = files.lock().unwrap();
    if let Some(repo) = path.strip_prefix("api/").and_then(|p| p.strip_suffix("/revision/main")) {
        let repo = repo.strip_prefix("models/").unwrap_or(repo);
        let siblings: Vec<String> = files
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{repo}/")))
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        if siblings.is_empty() {
            return respond(&mut stream, "404 Not Found", &[], b"");
        }
        let body = format!("{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}", siblings.join(","));
        return respond(&mut stream, "200 OK", &[("content-type", "application/json".into())], body.as_bytes());
    }
    let Some((repo, file)) = path.split_once("/resolve/main/") else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    let Some(served) = files.get(&format!("{repo}/{file}")) else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    let size = served.body.len();
    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map_or(size - 1, |b: usize| b.min(size - 1));
            (a.min(size), b)
        }
        None => (0, size - 1),
    };
    let body = if start <= end { &served.body[start..=end] } else { &[][..] };
    let headers = [
        ("etag", format!("\"{}\"", served.etag)),
        ("x-repo-commit", COMMIT.to_string()),
        ("content-range", format!("bytes {start}-{end}/{size}")),
    ];
    respond(&mut stream, "206 Partial Content", &headers, body)
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// PNG bytes of an image given as `[C, H, W]` bytes (C = 1 or 3).
pub fn png(image: &[u8], shape: [usize; 3]) -> Vec<u8> {
    let [c, h, w] = shape;
    let mut out = Cursor::new(Vec::new());
    if c == 1 {
        image::GrayImage::from_raw(w as u32, h as u32, image.to_vec())
            .unwrap()
            .write_to(&mut out, image::ImageFormat::Png)
    } else {
        let hwc: Vec<u8> = (0..h * w).flat_map(|p| (0..3).map(move |ch| image[ch * h * w + p])).collect();
        image::RgbImage::from_raw(w as u32, h as u32, hwc).unwrap().write_to(&mut out, image::ImageFormat::Png)
    }
    .unwrap();
    out.into_inner()
}

/// A Parquet shard as the Hub's image datasets publish it: column `image_column` a struct
/// `{bytes: binary, path: string}` holding encoded images, column `label` an int64. Snappy-compressed.
pub fn image_parquet(image_column: &str, rows: &[(Vec<u8>, i64)]) -> Vec<u8> {
    let message = format!(
        "message schema {{ optional group {image_column} {{ optional binary bytes; optional binary path (UTF8); }} \
         optional int64 label; }}"
    );
    let schema = Arc::new(parse_message_type(&message).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut buf = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut buf, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let n = rows.len();
    let bytes: Vec<ByteArray> = rows.iter().map(|(b, _)| ByteArray::from(b.clone())).collect();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>().write_batch(&bytes, Some(&vec![2; n]), None).unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>().write_batch(&[], Some(&vec![1; n]), None).unwrap();
    col.close().unwrap();
    let labels: Vec<i64> = rows.iter().map(|(_, l)| *l).collect();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<Int64Type>().write_batch(&labels, Some(&vec![1; n]), None).unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    buf
}
