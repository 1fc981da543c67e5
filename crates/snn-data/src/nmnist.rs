//! N-MNIST: MNIST digits recorded by a moving event camera (Orchard et al. 2015), read from the
//! dataset's binary event files and binned into spike frames.
//!
//! Each recording is a flat sequence of 5-byte events on a 34 × 34 sensor:
//!
//! | byte | content |
//! |------|---------|
//! | 0 | x (0..34) |
//! | 1 | y (0..34) |
//! | 2 | bit 7: polarity (1 = ON, 0 = OFF); bits 6..0: timestamp bits 22..16 |
//! | 3, 4 | timestamp bits 15..0 (µs, big-endian) |
//!
//! A recording becomes a window of `T` frames `[T, 2, 34, 34]`: the recording's span `[0, t_last]` is cut
//! into `T` equal bins, event `(x, y, p, t)` falls in bin `⌊t·T / (t_last + 1)⌋`, and a frame pixel is 1
//! when at least one event of that polarity hit it during the bin (channel 0 OFF, channel 1 ON). The frames
//! are already spikes: they feed the network directly, without rate coding.
//!
//! A dataset folder holds `Train/<digit>/*.bin` and `Test/<digit>/*.bin` (the layout of the official
//! archives; `train`/`test` in lower case are accepted too). Recordings are read from disk batch by batch,
//! so memory does not grow with the dataset.

use std::path::{Path, PathBuf};

use crate::mnist::Split;
use crate::{Error, Result};

/// Sensor width and height in pixels.
pub const SENSOR: usize = 34;
/// Frame shape of one time step: `[polarities, height, width]`.
pub const FRAME_SHAPE: [usize; 3] = [2, SENSOR, SENSOR];
/// Bytes per event.
pub const EVENT_BYTES: usize = 5;
/// Largest accepted recording (bytes); real ones are below 100 kB.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// One address event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Column, `0..34`.
    pub x: u8,
    /// Row, `0..34`.
    pub y: u8,
    /// `true` for an ON (brightness increase) event.
    pub on: bool,
    /// Timestamp in microseconds (23 bits).
    pub t_us: u32,
}

/// Decodes a recording; `path` names it in errors. Rejects a length that is not a whole number of events
/// and coordinates outside the sensor.
pub fn parse_events(bytes: &[u8], path: &Path) -> Result<Vec<Event>> {
    if bytes.len() % EVENT_BYTES != 0 {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!(
                "{} bytes is not a whole number of {EVENT_BYTES}-byte events (truncated after event {})",
                bytes.len(),
                bytes.len() / EVENT_BYTES
            ),
        });
    }
    bytes
        .chunks_exact(EVENT_BYTES)
        .enumerate()
        .map(|(i, e)| {
            if e[0] as usize >= SENSOR || e[1] as usize >= SENSOR {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    msg: format!("event {i} at (x {}, y {}) lies outside the {SENSOR}×{SENSOR} sensor", e[0], e[1]),
                });
            }
            Ok(Event {
                x: e[0],
                y: e[1],
                on: e[2] & 0x80 != 0,
                t_us: (u32::from(e[2] & 0x7f) << 16) | (u32::from(e[3]) << 8) | u32::from(e[4]),
            })
        })
        .collect()
}

/// Reads and decodes one recording file.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("{len} bytes is far larger than any N-MNIST recording"),
        });
    }
    parse_events(&std::fs::read(path).map_err(io)?, path)
}

/// Bins `events` into `steps` binary frames, written to `out` (`steps · 2 · 34 · 34` values, zeroed here).
/// A step count of 0, a buffer of another length, or an event outside the sensor is an error.
pub fn bin_events(events: &[Event], steps: usize, out: &mut [f32]) -> Result<()> {
    let plane = SENSOR * SENSOR;
    let frame = 2 * plane;
    if steps == 0 {
        return Err(Error::InvalidArgument("binning events needs at least one time step".into()));
    }
    if steps.checked_mul(frame) != Some(out.len()) {
        return Err(Error::InvalidArgument(format!(
            "{steps} frames of {frame} values need a buffer of {} values, got {}",
            steps.saturating_mul(frame),
            out.len()
        )));
    }
    if let Some(e) = events.iter().find(|e| e.x as usize >= SENSOR || e.y as usize >= SENSOR) {
        return Err(Error::InvalidArgument(format!(
            "event at (x {}, y {}) lies outside the {SENSOR}×{SENSOR} sensor",
            e.x, e.y
        )));
    }
    out.fill(0.0);
    let span = events.iter().map(|e| u64::from(e.t_us)).max().unwrap_or(0) + 1;
    for e in events {
        let bin = (u64::from(e.t_us) * steps as u64 / span) as usize;
        let at = bin * frame + usize::from(e.on) * plane + e.y as usize * SENSOR + e.x as usize;
        out[at] = 1.0;
    }
    Ok(())
}

/// A labelled set of N-MNIST recordings, read lazily from their files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDataset {
    files: Vec<PathBuf>,
    labels: Vec<u8>,
}

impl EventDataset {
    /// A dataset of the given recordings and their labels (digits `0..10`).
    pub fn new(files: Vec<PathBuf>, labels: Vec<u8>) -> Result<Self> {
        if files.len() != labels.len() {
            return Err(Error::Mismatch(format!("{} recordings but {} labels", files.len(), labels.len())));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= 10) {
            return Err(Error::Mismatch(format!("label {l} of recording {i} is not a digit")));
        }
        Ok(Self { files, labels })
    }

    /// Number of recordings.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no recordings.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The recording files, in sample order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Keeps only the first `n` recordings.
    pub fn truncate(&mut self, n: usize) {
        self.files.truncate(n);
        self.labels.truncate(n);
    }

    /// The spike frames of the given samples, time-major `[steps, B, 2, 34, 34]`, with their labels. An
    /// index past the end of the dataset or a step count of 0 is an error.
    pub fn frames(&self, indices: &[usize], steps: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::InvalidArgument(format!(
                "sample index {i} is past the end of the {} N-MNIST recordings",
                self.len()
            )));
        }
        if steps == 0 {
            return Err(Error::InvalidArgument("binning events needs at least one time step".into()));
        }
        let frame: usize = FRAME_SHAPE.iter().product();
        let batch = indices.len();
        let mut out = vec![0f32; steps * batch * frame];
        let mut sample = vec![0f32; steps * frame];
        for (b, &i) in indices.iter().enumerate() {
            bin_events(&read_events(&self.files[i])?, steps, &mut sample)?;
            for t in 0..steps {
                let dst = (t * batch + b) * frame;
                out[dst..dst + frame].copy_from_slice(&sample[t * frame..(t + 1) * frame]);
            }
        }
        Ok((out, indices.iter().map(|&i| u32::from(self.labels[i])).collect()))
    }
}

/// Lists a split of an N-MNIST folder: `<dir>/Train/<digit>/*.bin` (or `Test`), files sorted by digit then
/// name. Every recording must be a regular `.bin` file; other entries are rejected, not skipped silently.
pub fn load(dir: &Path, split: Split) -> Result<EventDataset> {
    let names: &[&str] = match split {
        Split::Train => &["Train", "train"],
        Split::Test => &["Test", "test"],
    };
    let root = names.iter().map(|n| dir.join(n)).find(|p| p.is_dir()).ok_or_else(|| Error::NotFound {
        what: "N-MNIST split folder".into(),
        dir: dir.to_path_buf(),
        candidates: names.join(", "),
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let class_dir = root.join(digit.to_string());
        if !class_dir.is_dir() {
            continue;
        }
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&class_dir).map_err(io(&class_dir))? {
            let path = entry.map_err(io(&class_dir))?.path();
            if path.extension().is_some_and(|e| e == "bin") && path.is_file() {
                entries.push(path);
            } else {
                return Err(Error::Format { path, msg: "not an N-MNIST recording (expected a .bin file)".into() });
            }
        }
        entries.sort();
        labels.extend(std::iter::repeat_n(digit, entries.len()));
        files.extend(entries);
    }
    if files.is_empty() {
        return Err(Error::NotFound {
            what: "N-MNIST recordings".into(),
            dir: root,
            candidates: "<digit>/*.bin".into(),
        });
    }
    EventDataset::new(files, labels)
}
