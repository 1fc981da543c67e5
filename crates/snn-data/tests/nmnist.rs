//! N-MNIST reader tests on the real recording in the shared data folder (skipped when absent) and on
//! malformed files. Expected figures of the real sample were counted independently of this reader.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use snn_data::mnist::Split;
use snn_data::nmnist::{self, bin_events, parse_events, read_events, EventDataset, FRAME_SHAPE, SENSOR};
use snn_data::{Dataset, Samples};

fn real_sample() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/nmnist/sample_nmnist.bin");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: real N-MNIST sample not found at {}", path.display());
        None
    }
}

/// A recording built event by event: `(x, y, on, t_us)`.
fn encode(events: &[(u8, u8, bool, u32)]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|&(x, y, on, t)| [x, y, (u8::from(on) << 7) | ((t >> 16) & 0x7f) as u8, (t >> 8) as u8, t as u8])
        .collect()
}

#[test]
fn real_sample_has_the_known_events() {
    let Some(path) = real_sample() else { return };
    let events = read_events(&path).unwrap();
    assert_eq!(events.len(), 4_325);
    let max_x = events.iter().map(|e| e.x).max().unwrap();
    let max_y = events.iter().map(|e| e.y).max().unwrap();
    assert_eq!((max_x, max_y), (33, 33));
    assert_eq!(events.iter().map(|e| e.x).min(), Some(0));
    assert_eq!(events.iter().filter(|e| e.on).count(), 2_145);
    assert_eq!(events.first().unwrap().t_us, 654);
    assert_eq!(events.last().unwrap().t_us, 311_175);
    assert!(events.windows(2).all(|w| w[0].t_us <= w[1].t_us), "timestamps are sorted in the recording");
}

#[test]
fn binning_marks_exactly_the_distinct_bin_pixel_pairs() {
    let Some(path) = real_sample() else { return };
    let events = read_events(&path).unwrap();
    for steps in [1, 7, 20] {
        let mut frames = vec![0f32; steps * 2 * SENSOR * SENSOR];
        bin_events(&events, steps, &mut frames).unwrap();
        // Independent binning in f64 arithmetic.
        let span = 311_176.0;
        let distinct: HashSet<(usize, bool, u8, u8)> =
            events.iter().map(|e| (((e.t_us as f64) * steps as f64 / span).floor() as usize, e.on, e.y, e.x)).collect();
        assert!(distinct.iter().all(|&(bin, ..)| bin < steps));
        let ones = frames.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(ones, distinct.len(), "T = {steps}");
        assert!(frames.iter().all(|&v| v == 0.0 || v == 1.0));
        for &(bin, on, y, x) in &distinct {
            let at = bin * 2 * SENSOR * SENSOR + usize::from(on) * SENSOR * SENSOR + y as usize * SENSOR + x as usize;
            assert_eq!(frames[at], 1.0);
        }
    }
}

#[test]
fn hand_made_events_land_in_their_bins() {
    // Span 0..=99 µs over 4 bins of 25 µs.
    let bytes = encode(&[(0, 0, false, 0), (33, 1, true, 24), (2, 3, true, 25), (5, 6, false, 99)]);
    let events = parse_events(&bytes, Path::new("mem")).unwrap();
    assert_eq!(events[1].x, 33);
    assert!(events[1].on && !events[0].on);
    let mut frames = vec![0f32; 4 * 2 * SENSOR * SENSOR];
    bin_events(&events, 4, &mut frames).unwrap();
    let at = |bin: usize, on: usize, y: usize, x: usize| frames[((bin * 2 + on) * SENSOR + y) * SENSOR + x];
    assert_eq!(at(0, 0, 0, 0), 1.0);
    assert_eq!(at(0, 1, 1, 33), 1.0);
    assert_eq!(at(1, 1, 3, 2), 1.0);
    assert_eq!(at(3, 0, 6, 5), 1.0);
    assert_eq!(frames.iter().sum::<f32>(), 4.0);
    // Large timestamps use all 23 bits.
    let big = parse_events(&encode(&[(1, 1, true, 0x7f_ffff)]), Path::new("mem")).unwrap();
    assert_eq!(big[0].t_us, 0x7f_ffff);
}

#[test]
fn malformed_recordings_are_rejected_with_the_file_and_event() {
    let good = encode(&[(1, 2, true, 10), (3, 4, false, 20)]);
    for cut in [1, 4, 6, 9] {
        let err = parse_events(&good[..cut], Path::new("rec.bin")).unwrap_err().to_string();
        assert!(err.contains("rec.bin") && err.contains("whole number"), "{err}");
    }
    let err = parse_events(&encode(&[(1, 2, true, 10), (34, 0, true, 20)]), Path::new("rec.bin")).unwrap_err();
    assert!(err.to_string().contains("event 1") && err.to_string().contains("outside"), "{err}");
    let err = parse_events(&encode(&[(0, 200, false, 1)]), Path::new("rec.bin")).unwrap_err();
    assert!(err.to_string().contains("event 0"), "{err}");
    assert!(read_events(Path::new("does/not/exist.bin")).unwrap_err().to_string().contains("exist.bin"));
    // An empty recording is valid and gives silent frames.
    assert!(parse_events(&[], Path::new("rec.bin")).unwrap().is_empty());
}

#[test]
fn a_split_folder_reads_labels_from_digit_folders_and_batches_time_major() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, bytes: &[u8]| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    write("Train/7/b.bin", &encode(&[(0, 0, true, 0), (1, 1, true, 9)]));
    write("Train/7/a.bin", &encode(&[(2, 2, false, 5)]));
    write("Train/3/c.bin", &encode(&[(4, 4, true, 0)]));
    write("Test/0/d.bin", &encode(&[(5, 5, true, 0)]));
    let train = nmnist::load(dir.path(), Split::Train).unwrap();
    assert_eq!(train.labels(), &[3, 7, 7]);
    assert!(train.files()[1].ends_with("7/a.bin"));
    let (frames, labels) = train.frames(&[2, 0], 2).unwrap();
    assert_eq!(labels, vec![7, 3]);
    let frame: usize = FRAME_SHAPE.iter().product();
    assert_eq!(frames.len(), 2 * 2 * frame);
    // Sample b: event (0,0) ON in bin 0, (1,1) ON in bin 1. Layout [T, B, 2, 34, 34].
    let on = SENSOR * SENSOR;
    assert_eq!(frames[on], 1.0);
    assert_eq!(frames[2 * frame + on + SENSOR + 1], 1.0);
    assert_eq!(frames.iter().sum::<f32>(), 3.0);

    let samples = Dataset::from_name("nmnist").unwrap().load(Some(dir.path()), Split::Test).unwrap();
    assert!(matches!(&samples, Samples::Events(d) if d.len() == 1));
    assert_eq!(samples.input_shape(), [2, 34, 34]);

    write("Test/0/notes.txt", b"stray");
    let err = nmnist::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(err.contains("notes.txt"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = nmnist::load(empty.path(), Split::Train).unwrap_err().to_string();
    assert!(err.contains("Train"), "{err}");
    assert!(EventDataset::new(vec![PathBuf::from("x.bin")], vec![10]).is_err());
}

#[test]
fn bad_binning_arguments_are_errors_not_panics() {
    let events = parse_events(&encode(&[(1, 2, true, 10)]), std::path::Path::new("e.bin")).unwrap();
    let frame: usize = FRAME_SHAPE.iter().product();
    let mut out = vec![0f32; 3 * frame];
    let err = bin_events(&events, 0, &mut out).unwrap_err().to_string();
    assert!(err.contains("time step"), "{err}");
    let err = bin_events(&events, 4, &mut out).unwrap_err().to_string();
    assert!(err.contains("buffer"), "{err}");
    let outside = [nmnist::Event { x: 34, y: 0, on: true, t_us: 0 }];
    let err = bin_events(&outside, 3, &mut out).unwrap_err().to_string();
    assert!(err.contains("outside"), "{err}");
    bin_events(&events, 3, &mut out).unwrap();
    assert_eq!(out.iter().sum::<f32>(), 1.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    std::fs::write(&path, encode(&[(0, 0, true, 0)])).unwrap();
    let set = EventDataset::new(vec![path], vec![1]).unwrap();
    let err = set.frames(&[0, 1], 2).unwrap_err().to_string();
    assert!(err.contains("index 1"), "{err}");
    assert!(set.frames(&[0], 0).is_err());
}
