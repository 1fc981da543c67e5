//! NIR export and import: exact round trips of the paper's networks, the exported graph simulated by an
//! independent plain-f64 interpreter of NIR's neuron equations against this crate's forward pass, graphs
//! from other conventions (gains and thresholds folded into weights), and bad graphs refused with clear
//! errors. The HDF5 file tests are at the end (feature `nir`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_models::nir::{export, import, ExportOptions, ImportOptions, NirArray, NirData, NirGraph, NirNode, NirValue};
use snn_models::{builtin, Checkpoint, ForwardOptions, Masks, NetworkSpec, SpikingNetwork};

fn checkpoint_of(spec: NetworkSpec, seed: u64, dtype: DType) -> Checkpoint {
    let net = SpikingNetwork::new(spec, &mut ChaCha8Rng::seed_from_u64(seed), dtype, &Device::Cpu).unwrap();
    let weights = net.weights().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    Checkpoint { spec: net.spec().clone(), weights, metadata: HashMap::new() }
}

fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F64 => t.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
        _ => t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
    }
}

fn assert_same_weights(a: &Checkpoint, b: &Checkpoint, what: &str) {
    assert_eq!(a.weights.len(), b.weights.len(), "{what}: weight count");
    for (name, t) in &a.weights {
        let u = b.weights.get(name).unwrap_or_else(|| panic!("{what}: '{name}' missing after the round trip"));
        assert_eq!(t.dims(), u.dims(), "{what}: '{name}' shape");
        assert_eq!(t.dtype(), u.dtype(), "{what}: '{name}' dtype");
        assert!(bits(t) == bits(u), "{what}: '{name}' not bit for bit equal");
    }
}

/// A small network with every feature the export handles: odd input sizes, padding, pooling with a cut
/// edge, a 1×1 convolution shortcut, a strided convolution with an identity-subsampling shortcut, a flatten
/// into a fully connected layer, and the readout.
fn all_features_spec() -> NetworkSpec {
    NetworkSpec::from_json(include_str!("fixtures/tiny-resnet.json")).unwrap()
}

#[test]
fn export_then_import_gives_the_identical_network() {
    for (model, dtype) in [("lenet", DType::F32), ("vgg9", DType::F32), ("resnet11", DType::F32), ("lenet", DType::F64)]
    {
        let ck = checkpoint_of(builtin(model).unwrap(), 5, dtype);
        let graph = export(&ck, &ExportOptions::default()).unwrap();
        // Through the generic tree a file stores as well.
        let graph = NirGraph::from_group(&graph.to_group()).unwrap();
        let back = import(&graph, &ImportOptions::default()).unwrap();
        assert_eq!(back.spec, ck.spec, "{model}: spec");
        assert_same_weights(&ck, &back, model);
    }
    let ck = checkpoint_of(all_features_spec(), 6, DType::F32);
    let back = import(&export(&ck, &ExportOptions { dt: 1e-4 }).unwrap(), &ImportOptions::default()).unwrap();
    assert_eq!(back.spec, ck.spec);
    assert_same_weights(&ck, &back, "all features, dt = 1e-4");
}

#[test]
fn the_graph_alone_gives_the_network_without_the_stored_spec() {
    // A consumer that drops the metadata: the structure, the neuron constants and the weights come back from
    // the nodes alone (only what NIR cannot hold — dropout, input coding — is lost).
    let ck = checkpoint_of(builtin("resnet11").unwrap(), 7, DType::F32);
    let mut graph = export(&ck, &ExportOptions::default()).unwrap();
    graph.metadata.clear();
    let err = import(&graph, &ImportOptions::default()).unwrap_err().to_string();
    assert!(err.contains("time step"), "{err}");
    let back = import(&graph, &ImportOptions { dt: Some(1.0), name: Some("r".into()) }).unwrap();
    assert_eq!(back.spec.leak, 0.99);
    assert_eq!(back.spec.threshold, 1.0);
    assert_eq!(back.spec.pool_threshold, 0.75);
    assert_eq!(back.spec.input_shape, ck.spec.input_shape);
    let strip = |s: &NetworkSpec| -> Vec<String> {
        s.layers
            .iter()
            .map(|l| serde_json::to_string(l).unwrap().replace("\"dropout\":true", "\"dropout\":false"))
            .collect()
    };
    assert_eq!(strip(&back.spec), strip(&ck.spec));
    assert_same_weights(&ck, &back, "derived spec");
    assert!(back.metadata["nir_spec"].contains("derived"));
}

/// An independent simulator of a NIR graph, written from the NIR node definitions: forward Euler with step
/// `dt` for LIF, IF and LI, plain loops for the synaptic nodes, every value in f64. Returns the spikes of
/// each spiking node summed over the window and the LI membranes after the last step.
fn simulate_nir(g: &NirGraph, dt: f64, window: &[Vec<f64>]) -> (HashMap<String, f64>, Vec<f64>) {
    let order = g.topological_order().unwrap();
    let f = |a: &NirArray| a.to_f64().unwrap();
    let uniform = |a: &NirArray| f(a)[0];
    let mut state: HashMap<String, Vec<f64>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
    let mut last = Vec::new();
    for x in window {
        let mut out: HashMap<String, Vec<f64>> = HashMap::new();
        for name in &order {
            let ins = g.inputs_of(name);
            let sum = || -> Vec<f64> {
                let mut acc = out[ins[0]].clone();
                for other in &ins[1..] {
                    acc.iter_mut().zip(&out[*other]).for_each(|(a, b)| *a += b);
                }
                acc
            };
            let in_shape = ins.first().map(|i| shapes[*i].clone()).unwrap_or_default();
            let (value, shape) = match &g.nodes[name] {
                NirNode::Input { shape } => (x.clone(), shape.clone()),
                NirNode::Output { .. } => (sum(), in_shape.clone()),
                NirNode::Flatten { .. } => (sum(), vec![in_shape.iter().product()]),
                NirNode::Linear { weight } | NirNode::Affine { weight, .. } => {
                    let (w, xin) = (f(weight), sum());
                    let (o, i) = (weight.shape[0], weight.shape[1]);
                    let mut y: Vec<f64> = (0..o).map(|r| (0..i).map(|c| w[r * i + c] * xin[c]).sum()).collect();
                    if let NirNode::Affine { bias, .. } = &g.nodes[name] {
                        y.iter_mut().zip(f(bias)).for_each(|(y, b)| *y += b);
                    }
                    (y, vec![o])
                }
                NirNode::Conv2d { weight, bias, stride, padding, .. } => {
                    let (w, b, xin) = (f(weight), f(bias), sum());
                    let [o, ci, kh, kw] = weight.shape[..] else { panic!() };
                    let (h, wd) = (in_shape[1], in_shape[2]);
                    let oh = (h + 2 * padding[0] - kh) / stride[0] + 1;
                    let ow = (wd + 2 * padding[1] - kw) / stride[1] + 1;
                    let mut y = vec![0.0; o * oh * ow];
                    for oc in 0..o {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut s = b[oc];
                                for c in 0..ci {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                                            let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                                s += w[((oc * ci + c) * kh + ky) * kw + kx]
                                                    * xin[(c * h + iy as usize) * wd + ix as usize];
                                            }
                                        }
                                    }
                                }
                                y[(oc * oh + oy) * ow + ox] = s;
                            }
                        }
                    }
                    (y, vec![o, oh, ow])
                }
                NirNode::AvgPool2d { kernel, stride, .. } | NirNode::SumPool2d { kernel, stride, .. } => {
                    let xin = sum();
                    let (c, h, wd) = (in_shape[0], in_shape[1], in_shape[2]);
                    let (oh, ow) = ((h - kernel[0]) / stride[0] + 1, (wd - kernel[1]) / stride[1] + 1);
                    let avg = matches!(g.nodes[name], NirNode::AvgPool2d { .. });
                    let mut y = vec![0.0; c * oh * ow];
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut s = 0.0;
                                for ky in 0..kernel[0] {
                                    for kx in 0..kernel[1] {
                                        s += xin[(ch * h + oy * stride[0] + ky) * wd + ox * stride[1] + kx];
                                    }
                                }
                                y[(ch * oh + oy) * ow + ox] = if avg { s / (kernel[0] * kernel[1]) as f64 } else { s };
                            }
                        }
                    }
                    (y, vec![c, oh, ow])
                }
                NirNode::Lif { tau, r, v_leak, v_threshold, v_reset } => {
                    let i = sum();
                    let v = state.entry(name.clone()).or_insert_with(|| vec![0.0; i.len()]);
                    let (tau, r, vl, th, vr) =
                        (uniform(tau), uniform(r), uniform(v_leak), uniform(v_threshold), uniform(v_reset));
                    let mut s = vec![0.0; i.len()];
                    for k in 0..i.len() {
                        v[k] += dt / tau * ((vl - v[k]) + r * i[k]);
                        if v[k] > th {
                            s[k] = 1.0;
                            v[k] = vr;
                        }
                    }
                    *counts.entry(name.clone()).or_default() += s.iter().sum::<f64>();
                    (s, in_shape.clone())
                }
                NirNode::If { r, v_threshold, v_reset } => {
                    let i = sum();
                    let v = state.entry(name.clone()).or_insert_with(|| vec![0.0; i.len()]);
                    let (r, th, vr) = (uniform(r), uniform(v_threshold), uniform(v_reset));
                    let mut s = vec![0.0; i.len()];
                    for k in 0..i.len() {
                        v[k] += dt * r * i[k];
                        if v[k] > th {
                            s[k] = 1.0;
                            v[k] = vr;
                        }
                    }
                    *counts.entry(name.clone()).or_default() += s.iter().sum::<f64>();
                    (s, in_shape.clone())
                }
                NirNode::Li { tau, r, v_leak } => {
                    let i = sum();
                    let v = state.entry(name.clone()).or_insert_with(|| vec![0.0; i.len()]);
                    let (tau, r, vl) = (uniform(tau), uniform(r), uniform(v_leak));
                    for k in 0..i.len() {
                        v[k] += dt / tau * ((vl - v[k]) + r * i[k]);
                    }
                    last = v.clone();
                    (v.clone(), in_shape.clone())
                }
                NirNode::Unsupported { type_name } => panic!("cannot simulate {type_name}"),
            };
            shapes.insert(name.clone(), shape);
            out.insert(name.clone(), value);
        }
    }
    (counts, last)
}

/// Our forward pass (f64, dense) on one sample's window: spikes per layer and the readout.
fn run_ours(ck: &Checkpoint, window: &[Vec<f64>]) -> (HashMap<String, f64>, Vec<f64>) {
    let net = ck.clone().into_network(DType::F64, &Device::Cpu).unwrap();
    let mut shape = vec![window.len(), 1];
    shape.extend(&ck.spec.input_shape);
    let x = Tensor::from_vec(window.concat(), shape, &Device::Cpu).unwrap();
    let out = net.forward(&x, &Masks::new(), ForwardOptions::default()).unwrap();
    let counts = out
        .activity
        .iter()
        .map(|a| {
            let node = format!("{}.{}", a.name, if a.is_pool { "if" } else { "lif" });
            (node, a.neuron_counts.sum_all().unwrap().to_scalar::<f64>().unwrap())
        })
        .collect();
    (counts, out.output.flatten_all().unwrap().to_vec1::<f64>().unwrap())
}

fn input_window(spec: &NetworkSpec, steps: usize, density: f64, seed: u64) -> Vec<Vec<f64>> {
    let n: usize = spec.input_shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..steps).map(|_| (0..n).map(|_| if rng.gen_bool(density) { 1.0 } else { 0.0 }).collect()).collect()
}

#[test]
fn the_exported_graph_simulated_from_nir_equations_matches_our_forward_pass() {
    // With dt = 1 the 32-bit parameters are exact (τ = 100, R = 100, readout R = 99); with dt = 1e-3 they are
    // rounded (τ = 0.1), so the membranes agree to 32-bit precision only.
    for (spec, dt, weight_scale, tolerance) in
        [(builtin("lenet").unwrap(), 1.0, 1.0, 1e-12), (all_features_spec(), 1e-3, 3.0, 1e-6)]
    {
        let mut ck = checkpoint_of(spec.clone(), 11, DType::F32);
        // Stronger weights so that the deep layers of the small network fire too.
        for t in ck.weights.values_mut() {
            *t = (t.clone() * weight_scale).unwrap();
        }
        let graph = export(&ck, &ExportOptions { dt }).unwrap();
        let steps = 12;
        let window = input_window(&spec, steps, 0.3, 2);
        let (nir_counts, nir_membrane) = simulate_nir(&graph, dt, &window);
        let (our_counts, our_readout) = run_ours(&ck, &window);
        assert_eq!(nir_counts.len(), our_counts.len(), "{}: spiking layers", spec.name);
        for (node, ours) in &our_counts {
            assert_eq!(nir_counts[node], *ours, "{}: spikes of {node}", spec.name);
        }
        assert!(our_counts.values().all(|&c| c > 0.0), "{}: every layer should fire: {our_counts:?}", spec.name);
        // Our readout is the LI membrane divided by θ·T.
        for (m, y) in nir_membrane.iter().zip(&our_readout) {
            let m = m / (spec.threshold * steps as f64);
            assert!(
                (m - y).abs() <= tolerance * (1.0 + y.abs()),
                "{}: readout {y} vs NIR membrane / θT {m}",
                spec.name
            );
        }
    }
}

/// Replaces a float parameter array of a node.
fn set_param(g: &mut NirGraph, node: &str, field: &str, value: f32) {
    let mut group = g.nodes[node].to_group();
    let NirValue::Array(old) = &group[field] else { panic!() };
    let shape = old.shape.clone();
    group.insert(field.into(), NirValue::Array(NirArray::filled_f32(&shape, value)));
    let updated = NirNode::from_group(node, &group).unwrap();
    g.nodes.insert(node.into(), updated);
}

#[test]
fn gains_and_thresholds_of_other_conventions_fold_into_the_weights() {
    // Another tool writes the same network with R = 1 (Norse's convention: input gain dt/τ), a second LIF
    // layer with threshold 0.5, and sum pooling with its threshold scaled by the window: after import the
    // network fires exactly as the original (to rounding of the scaled weights).
    let spec = builtin("lenet").unwrap();
    let ck = checkpoint_of(spec.clone(), 12, DType::F64);
    let mut g = export(&ck, &ExportOptions::default()).unwrap();
    g.metadata.clear();
    // cnn1: R = 1 means gain 1/τ = 0.01; weights ×100 keep the currents.
    set_param(&mut g, "cnn1.lif", "r", 1.0);
    if let Some(NirNode::Conv2d { weight, .. }) = g.nodes.get_mut("cnn1") {
        if let NirData::F64(v) = &mut weight.data {
            v.iter_mut().for_each(|w| *w *= 100.0);
        }
    }
    // cnn2: threshold 0.5 with weights halved.
    set_param(&mut g, "cnn2.lif", "v_threshold", 0.5);
    if let Some(NirNode::Conv2d { weight, .. }) = g.nodes.get_mut("cnn2") {
        if let NirData::F64(v) = &mut weight.data {
            v.iter_mut().for_each(|w| *w *= 0.5);
        }
    }
    // pool2 as sum pooling with threshold 4 · 0.75.
    if let Some(NirNode::AvgPool2d { kernel, stride, padding }) = g.nodes.get("pool2").cloned() {
        g.nodes.insert("pool2".into(), NirNode::SumPool2d { kernel, stride, padding });
    }
    set_param(&mut g, "pool2.if", "v_threshold", 3.0);
    let back = import(&g, &ImportOptions { dt: Some(1.0), name: None }).unwrap();
    assert_eq!(back.spec.pool_threshold, 0.75);
    assert_eq!(back.spec.threshold, 1.0);
    let window = input_window(&spec, 10, 0.4, 3);
    let (a, ya) = run_ours(&ck, &window);
    let (b, yb) = run_ours(&back, &window);
    assert_eq!(a, b);
    for (x, y) in ya.iter().zip(&yb) {
        assert!((x - y).abs() < 1e-9 * (1.0 + x.abs()));
    }
}

fn expect_error(g: &NirGraph, needle: &str) {
    match import(g, &ImportOptions { dt: Some(1.0), name: None }) {
        Ok(_) => panic!("expected an error containing '{needle}'"),
        Err(e) => assert!(e.to_string().contains(needle), "error '{e}' does not mention '{needle}'"),
    }
}

#[test]
fn bad_graphs_are_refused_with_errors_that_name_the_problem() {
    let ck = checkpoint_of(builtin("lenet").unwrap(), 1, DType::F32);
    let good = export(&ck, &ExportOptions::default()).unwrap();

    // A cycle.
    let mut g = good.clone();
    g.edges.push(("cnn2.lif".into(), "cnn1".into()));
    expect_error(&g, "cycle");
    // An edge to a node that does not exist.
    let mut g = good.clone();
    g.edges.push(("cnn1.lif".into(), "ghost".into()));
    expect_error(&g, "'ghost'");
    // Shapes that do not fit: a weight for the wrong number of input channels.
    let mut g = good.clone();
    if let Some(NirNode::Conv2d { weight, .. }) = g.nodes.get_mut("cnn2") {
        weight.shape[1] = 10;
        weight.data = NirData::F32(vec![0.0; 50 * 10 * 25]);
    }
    expect_error(&g, "shape mismatch at node 'cnn2'");
    // Unknown node types: every one is named.
    let mut g = good.clone();
    g.nodes.insert("cnn1.lif".into(), NirNode::Unsupported { type_name: "CubaLIF".into() });
    g.nodes.insert("pool1".into(), NirNode::Unsupported { type_name: "Delay".into() });
    expect_error(&g, "'cnn1.lif' (CubaLIF), 'pool1' (Delay)");
    // A pooling window of zero, and a size too large to be real.
    let mut g = good.clone();
    g.nodes.insert("pool1".into(), NirNode::AvgPool2d { kernel: [0, 0], stride: [2, 2], padding: [0, 0] });
    expect_error(&g, "must be positive");
    let mut group = good.to_group();
    if let Some(NirValue::Group(nodes)) = group.get_mut("nodes") {
        if let Some(NirValue::Group(n)) = nodes.get_mut("pool1") {
            n.insert("stride".into(), NirValue::Array(NirArray::ints(&[i64::MAX / 2])));
        }
    }
    let e = NirGraph::from_group(&group).unwrap_err().to_string();
    assert!(e.contains("'pool1'") && e.contains("'stride'"), "{e}");
    // A bias.
    let mut g = good.clone();
    if let Some(NirNode::Conv2d { bias, .. }) = g.nodes.get_mut("cnn1") {
        bias.data = NirData::F32(vec![0.5; 20]);
    }
    expect_error(&g, "bias");
    // Neurons with different leaks.
    let mut g = good.clone();
    set_param(&mut g, "cnn2.lif", "tau", 50.0);
    expect_error(&g, "leak");
    // A spiking output.
    let mut g = good.clone();
    g.edges.retain(|(a, _)| a != "fc1.li");
    g.edges.push(("fc0.lif".into(), "output".into()));
    expect_error(&g, "output");
    // A graph node group without a type, and a non-graph top node.
    let mut group = good.to_group();
    if let Some(NirValue::Group(nodes)) = group.get_mut("nodes") {
        if let Some(NirValue::Group(n)) = nodes.get_mut("cnn1") {
            n.remove("type");
        }
    }
    let e = NirGraph::from_group(&group).unwrap_err().to_string();
    assert!(e.contains("'cnn1'") && e.contains("'type'"), "{e}");
    let e = NirGraph::from_group(&good.nodes["cnn1"].to_group()).unwrap_err().to_string();
    assert!(e.contains("NIRGraph"), "{e}");
}

#[cfg(feature = "nir")]
mod files {
    use super::*;
    use snn_models::nir::{read_nir, write_nir};

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("snn-nir-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_written_file_reads_back_as_the_same_graph() {
        let dir = temp_dir("rw");
        for model in ["lenet", "resnet11"] {
            let ck = checkpoint_of(builtin(model).unwrap(), 3, DType::F32);
            let graph = export(&ck, &ExportOptions::default()).unwrap();
            let path = dir.join(format!("{model}.nir"));
            write_nir(&path, &graph).unwrap();
            let back = read_nir(&path).unwrap();
            assert_eq!(back, graph, "{model}");
            let ck2 = import(&back, &ImportOptions::default()).unwrap();
            assert_eq!(ck2.spec, ck.spec);
            assert_same_weights(&ck, &ck2, model);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_foreign_and_missing_files_give_errors_naming_the_file() {
        let dir = temp_dir("bad");
        let ck = checkpoint_of(builtin("lenet").unwrap(), 3, DType::F32);
        let path = dir.join("good.nir");
        write_nir(&path, &export(&ck, &ExportOptions::default()).unwrap()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for (name, content) in [
            ("truncated.nir", bytes[..bytes.len() / 3].to_vec()),
            ("text.nir", b"not an HDF5 file at all".to_vec()),
            ("empty.nir", Vec::new()),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            let e = read_nir(&p).unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
        // A valid HDF5 file that holds no NIR graph.
        let foreign = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/foreign.h5");
        let e = read_nir(&foreign).unwrap_err().to_string();
        assert!(e.contains("foreign.h5") && e.contains("not a NIR file"), "{e}");
        let e = read_nir(&dir.join("missing.nir")).unwrap_err().to_string();
        assert!(e.contains("missing.nir"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
