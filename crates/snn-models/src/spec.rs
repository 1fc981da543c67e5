//! Declarative description of a spiking network.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use snn_core::{Neuron, PseudoDerivative};

use crate::{Error, Result};

fn default_one() -> usize {
    1
}
fn default_leak() -> f64 {
    Neuron::PAPER_LIF.leak
}
fn default_threshold() -> f64 {
    Neuron::PAPER_LIF.threshold
}
pub(crate) fn default_pool_threshold() -> f64 {
    Neuron::PAPER_POOL_IF.threshold
}
fn default_init_gain() -> f64 {
    2.0
}
fn default_input_gain() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}

/// A spiking network: input geometry, neuron constants and the layers in execution order.
///
/// The JSON form is the `spec` object of the golden-vector sidecars, with optional extra fields
/// (`dropout_p`, `init_gain`, `input_gain`, `name`) that default to the paper's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Architecture name (e.g. `lenet`).
    #[serde(default)]
    pub name: String,
    /// Family the architecture belongs to (`lenet`, `vgg`, `resnet`, ...), informational.
    #[serde(default)]
    pub family: String,
    /// Per-sample input shape `[C, H, W]`.
    pub input_shape: Vec<usize>,
    /// Whether inputs are signed (normalised pixels, spikes in {−1, 0, 1}).
    #[serde(default)]
    pub input_signed: bool,
    /// Rate-encoder gain: firing probability per step = `input_gain · |x|` (0.5 for the MNIST recipe).
    #[serde(default = "default_input_gain")]
    pub input_gain: f64,
    /// How static images become the input window: Poisson spikes (the paper) or the values themselves.
    #[serde(default, skip_serializing_if = "InputEncoding::is_poisson")]
    pub input_encoding: InputEncoding,
    /// Per-channel mean subtracted from pixels in [0, 1] before encoding (empty: no normalisation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_mean: Vec<f64>,
    /// Per-channel standard deviation dividing the centred pixels (empty: no normalisation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_std: Vec<f64>,
    /// Whether the leak-correction statistics count spikes after the dropout mask (LeNet/VGG order of the
    /// authors' code) or before (ResNet order). Gradients do not depend on it.
    #[serde(default = "default_true")]
    pub stats_after_mask: bool,
    /// Membrane leak λ of the LIF neurons and of the readout.
    #[serde(default = "default_leak")]
    pub leak: f64,
    /// Threshold θ of the LIF neurons and normaliser of the readout.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Threshold of the IF neurons after pooling.
    #[serde(default = "default_pool_threshold")]
    pub pool_threshold: f64,
    /// Dropout probability of the layers whose `dropout` flag is set.
    #[serde(default)]
    pub dropout_p: f64,
    /// Weight initialisation: `N(0, sqrt(init_gain / fan_in))` (2 = He normal, 1 for the paper's ResNet).
    #[serde(default = "default_init_gain")]
    pub init_gain: f64,
    /// Layers in execution order; the last one must be the readout.
    pub layers: Vec<LayerSpec>,
}

/// How a network codes static images into its input window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputEncoding {
    /// Bernoulli rate coding with a fresh draw at every step ([`snn_core::RateEncoder`] with the spec's
    /// `input_gain` and sign convention): the paper's coding.
    #[default]
    Poisson,
    /// The normalised image as a constant input current at every step ([`snn_core::DirectEncoder`]);
    /// `input_gain` does not apply. The first layer's synaptic input is then real-valued.
    Direct,
}

impl InputEncoding {
    /// Whether this is the paper's Poisson coding.
    pub fn is_poisson(&self) -> bool {
        *self == InputEncoding::Poisson
    }
}

/// One layer of a [`NetworkSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LayerSpec {
    /// 2-D convolution (no bias) followed by LIF neurons.
    Conv(ConvSpec),
    /// Linear map (no bias) followed by LIF neurons.
    Fc(FcSpec),
    /// Average pooling followed by IF neurons.
    Pool(PoolSpec),
    /// Linear map into the non-spiking leaky readout; always last.
    Readout(ReadoutSpec),
}

/// A spiking convolution layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Unique layer name; its weight is `<name>.weight` with shape `[out, in, k, k]`.
    pub name: String,
    /// Name of the layer whose output this layer reads, or `input`.
    pub input: String,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    #[serde(default = "default_one")]
    pub stride: usize,
    /// Zero padding on each side.
    #[serde(default)]
    pub padding: usize,
    /// Whether a dropout mask multiplies this layer's spikes during training.
    #[serde(default)]
    pub dropout: bool,
    /// Optional residual shortcut added into this layer's membrane input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<ShortcutSpec>,
}

/// A residual shortcut, added to the input current of the layer that owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShortcutSpec {
    /// Name (the weight of a `conv1x1` shortcut is `<name>.weight`, shape `[out, in, 1, 1]`).
    pub name: String,
    /// How the shortcut maps its input.
    pub kind: ShortcutKind,
    /// Name of the layer whose output the shortcut reads.
    pub input: String,
    /// Spatial stride.
    #[serde(default = "default_one")]
    pub stride: usize,
}

/// The mapping of a residual shortcut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShortcutKind {
    /// 1×1 convolution without padding, with weights.
    Conv1x1,
    /// Identity subsampling: takes pixel `(s·i, s·j)`; no weights.
    Subsample,
}

/// A spiking fully connected layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FcSpec {
    /// Unique layer name; weight `<name>.weight`, shape `[out, in]`.
    pub name: String,
    /// Input layer name; its output is flattened in C order.
    pub input: String,
    /// Input features.
    pub in_features: usize,
    /// Output neurons.
    pub out_features: usize,
    /// Whether a dropout mask multiplies this layer's spikes during training.
    #[serde(default)]
    pub dropout: bool,
}

/// Average pooling followed by IF neurons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Unique layer name.
    pub name: String,
    /// Input layer name.
    pub input: String,
    /// Pooling window (square); must equal the stride.
    #[serde(default = "default_two")]
    pub kernel: usize,
    /// Pooling stride.
    #[serde(default = "default_two")]
    pub stride: usize,
    /// Padding (must be 0).
    #[serde(default)]
    pub padding: usize,
}

fn default_two() -> usize {
    2
}

/// The output layer: linear map into the leaky readout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadoutSpec {
    /// Unique layer name; weight `<name>.weight`, shape `[classes, in]`.
    pub name: String,
    /// Input layer name; flattened in C order.
    pub input: String,
    /// Input features.
    pub in_features: usize,
    /// Number of classes.
    pub out_features: usize,
}

impl LayerSpec {
    /// The layer's name.
    pub fn name(&self) -> &str {
        match self {
            LayerSpec::Conv(c) => &c.name,
            LayerSpec::Fc(f) => &f.name,
            LayerSpec::Pool(p) => &p.name,
            LayerSpec::Readout(r) => &r.name,
        }
    }

    /// The name of the layer this layer reads.
    pub fn input(&self) -> &str {
        match self {
            LayerSpec::Conv(c) => &c.input,
            LayerSpec::Fc(f) => &f.input,
            LayerSpec::Pool(p) => &p.input,
            LayerSpec::Readout(r) => &r.input,
        }
    }
}

/// Name of the network input in layer `input` fields.
pub const INPUT: &str = "input";

/// A parameter tensor the spec requires: name and shape.
pub(crate) type WeightShape = (String, Vec<usize>);

impl NetworkSpec {
    /// Parses a spec from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: NetworkSpec =
            serde_json::from_str(text).map_err(|e| Error::Spec(format!("cannot parse JSON: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Serialises the spec to JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The input window `[T, B, C, H, W]` of a batch of images (`pixels` laid out `[B, C, H, W]`, already
    /// normalised; one generator per sample in `rngs`), coded as [`Self::input_encoding`] says. Poisson
    /// coding draws sample `b`'s spikes from `rngs[b]` alone; direct coding draws nothing.
    pub fn encode_input<R: rand::Rng + Send>(
        &self,
        pixels: &[f32],
        rngs: &mut [R],
        timesteps: usize,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor> {
        let shape = [&[rngs.len()][..], &self.input_shape[..]].concat();
        Ok(match self.input_encoding {
            InputEncoding::Poisson => {
                snn_core::RateEncoder::new(self.input_gain)?.encode(pixels, &shape, timesteps, rngs, dtype, device)?
            }
            InputEncoding::Direct => snn_core::DirectEncoder.encode(pixels, &shape, timesteps, dtype, device)?,
        })
    }

    /// Normalises pixels in [0, 1] laid out as `[B, C, H, W]` in place with the spec's per-channel mean and
    /// standard deviation (no-op when none are set).
    pub fn normalize(&self, pixels: &mut [f32]) {
        if self.input_mean.is_empty() {
            return;
        }
        let plane = self.input_shape[1] * self.input_shape[2];
        let channels = self.input_shape[0];
        for (i, chunk) in pixels.chunks_mut(plane).enumerate() {
            let c = i % channels;
            let (m, s) = (self.input_mean[c] as f32, self.input_std[c] as f32);
            chunk.iter_mut().for_each(|x| *x = (*x - m) / s);
        }
    }

    /// The LIF neuron of the hidden layers.
    pub fn lif_neuron(&self) -> Result<Neuron> {
        Ok(Neuron::lif(self.threshold, self.leak)?)
    }

    /// The IF neuron after pooling.
    pub fn pool_neuron(&self) -> Result<Neuron> {
        Ok(Neuron::new(self.pool_threshold, 1.0, PseudoDerivative::Unit)?)
    }

    /// Number of classes (outputs of the readout).
    pub fn classes(&self) -> usize {
        match self.layers.last() {
            Some(LayerSpec::Readout(r)) => r.out_features,
            _ => 0,
        }
    }

    /// Checks the spec and returns the per-sample output shape of every layer, by name.
    pub fn output_shapes(&self) -> Result<HashMap<String, Vec<usize>>> {
        self.check_constants()?;
        let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
        shapes.insert(INPUT.to_string(), self.input_shape.clone());
        let n = self.layers.len();
        if n == 0 {
            return spec_error("no layers".into());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let name = layer.name();
            if name.is_empty() || shapes.contains_key(name) {
                return spec_error(format!("layer name '{name}' is empty or used twice"));
            }
            let Some(in_shape) = shapes.get(layer.input()) else {
                return spec_error(format!("layer '{name}' reads '{}', which is not an earlier layer", layer.input()));
            };
            if (i + 1 == n) != matches!(layer, LayerSpec::Readout(_)) {
                return spec_error("exactly one readout layer, and it must be last".into());
            }
            let out = match layer {
                LayerSpec::Conv(c) => c.output_shape(in_shape, &shapes)?,
                LayerSpec::Fc(f) => flat_output(name, "fc", f.in_features, f.out_features, in_shape)?,
                LayerSpec::Readout(r) => flat_output(name, "readout", r.in_features, r.out_features, in_shape)?,
                LayerSpec::Pool(p) => p.output_shape(in_shape)?,
            };
            shapes.insert(name.to_string(), out);
        }
        Ok(shapes)
    }

    /// Checks the input shape, the input coding and normalisation, and the neuron and dropout constants.
    fn check_constants(&self) -> Result<()> {
        if self.input_shape.len() != 3 || self.input_shape.contains(&0) {
            return spec_error(format!(
                "input_shape must be [C, H, W] with positive sizes, got {:?}",
                self.input_shape
            ));
        }
        if !(self.dropout_p >= 0.0 && self.dropout_p < 1.0) {
            return spec_error(format!("dropout_p must lie in [0, 1), got {}", self.dropout_p));
        }
        if !(self.init_gain.is_finite() && self.init_gain > 0.0) {
            return spec_error(format!("init_gain must be positive, got {}", self.init_gain));
        }
        if !(self.input_gain.is_finite() && self.input_gain >= 0.0) {
            return spec_error(format!("input_gain must be >= 0, got {}", self.input_gain));
        }
        if self.input_mean.len() != self.input_std.len()
            || !(self.input_mean.is_empty() || self.input_mean.len() == self.input_shape[0])
        {
            return spec_error(format!(
                "input_mean and input_std need one value per input channel ({}), got {} and {}",
                self.input_shape[0],
                self.input_mean.len(),
                self.input_std.len()
            ));
        }
        if self.input_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.input_mean.iter().any(|m| !m.is_finite())
        {
            return spec_error("input_std must be positive and input_mean finite".into());
        }
        self.lif_neuron()?;
        self.pool_neuron()?;
        Ok(())
    }

    /// Checks the spec for consistency (shapes, names, order, constants).
    pub fn validate(&self) -> Result<()> {
        self.output_shapes().map(|_| ())
    }

    /// The weights the spec requires, in layer order, with their shapes and fan-in.
    pub(crate) fn weight_shapes(&self) -> Result<Vec<WeightShape>> {
        let shapes = self.output_shapes()?;
        let mut out = Vec::new();
        for layer in &self.layers {
            match layer {
                LayerSpec::Conv(c) => {
                    out.push((format!("{}.weight", c.name), vec![c.out_channels, c.in_channels, c.kernel, c.kernel]));
                    if let Some(sc) = &c.shortcut {
                        if sc.kind == ShortcutKind::Conv1x1 {
                            let in_ch = shapes[&sc.input][0];
                            out.push((format!("{}.weight", sc.name), vec![c.out_channels, in_ch, 1, 1]));
                        }
                    }
                }
                LayerSpec::Fc(f) => out.push((format!("{}.weight", f.name), vec![f.out_features, f.in_features])),
                LayerSpec::Readout(r) => out.push((format!("{}.weight", r.name), vec![r.out_features, r.in_features])),
                LayerSpec::Pool(_) => {}
            }
        }
        Ok(out)
    }

    /// Dense multiply-accumulates per sample and time step of every weight layer (shortcut convolutions
    /// included), in layer order: `outputs × fan-in` for a convolution, `in × out` for a linear map.
    /// This is also the MAC count of the ANN with the same architecture per image.
    pub fn dense_macs(&self) -> Result<Vec<(String, u64)>> {
        let shapes = self.output_shapes()?;
        let mut out = Vec::new();
        for layer in &self.layers {
            match layer {
                LayerSpec::Conv(c) => {
                    let o = &shapes[&c.name];
                    let outputs = (o[0] * o[1] * o[2]) as u64;
                    let mut macs = outputs * (c.in_channels * c.kernel * c.kernel) as u64;
                    if let Some(sc) = &c.shortcut {
                        if sc.kind == ShortcutKind::Conv1x1 {
                            macs += outputs * shapes[&sc.input][0] as u64;
                        }
                    }
                    out.push((c.name.clone(), macs));
                }
                LayerSpec::Fc(f) => out.push((f.name.clone(), (f.in_features * f.out_features) as u64)),
                LayerSpec::Readout(r) => out.push((r.name.clone(), (r.in_features * r.out_features) as u64)),
                LayerSpec::Pool(_) => {}
            }
        }
        Ok(out)
    }

    /// Total number of trainable parameters.
    pub fn parameter_count(&self) -> Result<usize> {
        Ok(self.weight_shapes()?.iter().map(|(_, s)| s.iter().product::<usize>()).sum())
    }
}

fn spec_error<T>(msg: String) -> Result<T> {
    Err(Error::Spec(msg))
}

/// The output shape `[outputs]` of a layer that flattens its input (fully connected, readout), after checking
/// the input size.
fn flat_output(name: &str, kind: &str, inputs: usize, outputs: usize, in_shape: &[usize]) -> Result<Vec<usize>> {
    let flat: usize = in_shape.iter().product();
    if flat != inputs || outputs == 0 {
        return spec_error(format!("{kind} '{name}' expects {inputs} inputs, its input has {flat} ({in_shape:?})"));
    }
    Ok(vec![outputs])
}

impl ConvSpec {
    /// The output shape `[O, H', W']` for an input of `in_shape`, after checking the convolution and its
    /// shortcut against the shapes of the earlier layers.
    fn output_shape(&self, in_shape: &[usize], shapes: &HashMap<String, Vec<usize>>) -> Result<Vec<usize>> {
        let name = &self.name;
        if in_shape.len() != 3 || in_shape[0] != self.in_channels {
            return spec_error(format!(
                "conv '{name}' expects {} input channels, its input has shape {in_shape:?}",
                self.in_channels
            ));
        }
        if self.kernel == 0 || self.stride == 0 || self.out_channels == 0 {
            return spec_error(format!("conv '{name}': kernel, stride and out_channels must be positive"));
        }
        let side = |x: usize| (x + 2 * self.padding).checked_sub(self.kernel).map(|v| v / self.stride + 1);
        let (Some(h), Some(w)) = (side(in_shape[1]), side(in_shape[2])) else {
            return spec_error(format!("conv '{name}': kernel {} larger than padded input {in_shape:?}", self.kernel));
        };
        let out = vec![self.out_channels, h, w];
        if let Some(sc) = &self.shortcut {
            sc.check(name, &out, shapes)?;
        }
        Ok(out)
    }
}

impl ShortcutSpec {
    /// Checks that the shortcut maps its input to `out`, the shape of conv `owner`'s output.
    fn check(&self, owner: &str, out: &[usize], shapes: &HashMap<String, Vec<usize>>) -> Result<()> {
        let Some(sc_in) = shapes.get(&self.input) else {
            return spec_error(format!("shortcut '{}' reads unknown layer '{}'", self.name, self.input));
        };
        if sc_in.len() != 3 || self.stride == 0 {
            return spec_error(format!("shortcut '{}' needs a [C, H, W] input and stride > 0", self.name));
        }
        let sub = |x: usize| (x - 1) / self.stride + 1;
        let channels = match self.kind {
            ShortcutKind::Conv1x1 => out[0],
            ShortcutKind::Subsample => sc_in[0],
        };
        let sc_out = vec![channels, sub(sc_in[1]), sub(sc_in[2])];
        if sc_out != out {
            return spec_error(format!("shortcut '{}' gives {sc_out:?} but conv '{owner}' gives {out:?}", self.name));
        }
        if shapes.contains_key(&self.name) || self.name == owner {
            return spec_error(format!("shortcut name '{}' is used twice", self.name));
        }
        Ok(())
    }
}

impl PoolSpec {
    /// The output shape `[C, ⌊H/k⌋, ⌊W/k⌋]` for an input of `in_shape`.
    fn output_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        if self.kernel == 0 || self.kernel != self.stride || self.padding != 0 {
            return spec_error(format!("pool '{}': kernel must equal stride and padding must be 0", self.name));
        }
        if in_shape.len() != 3 || in_shape[1] < self.kernel || in_shape[2] < self.kernel {
            return spec_error(format!("pool '{}': input {in_shape:?} too small", self.name));
        }
        Ok(vec![in_shape[0], in_shape[1] / self.kernel, in_shape[2] / self.kernel])
    }
}
