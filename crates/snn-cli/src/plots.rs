//! PNG figures of a sparsity analysis (plotters, bitmap backend, embedded DejaVu Sans font).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use snn_train::analysis::{Raster, SparsityReport};

/// One point of an accuracy-versus-time-steps sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepPoint {
    /// Time steps per image.
    pub timesteps: usize,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// SNN accumulates per image.
    pub snn_ac: f64,
    /// SNN energy per image, pJ.
    pub snn_energy_pj: f64,
}

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded plot font could not be loaded"))
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Spike raster of one image in one layer.
pub fn raster(path: &Path, r: &Raster) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Spike raster: layer {}, first test image", r.layer), ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..r.timesteps as f64 - 0.5, 0f64..r.neurons.max(1) as f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("time step")
        .y_desc("neuron index")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(r.events.iter().map(|&(t, n)| {
            Rectangle::new([(t as f64 - 0.4, n as f64), (t as f64 + 0.4, n as f64 + 1.0)], BLACK.filled())
        }))
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

fn category_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    labels: &[String],
    series: &[(&str, RGBColor, Vec<f64>)],
    log: bool,
) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let max = series.iter().flat_map(|s| s.2.iter().copied()).fold(0.0f64, f64::max).max(1e-12);
    let n = labels.len() as f64;
    let width = 0.8 / series.len() as f64;
    let label_of = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    macro_rules! draw {
        ($chart:expr, $floor:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels(labels.len() * 2 + 1)
                .x_label_formatter(&label_of)
                .disable_x_mesh()
                .y_desc(y_desc)
                .y_label_formatter(&|v| if *v >= 1e4 { format!("{v:.0e}") } else { format!("{v}") })
                .draw()
                .map_err(draw_err)?;
            for (k, (name, color, values)) in series.iter().enumerate() {
                let offset = -0.4 + width * k as f64;
                let color = *color;
                chart
                    .draw_series(values.iter().enumerate().map(|(i, &v)| {
                        let x0 = i as f64 + offset;
                        Rectangle::new([(x0, $floor), (x0 + width * 0.95, v.max($floor))], color.filled())
                    }))
                    .map_err(draw_err)?
                    .label(*name)
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(draw_err)?;
            }
        }};
    }
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 24)).margin(12).x_label_area_size(44).y_label_area_size(80);
    if log {
        let floor = 1.0;
        let chart = builder.build_cartesian_2d(-0.5f64..n - 0.5, (floor..max * 3.0).log_scale()).map_err(draw_err)?;
        draw!(chart, floor);
    } else {
        let chart = builder.build_cartesian_2d(-0.5f64..n - 0.5, 0f64..max * 1.1).map_err(draw_err)?;
        draw!(chart, 0.0);
    }
    root.present().map_err(draw_err)
}

/// Accuracy against the number of inference time steps.
pub fn accuracy_vs_timesteps(path: &Path, sweep: &[SweepPoint]) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let t_max = sweep.iter().map(|p| p.timesteps).max().unwrap_or(1) as f64;
    let lowest = sweep.iter().map(|p| 100.0 * p.accuracy).fold(100.0f64, f64::min);
    let y_min = ((lowest - 5.0) / 10.0).floor().max(0.0) * 10.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Test accuracy vs inference time steps", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max * 1.05, y_min..100f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("time steps T")
        .y_desc("accuracy (%)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(draw_err)?;
    let points: Vec<(f64, f64)> = sweep.iter().map(|p| (p.timesteps as f64, 100.0 * p.accuracy)).collect();
    chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2))).map_err(draw_err)?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, BLUE.filled()))).map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// Writes the four figures into `dir` and returns their paths.
pub fn write_all(dir: &Path, report: &SparsityReport, sweep: &[SweepPoint]) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    if let Some(r) = &report.raster {
        let p = dir.join("raster.png");
        raster(&p, r)?;
        written.push(p);
    }
    let spiking: Vec<_> = report.layers.iter().filter(|l| l.firing_rate.is_some()).collect();
    let p = dir.join("firing_rates.png");
    category_chart(
        &p,
        &format!("Firing rate per layer (spikes per neuron per step, T = {})", report.timesteps),
        "spikes / neuron / step",
        &spiking.iter().map(|l| l.layer.clone()).collect::<Vec<_>>(),
        &[("firing rate", RGBColor(31, 119, 180), spiking.iter().map(|l| l.firing_rate.unwrap_or(0.0)).collect())],
        false,
    )?;
    written.push(p);
    let p = dir.join("accuracy_vs_timesteps.png");
    accuracy_vs_timesteps(&p, sweep)?;
    written.push(p);
    let weighted: Vec<_> = report.layers.iter().filter(|l| l.ann_mac > 0.0).collect();
    let p = dir.join("ac_vs_mac.png");
    category_chart(
        &p,
        "Operations per image: SNN accumulates vs ANN multiply-accumulates (log scale)",
        "operations per image",
        &weighted.iter().map(|l| l.layer.clone()).collect::<Vec<_>>(),
        &[
            ("SNN AC", RGBColor(44, 160, 44), weighted.iter().map(|l| l.snn_ac).collect()),
            ("ANN MAC", RGBColor(214, 39, 40), weighted.iter().map(|l| l.ann_mac).collect()),
        ],
        true,
    )?;
    written.push(p);
    Ok(written)
}

/// A line chart of several named series of `(x, y)` points.
fn line_chart(path: &Path, title: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>)], log: bool) -> Result<()> {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let x_max = points().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = points().map(|p| p.1).filter(|y| y.is_finite()).fold(0.0f64, f64::max).max(1e-9);
    let y_min_pos = points().map(|p| p.1).filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
    let y_min = points().map(|p| p.1).filter(|y| y.is_finite()).fold(f64::INFINITY, f64::min);
    // Linear axes span the data with a margin, so that small late gains (99.1 % to 99.3 %) stay visible.
    let pad = 0.05 * (y_max - y_min).max(1e-3 * y_max.abs()).max(1e-9);
    let linear = (y_min - pad).max(0.0).min(y_max)..y_max + pad;
    macro_rules! draw {
        ($chart:expr, $floor:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(y_desc)
                .x_labels((x_max as usize + 1).min(12))
                .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-6 { format!("{v:.0}") } else { String::new() })
                .y_label_formatter(&|v| format!("{v:.2}"))
                .draw()
                .map_err(draw_err)?;
            for (k, (name, pts)) in series.iter().enumerate() {
                let color = COLORS[k % COLORS.len()];
                let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, y.max($floor))).collect();
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(draw_err)?;
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(draw_err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(draw_err)?;
        }};
    }
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 24)).margin(12).x_label_area_size(44).y_label_area_size(80);
    let x_range = 0.5f64..x_max + 0.5;
    if log && y_min_pos.is_finite() {
        let floor = y_min_pos / 2.0;
        let chart = builder.build_cartesian_2d(x_range, (floor..y_max * 2.0).log_scale()).map_err(draw_err)?;
        draw!(chart, floor);
    } else {
        let floor = linear.start;
        let chart = builder.build_cartesian_2d(x_range, linear).map_err(draw_err)?;
        draw!(chart, floor);
    }
    root.present().map_err(draw_err)
}

/// The learning curves of a run from its per-epoch metrics, into `dir`: `loss.png` (mean training loss per
/// sample), `accuracy.png` (training and test accuracy) and `spikes.png` (test spikes per neuron over the
/// window, per layer, log scale). Returns the paths written.
pub fn learning_curves(dir: &Path, history: &[snn_train::EpochMetrics]) -> Result<Vec<PathBuf>> {
    if history.is_empty() {
        return Err(anyhow!("the run has no finished epoch to plot"));
    }
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let by_epoch = |f: &dyn Fn(&snn_train::EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|m| (m.epoch as f64, f(m))).collect()
    };
    let loss = dir.join("loss.png");
    line_chart(
        &loss,
        "Training loss",
        "sum-squared error per sample",
        &[("loss".into(), by_epoch(&|m| m.loss))],
        false,
    )?;
    // The windows, where the metrics record them and every epoch used the same one.
    let window = |f: &dyn Fn(&snn_train::EpochMetrics) -> usize| -> String {
        match f(&history[0]) {
            t if t > 0 && history.iter().all(|m| f(m) == t) => format!(" (T = {t})"),
            _ => String::new(),
        }
    };
    let test_window = window(&|m| m.test_timesteps);
    let accuracy = dir.join("accuracy.png");
    line_chart(
        &accuracy,
        "Accuracy",
        "accuracy (%)",
        &[
            (format!("train{}", window(&|m| m.timesteps)), by_epoch(&|m| 100.0 * m.train_accuracy)),
            (format!("test{test_window}"), by_epoch(&|m| 100.0 * m.test_accuracy)),
        ],
        false,
    )?;
    let layers: Vec<String> = history[0].test_spikes.iter().map(|r| r.layer.clone()).collect();
    let series: Vec<(String, Vec<(f64, f64)>)> = layers
        .iter()
        .map(|layer| {
            let pts = history
                .iter()
                .filter_map(|m| {
                    m.test_spikes.iter().find(|r| &r.layer == layer).map(|r| (m.epoch as f64, r.spikes_per_neuron))
                })
                .collect();
            (layer.clone(), pts)
        })
        .collect();
    let spikes = dir.join("spikes.png");
    let title = format!("Test spikes per neuron over the window{test_window}");
    line_chart(&spikes, &title, "spikes / neuron", &series, true)?;
    Ok(vec![loss, accuracy, spikes])
}
