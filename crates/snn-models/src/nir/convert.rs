//! Checkpoint ⇄ NIR graph.
//!
//! The discrete neurons of this crate map to NIR's continuous-time neurons by the forward-Euler step of
//! length `dt`, `v[t] = v[t−1] + (dt/τ)·((v_leak − v[t−1]) + R·I[t])`:
//!
//! | this crate | NIR | parameters |
//! |---|---|---|
//! | LIF: `U[t] = λ·U[t−1] + I[t]`, spike and reset to 0 when `U > θ` | `LIF` | `τ = dt/(1−λ)`, `R = τ/dt`, `v_leak = 0`, `v_threshold = θ`, `v_reset = 0` |
//! | pooling IF: `P[t] = P[t−1] + avgpool(o[t])`, threshold θₚ | `AvgPool2d` → `IF` | `R = 1/dt`, `v_threshold = θₚ`, `v_reset = 0` |
//! | readout: `M[t] = λ·(M[t−1] + I[t])`, output `M[T]/(θ·T)` | `Linear` → `LI` | `τ = dt/(1−λ)`, `R = λ·τ/dt`, `v_leak = 0` |
//!
//! so that `1 − dt/τ = λ` and the input gain `R·dt/τ` is 1 (the readout's is λ). The readout's division by
//! `θ·T`, the input coding and dropout have no NIR form: they travel as graph metadata (with the whole
//! spec, so a round trip is exact).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};

use super::graph::{NirArray, NirData, NirGraph, NirNode, NirValue};
use crate::spec::{ConvSpec, FcSpec, LayerSpec, NetworkSpec, PoolSpec, ReadoutSpec, ShortcutKind, ShortcutSpec, INPUT};
use crate::{Checkpoint, Error, Result};

/// Metadata key of the exported network spec (JSON).
pub const SPEC_METADATA: &str = "snn.spec";
/// Metadata key of the time step `dt` the neuron parameters assume.
pub const DT_METADATA: &str = "dt";
/// Name of the graph's input node.
pub const INPUT_NODE: &str = "input";
/// Name of the graph's output node.
pub const OUTPUT_NODE: &str = "output";

/// Relative tolerance under which two neuron constants stored as 32-bit floats count as equal.
const F32_TOLERANCE: f64 = 1e-6;

/// How [`export`] writes a network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExportOptions {
    /// The time step, in the time unit of the neurons' `τ`: one step of this crate's recurrences lasts
    /// `dt`. The default 1 measures time in steps; consumers with a fixed step of their own need theirs
    /// (snnTorch's importer assumes 1e-4).
    pub dt: f64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { dt: 1.0 }
    }
}

/// How [`import`] reads a graph.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    /// The time step the file's `τ` values assume; when `None`, the file's own `dt` metadata (written by
    /// [`export`]); a file without either is refused.
    pub dt: Option<f64>,
    /// Name of the network when the file carries no spec of this crate.
    pub name: Option<String>,
}

/// The NIR node that carries a layer's spikes (or the network input).
fn source_node(layer: &str, spec: &NetworkSpec) -> String {
    if layer == INPUT {
        return INPUT_NODE.into();
    }
    match spec.layers.iter().find(|l| l.name() == layer) {
        Some(LayerSpec::Pool(_)) => format!("{layer}.if"),
        Some(LayerSpec::Readout(_)) => format!("{layer}.li"),
        _ => format!("{layer}.lif"),
    }
}

/// A weight tensor as a NIR array of the same element type (16-bit floats widen to 32 bits).
fn tensor_array(t: &Tensor) -> Result<NirArray> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let data = match t.dtype() {
        DType::F64 => NirData::F64(flat.to_vec1::<f64>()?),
        _ => NirData::F32(flat.to_dtype(DType::F32)?.to_vec1::<f32>()?),
    };
    Ok(NirArray { shape, data })
}

/// Writes a checkpoint as a NIR graph: the convolutions and linear maps with their weights (zero biases
/// where NIR requires one), each followed by its neurons (see the module docs for the parameters),
/// residual shortcuts as second edges into a layer's neurons (a 1×1 `Conv2d`, or an `AvgPool2d` of window
/// 1 for identity subsampling), and `Flatten` nodes before fully connected layers that read feature maps.
/// Every node is named after its layer (`cnn1`, `cnn1.lif`, `pool1`, `pool1.if`, `fc1`, `fc1.li`).
pub fn export(checkpoint: &Checkpoint, opts: &ExportOptions) -> Result<NirGraph> {
    let spec = &checkpoint.spec;
    let shapes = spec.output_shapes()?;
    let dt = checked_dt(opts.dt)?;
    let weight = |name: &str| -> Result<NirArray> {
        let key = format!("{name}.weight");
        let t = checkpoint.weights.get(&key).ok_or_else(|| Error::Weights(format!("missing tensor '{key}'")))?;
        tensor_array(t)
    };
    let (lambda, theta) = (spec.leak, spec.threshold);
    let tau = dt / (1.0 - lambda);
    let mut g = NirGraph::default();
    let add = |g: &mut NirGraph, name: String, node: NirNode| -> Result<()> {
        if g.nodes.insert(name.clone(), node).is_some() {
            return Err(Error::Nir(format!("two nodes would be named '{name}'; rename the layer")));
        }
        Ok(())
    };
    add(&mut g, INPUT_NODE.into(), NirNode::Input { shape: spec.input_shape.clone() })?;
    for layer in &spec.layers {
        let name = layer.name().to_string();
        let out_shape = &shapes[&name];
        let input = source_node(layer.input(), spec);
        let in_shape = &shapes[layer.input()];
        match layer {
            LayerSpec::Conv(c) => {
                let w = weight(&c.name)?;
                let zeros = zero_bias(&w);
                add(&mut g, name.clone(), conv_node(w, zeros, c.stride, c.padding, in_shape))?;
                g.edges.push((input, name.clone()));
                let lif = format!("{name}.lif");
                add(&mut g, lif.clone(), lif_node(out_shape, tau, dt, theta))?;
                g.edges.push((name.clone(), lif.clone()));
                if let Some(sc) = &c.shortcut {
                    let sc_in = source_node(&sc.input, spec);
                    let node = match sc.kind {
                        ShortcutKind::Conv1x1 => {
                            let w = weight(&sc.name)?;
                            let zeros = zero_bias(&w);
                            conv_node(w, zeros, sc.stride, 0, &shapes[&sc.input])
                        }
                        ShortcutKind::Subsample => {
                            NirNode::AvgPool2d { kernel: [1, 1], stride: [sc.stride; 2], padding: [0, 0] }
                        }
                    };
                    add(&mut g, sc.name.clone(), node)?;
                    g.edges.push((sc_in, sc.name.clone()));
                    g.edges.push((sc.name.clone(), lif));
                }
            }
            LayerSpec::Pool(p) => {
                add(
                    &mut g,
                    name.clone(),
                    NirNode::AvgPool2d { kernel: [p.kernel; 2], stride: [p.stride; 2], padding: [0, 0] },
                )?;
                g.edges.push((input, name.clone()));
                let neuron = NirNode::If {
                    r: NirArray::filled_f32(out_shape, (1.0 / dt) as f32),
                    v_threshold: NirArray::filled_f32(out_shape, spec.pool_threshold as f32),
                    v_reset: NirArray::filled_f32(out_shape, 0.0),
                };
                add(&mut g, format!("{name}.if"), neuron)?;
                g.edges.push((name.clone(), format!("{name}.if")));
            }
            LayerSpec::Fc(_) | LayerSpec::Readout(_) => {
                let mut from = input;
                if in_shape.len() > 1 {
                    let flat = format!("{name}.flatten");
                    add(
                        &mut g,
                        flat.clone(),
                        NirNode::Flatten { start_dim: 0, end_dim: -1, input_shape: Some(in_shape.clone()) },
                    )?;
                    g.edges.push((from, flat.clone()));
                    from = flat;
                }
                add(&mut g, name.clone(), NirNode::Linear { weight: weight(&name)? })?;
                g.edges.push((from, name.clone()));
                let (neuron_name, neuron) = if matches!(layer, LayerSpec::Readout(_)) {
                    let li = NirNode::Li {
                        tau: NirArray::filled_f32(out_shape, tau as f32),
                        r: NirArray::filled_f32(out_shape, (lambda * tau / dt) as f32),
                        v_leak: NirArray::filled_f32(out_shape, 0.0),
                    };
                    (format!("{name}.li"), li)
                } else {
                    (format!("{name}.lif"), lif_node(out_shape, tau, dt, theta))
                };
                add(&mut g, neuron_name.clone(), neuron)?;
                g.edges.push((name.clone(), neuron_name.clone()));
                if matches!(layer, LayerSpec::Readout(_)) {
                    add(&mut g, OUTPUT_NODE.into(), NirNode::Output { shape: out_shape.clone() })?;
                    g.edges.push((neuron_name, OUTPUT_NODE.into()));
                }
            }
        }
    }
    g.metadata = export_metadata(spec, dt);
    Ok(g)
}

/// The time step, if it is a positive number.
fn checked_dt(dt: f64) -> Result<f64> {
    if !(dt.is_finite() && dt > 0.0) {
        return Err(Error::Nir(format!("the time step dt must be positive, got {dt}")));
    }
    Ok(dt)
}

fn zero_bias(weight: &NirArray) -> NirArray {
    let n = weight.shape[0];
    let data = match weight.data {
        NirData::F64(_) => NirData::F64(vec![0.0; n]),
        _ => NirData::F32(vec![0.0; n]),
    };
    NirArray { shape: vec![n], data }
}

fn conv_node(weight: NirArray, bias: NirArray, stride: usize, padding: usize, in_shape: &[usize]) -> NirNode {
    NirNode::Conv2d {
        weight,
        bias,
        stride: [stride; 2],
        padding: [padding; 2],
        dilation: [1, 1],
        groups: 1,
        input_shape: Some([in_shape[1], in_shape[2]]),
    }
}

fn lif_node(shape: &[usize], tau: f64, dt: f64, theta: f64) -> NirNode {
    NirNode::Lif {
        tau: NirArray::filled_f32(shape, tau as f32),
        r: NirArray::filled_f32(shape, (tau / dt) as f32),
        v_leak: NirArray::filled_f32(shape, 0.0),
        v_threshold: NirArray::filled_f32(shape, theta as f32),
        v_reset: NirArray::filled_f32(shape, 0.0),
    }
}

/// What NIR cannot express, written down: the spec itself, the time step, the input coding, the readout
/// normalisation and dropout.
fn export_metadata(spec: &NetworkSpec, dt: f64) -> BTreeMap<String, NirValue> {
    let text = |s: String| NirValue::Array(NirArray::string(&s));
    let mut m = BTreeMap::new();
    m.insert(SPEC_METADATA.into(), text(spec.to_json()));
    m.insert(DT_METADATA.into(), NirValue::Array(NirArray::float(dt)));
    m.insert("generator".into(), text(format!("snn-models {}", env!("CARGO_PKG_VERSION"))));
    let coding = match spec.input_encoding {
        crate::InputEncoding::Poisson => format!(
            "Poisson rate coding: at every step each input spikes with probability {}·|x| (x the normalised pixel){}",
            spec.input_gain,
            if spec.input_signed { ", with the sign of x" } else { "" }
        ),
        crate::InputEncoding::Direct => "direct coding: the normalised image is the input current at every step".into(),
    };
    m.insert("input_encoding".into(), text(coding));
    m.insert(
        "readout".into(),
        text(format!("the prediction is the argmax of the LI membrane after the last step, divided by threshold·T (threshold {})", spec.threshold)),
    );
    m.insert(
        "training_only".into(),
        text(format!("dropout p = {} on the layers marked in snn.spec; not part of inference", spec.dropout_p)),
    );
    m
}

/// The single value of a neuron parameter that must be equal for every neuron of a node.
fn uniform(node: &str, field: &str, a: &NirArray) -> Result<f64> {
    let v = a.to_f64().ok_or_else(|| Error::Nir(format!("node '{node}': '{field}' is not numeric")))?;
    let Some(&first) = v.first() else {
        return Err(Error::Nir(format!("node '{node}': '{field}' is empty")));
    };
    if v.iter().any(|x| x.to_bits() != first.to_bits()) {
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        return Err(Error::Nir(format!(
            "node '{node}': '{field}' differs between neurons ({lo} to {hi}); this toolkit's layers share one value"
        )));
    }
    Ok(first)
}

/// Whether two constants agree to the precision of 32-bit floats.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= F32_TOLERANCE * a.abs().max(b.abs())
}

/// A factor within 32-bit precision of one is one.
fn snap_to_one(f: f64) -> f64 {
    if close(f, 1.0) {
        1.0
    } else {
        f
    }
}

/// The discrete constants of one neuron node.
#[derive(Debug, Clone, Copy)]
struct Discrete {
    /// Leak per step (1 for IF).
    leak: f64,
    /// Gain of the input current per step.
    gain: f64,
    /// Threshold (infinite for LI).
    threshold: f64,
}

/// What a neuron node is in this toolkit's terms.
enum Role {
    /// The LIF neurons of a convolution or fully connected layer.
    Lif,
    /// The IF neurons after pooling.
    Pool,
    /// The leaky readout.
    Readout,
}

/// Maps a neuron node to its per-step constants with step `dt`.
fn discretise(name: &str, node: &NirNode, dt: f64) -> Result<Discrete> {
    let zero = |field: &str, a: &NirArray| -> Result<()> {
        if uniform(name, field, a)? != 0.0 {
            return Err(Error::Nir(format!(
                "node '{name}': '{field}' must be 0 (this toolkit's neurons rest and reset at 0)"
            )));
        }
        Ok(())
    };
    let leaky = |tau: &NirArray, r: &NirArray| -> Result<(f64, f64)> {
        let (tau, r) = (uniform(name, "tau", tau)?, uniform(name, "r", r)?);
        if tau.is_nan() || tau <= 0.0 {
            return Err(Error::Nir(format!("node '{name}': tau must be positive, got {tau}")));
        }
        let leak = 1.0 - dt / tau;
        if !(0.0..=1.0).contains(&leak) {
            return Err(Error::Nir(format!(
                "node '{name}': tau = {tau} with dt = {dt} gives the leak 1 − dt/tau = {leak}, outside [0, 1]: is dt right?"
            )));
        }
        // An infinite τ with R = τ/dt (no leak, unit gain) is how a non-leaky neuron is sometimes written.
        let gain = if tau.is_infinite() && r.is_infinite() { 1.0 } else { r * dt / tau };
        Ok((if close(leak, 1.0) && tau.is_infinite() { 1.0 } else { leak }, gain))
    };
    match node {
        NirNode::Lif { tau, r, v_leak, v_threshold, v_reset } => {
            zero("v_leak", v_leak)?;
            zero("v_reset", v_reset)?;
            let (leak, gain) = leaky(tau, r)?;
            Ok(Discrete { leak, gain, threshold: uniform(name, "v_threshold", v_threshold)? })
        }
        NirNode::If { r, v_threshold, v_reset } => {
            zero("v_reset", v_reset)?;
            Ok(Discrete {
                leak: 1.0,
                gain: uniform(name, "r", r)? * dt,
                threshold: uniform(name, "v_threshold", v_threshold)?,
            })
        }
        NirNode::Li { tau, r, v_leak } => {
            zero("v_leak", v_leak)?;
            let (leak, gain) = leaky(tau, r)?;
            Ok(Discrete { leak, gain, threshold: f64::INFINITY })
        }
        other => Err(Error::Nir(format!("node '{name}' ({}) is not a neuron", other.type_name()))),
    }
}

/// The per-sample output shape of a node, given the shapes of its inputs; errors name the node and the
/// mismatch.
fn node_output_shape(name: &str, node: &NirNode, inputs: &[(&str, &Vec<usize>)]) -> Result<Vec<usize>> {
    let mismatch = |msg: String| Error::Nir(format!("shape mismatch at node '{name}' ({}): {msg}", node.type_name()));
    if let NirNode::Input { shape } = node {
        if !inputs.is_empty() {
            return Err(mismatch("an input node cannot have incoming edges".into()));
        }
        return Ok(shape.clone());
    }
    let Some((first, in_shape)) = inputs.first() else {
        return Err(mismatch("the node has no incoming edge".into()));
    };
    for (other, s) in &inputs[1..] {
        if s != in_shape {
            return Err(mismatch(format!(
                "inputs '{first}' {in_shape:?} and '{other}' {s:?} differ, so they cannot be summed"
            )));
        }
    }
    let in_shape: &Vec<usize> = in_shape;
    let spatial =
        |kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], dilation: usize| -> Result<[usize; 2]> {
            if in_shape.len() != 3 {
                return Err(mismatch(format!("needs a [C, H, W] input, '{first}' gives {in_shape:?}")));
            }
            let mut out = [0; 2];
            for d in 0..2 {
                if stride[d] == 0 || kernel[d] == 0 {
                    return Err(mismatch(format!("window {kernel:?} and stride {stride:?} must be positive")));
                }
                let span = dilation * (kernel[d] - 1) + 1;
                let padded = in_shape[1 + d] + 2 * padding[d];
                if padded < span {
                    return Err(mismatch(format!(
                        "window {kernel:?} stride {stride:?} does not fit the input {in_shape:?}"
                    )));
                }
                out[d] = (padded - span) / stride[d] + 1;
            }
            Ok(out)
        };
    Ok(match node {
        NirNode::Input { .. } => unreachable!("handled above"),
        NirNode::Output { shape } => {
            if shape.iter().product::<usize>() != in_shape.iter().product::<usize>() {
                return Err(mismatch(format!("declares {shape:?} but receives {in_shape:?} from '{first}'")));
            }
            in_shape.clone()
        }
        NirNode::Conv2d { weight, stride, padding, dilation, groups, input_shape, .. } => {
            if *groups != 1 || dilation != &[1, 1] {
                return Err(mismatch(format!(
                    "groups {groups} and dilation {dilation:?}: only groups 1 and dilation 1 run here"
                )));
            }
            if in_shape.len() != 3 || weight.shape[1] != in_shape[0] {
                return Err(mismatch(format!(
                    "weight {:?} expects {} input channels, '{first}' gives {in_shape:?}",
                    weight.shape, weight.shape[1]
                )));
            }
            if let Some(hw) = input_shape {
                if hw[..] != in_shape[1..] {
                    return Err(mismatch(format!("declares input size {hw:?}, '{first}' gives {in_shape:?}")));
                }
            }
            let hw = spatial([weight.shape[2], weight.shape[3]], *stride, *padding, 1)?;
            vec![weight.shape[0], hw[0], hw[1]]
        }
        NirNode::Linear { weight } | NirNode::Affine { weight, .. } => {
            if in_shape.len() != 1 || in_shape[0] != weight.shape[1] {
                return Err(mismatch(format!(
                    "weight {:?} needs {} input features, '{first}' gives {in_shape:?}",
                    weight.shape, weight.shape[1]
                )));
            }
            vec![weight.shape[0]]
        }
        NirNode::AvgPool2d { kernel, stride, padding } | NirNode::SumPool2d { kernel, stride, padding } => {
            let hw = spatial(*kernel, *stride, *padding, 1)?;
            vec![in_shape[0], hw[0], hw[1]]
        }
        NirNode::Flatten { start_dim, end_dim, input_shape } => {
            if let Some(s) = input_shape {
                if s.iter().product::<usize>() != in_shape.iter().product::<usize>() {
                    return Err(mismatch(format!("declares input {s:?}, '{first}' gives {in_shape:?}")));
                }
            }
            let last = in_shape.len() as i64 - 1;
            // NIR shapes have no batch dimension (start 0); torch-style files count it (start 1).
            if !matches!(start_dim, 0 | 1) || !(*end_dim == -1 || *end_dim == last || *end_dim == last + 1) {
                return Err(mismatch(format!(
                    "flattens dimensions {start_dim}..={end_dim}; only a full flatten runs here"
                )));
            }
            vec![in_shape.iter().product()]
        }
        NirNode::Lif { tau: a, .. } | NirNode::Li { tau: a, .. } | NirNode::If { v_threshold: a, .. } => {
            let n: usize = in_shape.iter().product();
            if a.len() != 1 && a.len() != n {
                return Err(mismatch(format!(
                    "parameters of shape {:?} for an input of shape {in_shape:?} from '{first}'",
                    a.shape
                )));
            }
            in_shape.clone()
        }
        NirNode::Unsupported { .. } => unreachable!("refused before shapes are inferred"),
    })
}

/// A synaptic node's weight as a tensor of the file's float type, scaled by `factor` (when not 1).
fn weight_tensor(name: &str, a: &NirArray, factor: f64) -> Result<Tensor> {
    let dev = Device::Cpu;
    let t = match &a.data {
        NirData::F32(v) if factor == 1.0 => Tensor::from_vec(v.clone(), a.shape.clone(), &dev)?,
        NirData::F32(v) => {
            Tensor::from_vec(v.iter().map(|&x| (x as f64 * factor) as f32).collect::<Vec<_>>(), a.shape.clone(), &dev)?
        }
        NirData::F64(v) => Tensor::from_vec(v.iter().map(|&x| x * factor).collect::<Vec<_>>(), a.shape.clone(), &dev)?,
        _ => return Err(Error::Nir(format!("node '{name}': the weight is not a float array"))),
    };
    Ok(t)
}

/// Checks that a bias is all zeros (this toolkit's layers have none).
fn no_bias(name: &str, bias: &NirArray) -> Result<()> {
    let v = bias.to_f64().ok_or_else(|| Error::Nir(format!("node '{name}': the bias is not numeric")))?;
    if v.iter().any(|&b| b != 0.0) {
        return Err(Error::Nir(format!(
            "node '{name}': a non-zero bias cannot run here (this toolkit's layers have no bias)"
        )));
    }
    Ok(())
}

/// Reads a NIR graph made of the node types of [`export`] into a checkpoint. Unsupported node types are
/// refused with an error naming every one of them; so are cycles, edges to unknown nodes, shapes that do
/// not fit, and structures this toolkit cannot run (biases, pooling not followed by IF neurons, a
/// spiking output, ...).
///
/// Graphs from other tools: a neuron's input gain `R·dt/τ` other than 1 and a threshold other than the
/// first LIF layer's are folded into the weights that feed it (exact for these neurons, which rest and
/// reset at zero); `SumPool2d` → `IF` becomes average pooling with the threshold divided by the window
/// size; a LIF node without leak after pooling is an IF node. Leaks must agree across layers (the toolkit's
/// layers share one λ).
pub fn import(graph: &NirGraph, opts: &ImportOptions) -> Result<Checkpoint> {
    let order = graph.topological_order()?;
    let unsupported: Vec<String> = graph
        .nodes
        .iter()
        .filter(|(_, n)| matches!(n, NirNode::Unsupported { .. }))
        .map(|(k, n)| format!("'{k}' ({})", n.type_name()))
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::Nir(format!(
            "node types this toolkit cannot run: {} (supported: Input, Output, Conv2d, Linear, Affine with zero bias, \
             AvgPool2d, SumPool2d, Flatten, LIF, IF, LI)",
            unsupported.join(", ")
        )));
    }
    let dt =
        match opts.dt {
            Some(dt) => dt,
            None => match graph.metadata.get(DT_METADATA) {
                Some(NirValue::Array(a)) => match a.to_f64().as_deref() {
                    Some([dt]) => *dt,
                    _ => return Err(Error::Nir("the graph's 'dt' metadata is not one number".into())),
                },
                _ => return Err(Error::Nir(
                    "the graph does not say which time step its tau values assume: give dt (snnTorch writes its files \
                     for dt = 1e-4, Norse for 1e-3)"
                        .into(),
                )),
            },
        };
    let dt = checked_dt(dt)?;

    // Shapes, in graph order.
    let mut shapes: HashMap<&str, Vec<usize>> = HashMap::new();
    for name in &order {
        let ins: Vec<(&str, &Vec<usize>)> = graph.inputs_of(name).into_iter().map(|i| (i, &shapes[i])).collect();
        let out = node_output_shape(name, &graph.nodes[name], &ins)?;
        shapes.insert(name.as_str(), out);
    }
    let of_type = |pred: fn(&NirNode) -> bool| -> Vec<&str> {
        order.iter().filter(|n| pred(&graph.nodes[n.as_str()])).map(String::as_str).collect()
    };
    let inputs = of_type(|n| matches!(n, NirNode::Input { .. }));
    let outputs = of_type(|n| matches!(n, NirNode::Output { .. }));
    let ([input], [output]) = (inputs.as_slice(), outputs.as_slice()) else {
        return Err(Error::Nir(format!(
            "the graph needs exactly one Input and one Output node, it has {} and {}",
            inputs.len(),
            outputs.len()
        )));
    };

    // Follow a synaptic node back through Flatten to the node that carries spikes (or the input).
    let single_input = |node: &str| -> Result<&str> {
        match graph.inputs_of(node).as_slice() {
            [one] => Ok(one),
            other => Err(Error::Nir(format!("node '{node}' needs exactly one incoming edge, it has {}", other.len()))),
        }
    };
    let spike_source = |node: &str| -> Result<&str> {
        let mut src = single_input(node)?;
        while matches!(graph.nodes[src], NirNode::Flatten { .. }) {
            src = single_input(src)?;
        }
        Ok(src)
    };
    let feeds_only = |node: &str, target: &str| -> Result<()> {
        let outs = graph.outputs_of(node);
        if outs != [target] {
            return Err(Error::Nir(format!(
                "node '{node}' feeds {outs:?}; a synaptic node must feed exactly one neuron node ('{target}')"
            )));
        }
        Ok(())
    };

    // Layers, in graph order of their neuron nodes.
    let mut layer_of: HashMap<&str, String> = HashMap::new(); // neuron node -> layer name
    layer_of.insert(input, INPUT.to_string());
    let mut layers = Vec::new();
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    let mut lif_constants: Option<(String, Discrete)> = None;
    let mut pool_threshold: Option<(String, f64)> = None;
    let mut readout_leak: Option<(String, f64)> = None;
    let layer_input = |src: &str, layer_of: &HashMap<&str, String>| -> Result<String> {
        layer_of.get(src).cloned().ok_or_else(|| {
            Error::Nir(format!("node '{src}' ({}) cannot feed a synaptic layer here", graph.nodes[src].type_name()))
        })
    };
    for name in &order {
        let node = &graph.nodes[name.as_str()];
        if !matches!(node, NirNode::Lif { .. } | NirNode::If { .. } | NirNode::Li { .. }) {
            continue;
        }
        let k = discretise(name, node, dt)?;
        let feeding = graph.inputs_of(name);
        // A LIF node without leak after pooling is an IF node (snnTorch writes its β = 1 neurons that way).
        let after_pooling = matches!(
            feeding.as_slice(),
            [one] if matches!(graph.nodes[*one], NirNode::AvgPool2d { .. } | NirNode::SumPool2d { .. })
        );
        let role = match node {
            NirNode::Lif { .. } if k.leak == 1.0 && after_pooling => Role::Pool,
            NirNode::Lif { .. } => Role::Lif,
            NirNode::If { .. } => Role::Pool,
            _ => Role::Readout,
        };
        match role {
            Role::Lif => {
                // The gain, and the threshold relative to the first LIF layer's, fold into the incoming weights.
                let factor = match &lif_constants {
                    None => {
                        lif_constants = Some((name.clone(), k));
                        snap_to_one(k.gain)
                    }
                    Some((first, r)) => {
                        if !close(r.leak, k.leak) {
                            return Err(Error::Nir(format!(
                                "LIF nodes '{first}' and '{name}' leak differently ({} and {} per step); this toolkit's layers share one leak",
                                r.leak, k.leak
                            )));
                        }
                        snap_to_one(k.gain * r.threshold / k.threshold)
                    }
                };
                let (main, shortcut) = match feeding.as_slice() {
                    [one] => (*one, None),
                    [a, b] => {
                        // The shortcut is the 1×1 convolution or window-1 pooling; if both qualify, the other input
                        // comes from the layer just before.
                        let is_shortcut = |n: &str| match &graph.nodes[n] {
                            NirNode::Conv2d { weight, padding, .. } => {
                                weight.shape[2..] == [1, 1] && padding == &[0, 0]
                            }
                            NirNode::AvgPool2d { kernel, padding, .. } | NirNode::SumPool2d { kernel, padding, .. } => {
                                kernel == &[1, 1] && padding == &[0, 0]
                            }
                            _ => false,
                        };
                        match (is_shortcut(a), is_shortcut(b)) {
                            (true, false) => (*b, Some(*a)),
                            (false, true) | (true, true) => (*a, Some(*b)),
                            (false, false) => {
                                return Err(Error::Nir(format!(
                                    "LIF node '{name}' sums '{a}' and '{b}'; a second input must be a 1×1 Conv2d or a window-1 AvgPool2d shortcut"
                                )))
                            }
                        }
                    }
                    more => {
                        return Err(Error::Nir(format!(
                            "LIF node '{name}' has {} inputs; at most two (a layer and a shortcut) run here",
                            more.len()
                        )))
                    }
                };
                feeds_only(main, name)?;
                let source = layer_input(spike_source(main)?, &layer_of)?;
                let layer = match &graph.nodes[main] {
                    NirNode::Conv2d { weight, bias, stride, padding, .. } => {
                        no_bias(main, bias)?;
                        if weight.shape[2] != weight.shape[3] || stride[0] != stride[1] || padding[0] != padding[1] {
                            return Err(Error::Nir(format!("node '{main}': only square kernels, strides and paddings run here")));
                        }
                        weights.insert(format!("{main}.weight"), weight_tensor(main, weight, factor)?);
                        let shortcut = match shortcut {
                            None => None,
                            Some(sc) => {
                                feeds_only(sc, name)?;
                                let sc_input = layer_input(single_input(sc)?, &layer_of)?;
                                let (kind, stride) = match &graph.nodes[sc] {
                                    NirNode::Conv2d { weight, bias, stride, .. } => {
                                        no_bias(sc, bias)?;
                                        weights.insert(format!("{sc}.weight"), weight_tensor(sc, weight, factor)?);
                                        (ShortcutKind::Conv1x1, stride)
                                    }
                                    NirNode::AvgPool2d { stride, .. } | NirNode::SumPool2d { stride, .. } => {
                                        if factor != 1.0 {
                                            return Err(Error::Nir(format!(
                                                "LIF node '{name}': its gain or threshold would have to be folded into the weightless shortcut '{sc}'"
                                            )));
                                        }
                                        (ShortcutKind::Subsample, stride)
                                    }
                                    _ => unreachable!("chosen as a shortcut above"),
                                };
                                if stride[0] != stride[1] {
                                    return Err(Error::Nir(format!("node '{sc}': only square strides run here")));
                                }
                                Some(ShortcutSpec { name: sc.to_string(), kind, input: sc_input, stride: stride[0] })
                            }
                        };
                        LayerSpec::Conv(ConvSpec {
                            name: main.to_string(),
                            input: source,
                            in_channels: weight.shape[1],
                            out_channels: weight.shape[0],
                            kernel: weight.shape[2],
                            stride: stride[0],
                            padding: padding[0],
                            dropout: false,
                            shortcut,
                        })
                    }
                    NirNode::Linear { weight } | NirNode::Affine { weight, .. } if shortcut.is_none() => {
                        if let NirNode::Affine { bias, .. } = &graph.nodes[main] {
                            no_bias(main, bias)?;
                        }
                        weights.insert(format!("{main}.weight"), weight_tensor(main, weight, factor)?);
                        LayerSpec::Fc(FcSpec {
                            name: main.to_string(),
                            input: source,
                            in_features: weight.shape[1],
                            out_features: weight.shape[0],
                            dropout: false,
                        })
                    }
                    other => {
                        return Err(Error::Nir(format!(
                            "LIF node '{name}' is fed by '{main}' ({}); LIF neurons run here after Conv2d or Linear nodes{}",
                            other.type_name(),
                            if shortcut.is_some() { " (and shortcuts only into convolutions)" } else { "" }
                        )))
                    }
                };
                layer_of.insert(name.as_str(), main.to_string());
                layers.push(layer);
            }
            Role::Pool => {
                let [pool] = feeding.as_slice() else {
                    return Err(Error::Nir(format!("IF node '{name}' needs exactly one input (a pooling node)")));
                };
                feeds_only(pool, name)?;
                let (kernel, stride, padding, sum) = match &graph.nodes[*pool] {
                    NirNode::AvgPool2d { kernel, stride, padding } => (kernel, stride, padding, false),
                    NirNode::SumPool2d { kernel, stride, padding } => (kernel, stride, padding, true),
                    other => {
                        return Err(Error::Nir(format!(
                            "IF node '{name}' is fed by '{pool}' ({}); IF neurons run here only after pooling",
                            other.type_name()
                        )))
                    }
                };
                if kernel[0] != kernel[1] || kernel != stride || padding != &[0, 0] {
                    return Err(Error::Nir(format!(
                        "node '{pool}': pooling runs here with square windows equal to the stride and no padding, got window {kernel:?}, stride {stride:?}, padding {padding:?}"
                    )));
                }
                let window = if sum { (kernel[0] * kernel[1]) as f64 } else { 1.0 };
                let threshold = k.threshold / (k.gain * window);
                match &pool_threshold {
                    None => pool_threshold = Some((name.clone(), threshold)),
                    Some((first, t)) if !close(*t, threshold) => {
                        return Err(Error::Nir(format!(
                            "IF nodes '{first}' and '{name}' have different effective thresholds ({t} and {threshold}); this toolkit's pooling layers share one"
                        )))
                    }
                    Some(_) => {}
                }
                let source = layer_input(single_input(pool)?, &layer_of)?;
                layer_of.insert(name.as_str(), pool.to_string());
                layers.push(LayerSpec::Pool(PoolSpec {
                    name: pool.to_string(),
                    input: source,
                    kernel: kernel[0],
                    stride: stride[0],
                    padding: 0,
                }));
            }
            Role::Readout => {
                if graph.outputs_of(name) != [*output] {
                    return Err(Error::Nir(format!(
                        "LI node '{name}' must feed the Output node (the readout is the last layer here)"
                    )));
                }
                let [linear] = feeding.as_slice() else {
                    return Err(Error::Nir(format!("LI node '{name}' needs exactly one input (a Linear node)")));
                };
                feeds_only(linear, name)?;
                let weight = match &graph.nodes[*linear] {
                    NirNode::Linear { weight } => weight,
                    NirNode::Affine { weight, bias } => {
                        no_bias(linear, bias)?;
                        weight
                    }
                    other => {
                        return Err(Error::Nir(format!(
                            "LI node '{name}' is fed by '{linear}' ({}); the readout runs here after a Linear node",
                            other.type_name()
                        )))
                    }
                };
                // This toolkit's readout adds λ·I per step (and divides by θ·T at the end, which keeps the argmax).
                if k.leak <= 0.0 {
                    return Err(Error::Nir(format!(
                        "LI node '{name}': tau = dt leaves nothing of the membrane from one step to the next"
                    )));
                }
                let factor = snap_to_one(k.gain / k.leak);
                weights.insert(format!("{linear}.weight"), weight_tensor(linear, weight, factor)?);
                readout_leak = Some((name.clone(), k.leak));
                let source = layer_input(spike_source(linear)?, &layer_of)?;
                layer_of.insert(name.as_str(), linear.to_string());
                layers.push(LayerSpec::Readout(ReadoutSpec {
                    name: linear.to_string(),
                    input: source,
                    in_features: weight.shape[1],
                    out_features: weight.shape[0],
                }));
            }
        }
    }
    let Some((li, leak)) = readout_leak else {
        return Err(Error::Nir("the graph has no LI readout feeding its Output node".into()));
    };
    if let Some((lif, c)) = &lif_constants {
        if !close(c.leak, leak) {
            return Err(Error::Nir(format!(
                "the readout '{li}' leaks {leak} per step but the LIF layers (e.g. '{lif}') {}; this toolkit's readout shares their leak",
                c.leak
            )));
        }
    }
    // Every node must belong to a layer.
    for name in &order {
        let node = &graph.nodes[name.as_str()];
        let used = match node {
            NirNode::Input { .. } | NirNode::Output { .. } => true,
            NirNode::Lif { .. } | NirNode::If { .. } | NirNode::Li { .. } => true,
            NirNode::Flatten { .. } => !graph.outputs_of(name).is_empty(),
            _ => layers.iter().any(|l| match l {
                LayerSpec::Conv(c) => c.name == *name || c.shortcut.as_ref().is_some_and(|s| s.name == *name),
                other => other.name() == name,
            }),
        };
        if !used {
            return Err(Error::Nir(format!("node '{name}' ({}) does not feed any neuron layer", node.type_name())));
        }
    }

    let mut input_shape = shapes[input].clone();
    while input_shape.len() < 3 {
        input_shape.push(1);
    }
    let (leak, threshold) = lif_constants.as_ref().map_or((leak, 1.0), |(_, c)| (c.leak, c.threshold));
    let mut derived = NetworkSpec {
        name: opts.name.clone().unwrap_or_else(|| "nir".into()),
        family: "nir".into(),
        input_shape,
        input_signed: false,
        input_gain: 1.0,
        input_encoding: Default::default(),
        input_mean: vec![],
        input_std: vec![],
        stats_after_mask: true,
        leak,
        threshold,
        pool_threshold: pool_threshold.map_or(crate::spec::default_pool_threshold(), |(_, t)| t),
        dropout_p: 0.0,
        init_gain: 2.0,
        layers,
    };
    let mut metadata = HashMap::new();
    metadata.insert("nir_dt".to_string(), format!("{dt}"));
    match graph.metadata_str(SPEC_METADATA).map(NetworkSpec::from_json) {
        Some(Ok(stored)) => match matches_stored(&derived, &stored) {
            Ok(()) => derived = stored,
            Err(why) => {
                metadata
                    .insert("nir_spec".into(), format!("derived from the graph; its stored spec was not used: {why}"));
            }
        },
        Some(Err(e)) => {
            metadata.insert("nir_spec".into(), format!("derived from the graph; its stored spec is unreadable: {e}"));
        }
        None => {
            metadata
                .insert("nir_spec".into(), "derived from the graph (no spec of this toolkit in its metadata)".into());
        }
    }
    if let Some(g) = graph.metadata_str("generator") {
        metadata.insert("nir_generator".into(), g.to_string());
    }
    derived.validate()?;
    Ok(Checkpoint { spec: derived, weights, metadata })
}

/// Whether a spec stored in a file's metadata describes the graph it came with: the same layers (dropout
/// flags aside, which the graph cannot show) and the same neuron constants to 32-bit precision.
fn matches_stored(derived: &NetworkSpec, stored: &NetworkSpec) -> std::result::Result<(), String> {
    if derived.layers.len() != stored.layers.len() {
        return Err(format!(
            "{} layers in the graph, {} in the stored spec",
            derived.layers.len(),
            stored.layers.len()
        ));
    }
    let strip = |l: &LayerSpec| {
        let mut l = l.clone();
        match &mut l {
            LayerSpec::Conv(c) => c.dropout = false,
            LayerSpec::Fc(f) => f.dropout = false,
            _ => {}
        }
        l
    };
    for (d, s) in derived.layers.iter().zip(&stored.layers) {
        if strip(d) != strip(s) {
            return Err(format!("layer '{}' differs", s.name()));
        }
    }
    let stored_input: usize = stored.input_shape.iter().product();
    if derived.input_shape != stored.input_shape && derived.input_shape.iter().product::<usize>() != stored_input {
        return Err("the input shapes differ".into());
    }
    for (what, a, b) in [
        ("leak", derived.leak, stored.leak),
        ("threshold", derived.threshold, stored.threshold),
        ("pooling threshold", derived.pool_threshold, stored.pool_threshold),
    ] {
        if !close(a, b) {
            return Err(format!("the {what} is {a} in the graph, {b} in the stored spec"));
        }
    }
    Ok(())
}
