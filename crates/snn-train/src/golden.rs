//! Golden-vector checks: one reference training step, replayed through this toolkit's own model code.
//!
//! A case is a pair `<case>.json` (sidecar with the network spec and constants) and
//! `<case>.safetensors` (float64 input spikes, labels, dropout masks, weights, and the reference output,
//! loss, weight gradients, spike counts and leak-correction factors). See the fixtures' README for the
//! format and the tolerances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use snn_models::{ForwardOptions, Gradients, LayerSpec, Masks, NetworkSpec, SpikingNetwork};

use crate::loss::sum_squared_error;
use crate::{Error, Result};

/// Norm-wise tolerance `max|a − g| ≤ rtol · max|g| + atol`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative part, scaled by the largest reference magnitude.
    pub rtol: f64,
    /// Absolute part.
    pub atol: f64,
}

impl Tolerance {
    /// Tolerance for a float64 run.
    pub const F64: Tolerance = Tolerance { rtol: 1e-9, atol: 1e-12 };
    /// Tolerance for a float32 run.
    pub const F32: Tolerance = Tolerance { rtol: 1e-4, atol: 1e-6 };

    /// The tolerance for a dtype.
    pub fn for_dtype(dtype: DType) -> Self {
        if dtype == DType::F64 {
            Self::F64
        } else {
            Self::F32
        }
    }
}

/// Comparison of one tensor against its reference.
#[derive(Debug, Clone)]
pub struct TensorCheck {
    /// Tensor name in the case file.
    pub name: String,
    /// `max|a − g|`.
    pub max_abs_err: f64,
    /// `max|g|`.
    pub ref_max: f64,
    /// Whether the comparison must be exact (spike counts).
    pub exact: bool,
    /// Whether it passed.
    pub passed: bool,
}

impl TensorCheck {
    /// Norm-wise relative error `max|a − g| / max|g|` (the absolute error when `max|g| = 0`).
    pub fn relative_error(&self) -> f64 {
        if self.ref_max > 0.0 {
            self.max_abs_err / self.ref_max
        } else {
            self.max_abs_err
        }
    }
}

/// Which training pass a golden replay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainingPass {
    /// The layer-major forward pass through Candle's autograd (every device).
    Autograd,
    /// The taped pass of the CPU: byte tape, hand-written backward, window in parts
    /// ([`SpikingNetwork::forward_taped`]).
    Taped,
}

impl TrainingPass {
    /// Both passes.
    pub const ALL: [TrainingPass; 2] = [TrainingPass::Autograd, TrainingPass::Taped];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            TrainingPass::Autograd => "autograd",
            TrainingPass::Taped => "taped",
        }
    }
}

/// The result of replaying one case in one dtype.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// Case name.
    pub case: String,
    /// The dtype the step ran in.
    pub dtype: DType,
    /// The training pass that ran.
    pub pass: TrainingPass,
    /// Every comparison made.
    pub checks: Vec<TensorCheck>,
}

impl CaseReport {
    /// The worst relative error among checks whose name starts with `prefix`.
    pub fn worst(&self, prefix: &str) -> Option<f64> {
        self.worst_where(|name| name.starts_with(prefix))
    }

    /// The worst relative error among checks whose name ends with `suffix`.
    pub fn worst_matching(&self, suffix: &str) -> Option<f64> {
        self.worst_where(|name| name.ends_with(suffix))
    }

    fn worst_where(&self, keep: impl Fn(&str) -> bool) -> Option<f64> {
        self.checks.iter().filter(|c| keep(&c.name)).map(TensorCheck::relative_error).reduce(f64::max)
    }

    /// Whether every comparison passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// A golden case loaded from disk.
#[derive(Debug)]
pub struct GoldenCase {
    /// Case name (file stem).
    pub name: String,
    /// The network, as described by the sidecar.
    pub spec: NetworkSpec,
    tensors: HashMap<String, Tensor>,
    lif_layers: Vec<String>,
    pool_layers: Vec<String>,
    path: PathBuf,
}

/// Lists the cases (`*.json` with a matching `*.safetensors`) in a folder, sorted by name.
pub fn find_cases(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let mut cases = Vec::new();
    for e in entries {
        let p = e.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?.path();
        if p.extension().is_some_and(|x| x == "json") && p.with_extension("safetensors").is_file() {
            cases.push(p);
        }
    }
    cases.sort();
    Ok(cases)
}

impl GoldenCase {
    /// Loads a case from its sidecar path (`<case>.json`); the tensors come from `<case>.safetensors`.
    pub fn load(json_path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Golden { path: json_path.to_path_buf(), msg };
        let text =
            std::fs::read_to_string(json_path).map_err(|source| Error::Io { path: json_path.to_path_buf(), source })?;
        let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let mut spec_value = meta.get("spec").cloned().ok_or_else(|| bad("no 'spec' object".into()))?;
        // The sidecar keeps the dropout probability at the top level.
        if let (Some(obj), Some(p)) = (spec_value.as_object_mut(), meta.get("dropout_p")) {
            obj.entry("dropout_p").or_insert(p.clone());
        }
        let spec: NetworkSpec = serde_json::from_value(spec_value).map_err(|e| bad(format!("bad spec: {e}")))?;
        spec.validate().map_err(|e| bad(e.to_string()))?;
        let names = |key: &str| -> Vec<String> {
            meta.get(key)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let mut lif_layers = names("lif_layers");
        let mut pool_layers = names("pool_layers");
        if lif_layers.is_empty() {
            for l in &spec.layers {
                match l {
                    LayerSpec::Conv(_) | LayerSpec::Fc(_) => lif_layers.push(l.name().to_string()),
                    LayerSpec::Pool(_) => pool_layers.push(l.name().to_string()),
                    LayerSpec::Readout(_) => {}
                }
            }
        }
        let st_path = json_path.with_extension("safetensors");
        let tensors = candle_core::safetensors::load(&st_path, &Device::Cpu)
            .map_err(|e| Error::Golden { path: st_path.clone(), msg: e.to_string() })?;
        let name = json_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { name, spec, tensors, lif_layers, pool_layers, path: st_path })
    }

    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Golden { path: self.path.clone(), msg: format!("missing tensor '{name}'") })
    }

    /// Replays the training step in `dtype` through `pass` on the CPU and compares every reference tensor.
    pub fn check(&self, dtype: DType, pass: TrainingPass) -> Result<CaseReport> {
        self.check_on(dtype, pass, &Device::Cpu)
    }

    /// [`GoldenCase::check`] on `device` (the taped pass runs on the CPU only; on other devices it fails
    /// with an error).
    pub fn check_on(&self, dtype: DType, pass: TrainingPass, device: &Device) -> Result<CaseReport> {
        let tol = Tolerance::for_dtype(dtype);
        let bad = |msg: String| Error::Golden { path: self.path.clone(), msg };
        let weights: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .filter(|(k, _)| k.ends_with(".weight") && !k.starts_with("grad."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let net =
            SpikingNetwork::from_weights(self.spec.clone(), weights, dtype, device).map_err(|e| bad(e.to_string()))?;
        let mut masks = Masks::new();
        for (k, v) in &self.tensors {
            if let Some(layer) = k.strip_prefix("mask.") {
                masks.insert(layer.to_string(), v.to_dtype(dtype)?.to_device(device)?);
            }
        }
        let input = self.tensor("input.spikes")?.to_dtype(dtype)?.to_device(device)?;
        let labels: Vec<u32> = self
            .tensor("labels")?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|l| u32::try_from(l).map_err(|_| bad(format!("negative label {l}"))))
            .collect::<Result<_>>()?;

        // Readout, loss, weight gradients and every spiking layer's (name, is_pool, spike window).
        let (output, loss, grads, windows) = match pass {
            TrainingPass::Autograd => {
                let opts = ForwardOptions { track_gradients: true, keep_spikes: true, ..ForwardOptions::default() };
                let out = net.forward(&input, &masks, opts).map_err(|e| bad(e.to_string()))?;
                let loss = sum_squared_error(&out.output, &labels)?;
                let grads = Gradients::from_grad_store(&loss.backward()?, &net);
                let windows: Vec<(String, bool, Tensor)> =
                    out.activity.into_iter().filter_map(|a| Some((a.name, a.is_pool, a.spikes?))).collect();
                (out.output, loss, grads, windows)
            }
            TrainingPass::Taped => {
                let (out, tape) = net.forward_taped(&input, &masks).map_err(|e| bad(e.to_string()))?;
                let mut windows = Vec::new();
                for a in out.activity {
                    if let Some(w) = tape.spike_window(&net, &a.name, dtype).map_err(|e| bad(e.to_string()))? {
                        windows.push((a.name, a.is_pool, w));
                    }
                }
                let readout = Var::from_tensor(&out.output)?;
                let loss = sum_squared_error(readout.as_tensor(), &labels)?;
                let grad_output = loss.backward()?.get(readout.as_tensor()).cloned();
                let grad_output = grad_output.ok_or_else(|| bad("the loss does not reach the readout".into()))?;
                let grads = net.backward(tape, &grad_output).map_err(|e| bad(e.to_string()))?;
                (out.output, loss, grads, windows)
            }
        };

        let mut checks = Vec::new();
        let mut compare = |name: &str, ours: &Tensor, exact: bool| -> Result<()> {
            let reference = self.tensor(name)?.to_dtype(DType::F64)?;
            let ours = ours.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
            if ours.dims() != reference.dims() {
                return Err(bad(format!("'{name}': shape {:?}, reference {:?}", ours.dims(), reference.dims())));
            }
            let max_abs_err = (&ours - &reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            let ref_max = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            let passed = if exact { max_abs_err == 0.0 } else { max_abs_err <= tol.rtol * ref_max + tol.atol };
            checks.push(TensorCheck { name: name.to_string(), max_abs_err, ref_max, exact, passed });
            Ok(())
        };
        compare("output", &output, false)?;
        compare("loss", &loss, false)?;
        for (name, var) in net.weights() {
            let g = grads.get(name).cloned().unwrap_or(var.as_tensor().zeros_like()?);
            compare(&format!("grad.{name}"), &g, false)?;
        }
        for (layer, is_pool, spikes) in &windows {
            let counted = if self.lif_layers.contains(layer) || self.pool_layers.contains(layer) {
                format!("stats.{layer}.total_spikes")
            } else {
                continue;
            };
            if self.tensors.contains_key(&counted) {
                compare(&counted, &spikes.sum(0)?, true)?;
            }
            let ng_name = format!("stats.{layer}.ng");
            if !is_pool && self.tensors.contains_key(&ng_name) {
                let counted_spikes = match (self.spec.stats_after_mask, masks.get(layer)) {
                    (true, Some(m)) => spikes.broadcast_mul(&m.unsqueeze(0)?)?,
                    _ => spikes.clone(),
                };
                let ng = leak_correction_of(&counted_spikes, self.spec.leak)?;
                compare(&ng_name, &ng, false)?;
            }
        }
        Ok(CaseReport { case: self.name.clone(), dtype, pass, checks })
    }
}

/// The leak-correction factor `NG` of every neuron of a spike window `[T, ...]`, computed with tensor ops (any
/// device) from its statistics: the count `Tot = Σ_t s(t)` and the leak-filtered count
/// `LF = Σ_t λ^(T−t) s(t)`, `NG = [LF > ε] + ln(λ)·LF / (Tot + [Tot < ε])` (see
/// [`snn_core::kernels::leak_correction`]; 0 for neurons that never fired). This is the checker's own
/// computation of what the neuron op computes inside its backward pass.
fn leak_correction_of(spikes: &Tensor, leak: f64) -> Result<Tensor> {
    let spikes = spikes.detach();
    let steps = spikes.dim(0)?;
    let decay: Vec<f64> = (0..steps).map(|t| leak.powi((steps - 1 - t) as i32)).collect();
    let mut shape = vec![1usize; spikes.rank()];
    shape[0] = steps;
    let decay = Tensor::from_vec(decay, shape, spikes.device())?.to_dtype(spikes.dtype())?;
    let count = spikes.sum(0)?;
    let leaky_count = spikes.broadcast_mul(&decay)?.sum(0)?;
    let dtype = count.dtype();
    let fired = leaky_count.gt(snn_core::NG_EPS)?.to_dtype(dtype)?;
    let guard = count.lt(snn_core::NG_EPS)?.to_dtype(dtype)?;
    let ratio = leaky_count.div(&(&count + guard)?)?;
    Ok((fired + (ratio * leak.ln())?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use snn_core::kernels::leak_correction;

    #[test]
    fn the_leak_correction_matches_the_scalar_definition() -> Result<()> {
        // Two neurons over T = 3: spikes at t = 1, 3 and never.
        let s = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 0.0, 1.0, 0.0], (3, 2), &Device::Cpu)?;
        let ng = leak_correction_of(&s, 0.99)?.to_vec1::<f64>()?;
        let lf = 0.99f64.powi(2) + 1.0;
        assert!((ng[0] - leak_correction(lf, 2.0, 0.99)).abs() < 1e-15);
        assert_eq!(ng[1], 0.0);
        Ok(())
    }
}
