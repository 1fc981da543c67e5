//! The NIR graph in memory: the generic tree of a NIR file (groups of named arrays and strings), and the
//! typed nodes this crate reads and writes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::{Error, Result};

/// The element data of a NIR array, in the type the file stores.
#[derive(Debug, Clone, PartialEq)]
pub enum NirData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// Integers (any integer width in a file is read as 64-bit).
    I64(Vec<i64>),
    /// Strings (variable or fixed length, ASCII or UTF-8 in a file).
    Str(Vec<String>),
}

impl NirData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NirData::F32(v) => v.len(),
            NirData::F64(v) => v.len(),
            NirData::I64(v) => v.len(),
            NirData::Str(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An n-dimensional array of a NIR file (a scalar has the empty shape).
#[derive(Debug, Clone, PartialEq)]
pub struct NirArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: NirData,
}

impl NirArray {
    /// A scalar string.
    pub fn string(s: &str) -> Self {
        Self { shape: vec![], data: NirData::Str(vec![s.to_string()]) }
    }

    /// A 1-D integer array.
    pub fn ints(values: &[i64]) -> Self {
        Self { shape: vec![values.len()], data: NirData::I64(values.to_vec()) }
    }

    /// A scalar integer.
    pub fn int(value: i64) -> Self {
        Self { shape: vec![], data: NirData::I64(vec![value]) }
    }

    /// A 32-bit float array of `shape` filled with `value`.
    pub fn filled_f32(shape: &[usize], value: f32) -> Self {
        Self { shape: shape.to_vec(), data: NirData::F32(vec![value; shape.iter().product()]) }
    }

    /// A scalar 64-bit float.
    pub fn float(value: f64) -> Self {
        Self { shape: vec![], data: NirData::F64(vec![value]) }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as 64-bit floats (integers converted); `None` for strings.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match &self.data {
            NirData::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            NirData::F64(v) => Some(v.clone()),
            NirData::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
            NirData::Str(_) => None,
        }
    }

    /// The elements as integers; `None` unless the array holds integers (or floats with integral values).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            NirData::I64(v) => Some(v.clone()),
            NirData::F32(_) | NirData::F64(_) => {
                let f = self.to_f64()?;
                f.iter().all(|x| x.fract() == 0.0 && x.abs() < 1e15).then(|| f.iter().map(|&x| x as i64).collect())
            }
            NirData::Str(_) => None,
        }
    }

    /// The single string of a scalar (or one-element) string array.
    pub fn as_str(&self) -> Option<&str> {
        match &self.data {
            NirData::Str(v) if v.len() == 1 => Some(&v[0]),
            _ => None,
        }
    }
}

/// A value of a NIR file: a group of named values, or an array.
#[derive(Debug, Clone, PartialEq)]
pub enum NirValue {
    /// An HDF5 group.
    Group(BTreeMap<String, NirValue>),
    /// An HDF5 dataset.
    Array(NirArray),
}

/// One node of a NIR graph, as far as this crate understands it. Shapes exclude the batch dimension.
#[derive(Debug, Clone, PartialEq)]
pub enum NirNode {
    /// The graph input, with its per-sample shape.
    Input {
        /// Per-sample shape.
        shape: Vec<usize>,
    },
    /// The graph output, with its per-sample shape.
    Output {
        /// Per-sample shape.
        shape: Vec<usize>,
    },
    /// 2-D convolution `[out, in, kh, kw]` with bias.
    Conv2d {
        /// Kernel `[out, in/groups, kh, kw]`.
        weight: NirArray,
        /// Bias `[out]`.
        bias: NirArray,
        /// Stride per spatial dimension.
        stride: [usize; 2],
        /// Zero padding per spatial dimension.
        padding: [usize; 2],
        /// Dilation per spatial dimension.
        dilation: [usize; 2],
        /// Channel groups.
        groups: usize,
        /// Spatial input size `[H, W]`, when the file gives it.
        input_shape: Option<[usize; 2]>,
    },
    /// Linear map `y = W x`, weight `[out, in]`.
    Linear {
        /// Weight `[out, in]`.
        weight: NirArray,
    },
    /// Affine map `y = W x + b`.
    Affine {
        /// Weight `[out, in]`.
        weight: NirArray,
        /// Bias `[out]`.
        bias: NirArray,
    },
    /// Average pooling over `kernel` windows.
    AvgPool2d {
        /// Window per spatial dimension.
        kernel: [usize; 2],
        /// Stride per spatial dimension.
        stride: [usize; 2],
        /// Zero padding per spatial dimension.
        padding: [usize; 2],
    },
    /// Sum pooling over `kernel` windows.
    SumPool2d {
        /// Window per spatial dimension.
        kernel: [usize; 2],
        /// Stride per spatial dimension.
        stride: [usize; 2],
        /// Zero padding per spatial dimension.
        padding: [usize; 2],
    },
    /// Flattening of dimensions `start_dim..=end_dim`.
    Flatten {
        /// First flattened dimension.
        start_dim: i64,
        /// Last flattened dimension (−1: the last).
        end_dim: i64,
        /// Input shape, when the file gives it.
        input_shape: Option<Vec<usize>>,
    },
    /// Leaky integrate-and-fire neurons: `τ·dv/dt = (v_leak − v) + R·I`, spike and reset to `v_reset` when
    /// `v > v_threshold`.
    Lif {
        /// Membrane time constant τ.
        tau: NirArray,
        /// Input resistance R.
        r: NirArray,
        /// Resting potential.
        v_leak: NirArray,
        /// Firing threshold.
        v_threshold: NirArray,
        /// Potential after a spike.
        v_reset: NirArray,
    },
    /// Integrate-and-fire neurons: `dv/dt = R·I`, spike and reset to `v_reset` when `v > v_threshold`.
    If {
        /// Input resistance R.
        r: NirArray,
        /// Firing threshold.
        v_threshold: NirArray,
        /// Potential after a spike.
        v_reset: NirArray,
    },
    /// Leaky integrators (no spikes): `τ·dv/dt = (v_leak − v) + R·I`.
    Li {
        /// Membrane time constant τ.
        tau: NirArray,
        /// Input resistance R.
        r: NirArray,
        /// Resting potential.
        v_leak: NirArray,
    },
    /// A node type this crate does not run (kept so that import can name it).
    Unsupported {
        /// The NIR type name.
        type_name: String,
    },
}

impl NirNode {
    /// The NIR type name (`Conv2d`, `LIF`, ...).
    pub fn type_name(&self) -> &str {
        match self {
            NirNode::Input { .. } => "Input",
            NirNode::Output { .. } => "Output",
            NirNode::Conv2d { .. } => "Conv2d",
            NirNode::Linear { .. } => "Linear",
            NirNode::Affine { .. } => "Affine",
            NirNode::AvgPool2d { .. } => "AvgPool2d",
            NirNode::SumPool2d { .. } => "SumPool2d",
            NirNode::Flatten { .. } => "Flatten",
            NirNode::Lif { .. } => "LIF",
            NirNode::If { .. } => "IF",
            NirNode::Li { .. } => "LI",
            NirNode::Unsupported { type_name } => type_name,
        }
    }

    /// Reads a node from its group; `name` is used in errors.
    pub fn from_group(name: &str, group: &BTreeMap<String, NirValue>) -> Result<Self> {
        let fields = Fields { node: name, group };
        let type_name = fields.string("type")?;
        Ok(match type_name.as_str() {
            "Input" => NirNode::Input { shape: fields.shape("shape")? },
            "Output" => NirNode::Output { shape: fields.shape("shape")? },
            "Conv2d" => {
                let weight = fields.array("weight")?.clone();
                if weight.shape.len() != 4 {
                    return Err(
                        fields.bad("weight", &format!("has shape {:?}, a Conv2d needs 4 dimensions", weight.shape))
                    );
                }
                let kernel = [weight.shape[2], weight.shape[3]];
                let bias = match fields.optional("bias") {
                    Some(b) => b.clone(),
                    None => NirArray { shape: vec![weight.shape[0]], data: NirData::F32(vec![0.0; weight.shape[0]]) },
                };
                NirNode::Conv2d {
                    stride: fields.pair("stride", Some(1))?,
                    padding: fields.padding(kernel)?,
                    dilation: fields.pair("dilation", Some(1))?,
                    groups: fields.optional_int("groups")?.unwrap_or(1),
                    input_shape: match fields.optional("input_shape") {
                        Some(_) => Some(fields.pair("input_shape", None)?),
                        None => None,
                    },
                    weight,
                    bias,
                }
            }
            "Linear" => NirNode::Linear { weight: fields.matrix("weight")? },
            "Affine" => NirNode::Affine { weight: fields.matrix("weight")?, bias: fields.array("bias")?.clone() },
            "AvgPool2d" | "SumPool2d" => {
                let kernel = fields.pair("kernel_size", None)?;
                let stride = fields.pair("stride", None)?;
                let padding = fields.pair("padding", Some(0))?;
                if type_name == "AvgPool2d" {
                    NirNode::AvgPool2d { kernel, stride, padding }
                } else {
                    NirNode::SumPool2d { kernel, stride, padding }
                }
            }
            "Flatten" => NirNode::Flatten {
                start_dim: fields.optional_scalar_i64("start_dim")?.unwrap_or(1),
                end_dim: fields.optional_scalar_i64("end_dim")?.unwrap_or(-1),
                input_shape: match fields.optional("input_type") {
                    Some(_) => Some(fields.shape("input_type")?),
                    None => None,
                },
            },
            "LIF" => NirNode::Lif {
                tau: fields.floats("tau")?,
                r: fields.floats("r")?,
                v_leak: fields.floats("v_leak")?,
                v_reset: fields.floats_or_zero("v_reset", "v_threshold")?,
                v_threshold: fields.floats("v_threshold")?,
            },
            "IF" => NirNode::If {
                r: fields.floats("r")?,
                v_reset: fields.floats_or_zero("v_reset", "v_threshold")?,
                v_threshold: fields.floats("v_threshold")?,
            },
            "LI" => {
                NirNode::Li { tau: fields.floats("tau")?, r: fields.floats("r")?, v_leak: fields.floats("v_leak")? }
            }
            other => NirNode::Unsupported { type_name: other.to_string() },
        })
    }

    /// The node as the group of a NIR file.
    pub fn to_group(&self) -> BTreeMap<String, NirValue> {
        let mut g = BTreeMap::new();
        let mut put = |k: &str, v: NirArray| {
            g.insert(k.to_string(), NirValue::Array(v));
        };
        put("type", NirArray::string(self.type_name()));
        let pair = |p: &[usize; 2]| NirArray::ints(&[p[0] as i64, p[1] as i64]);
        let shape = |s: &[usize]| NirArray::ints(&s.iter().map(|&d| d as i64).collect::<Vec<_>>());
        match self {
            NirNode::Input { shape: s } | NirNode::Output { shape: s } => put("shape", shape(s)),
            NirNode::Conv2d { weight, bias, stride, padding, dilation, groups, input_shape } => {
                put("weight", weight.clone());
                put("bias", bias.clone());
                put("stride", pair(stride));
                put("padding", pair(padding));
                put("dilation", pair(dilation));
                put("groups", NirArray::int(*groups as i64));
                if let Some(s) = input_shape {
                    put("input_shape", pair(s));
                }
            }
            NirNode::Linear { weight } => put("weight", weight.clone()),
            NirNode::Affine { weight, bias } => {
                put("weight", weight.clone());
                put("bias", bias.clone());
            }
            NirNode::AvgPool2d { kernel, stride, padding } | NirNode::SumPool2d { kernel, stride, padding } => {
                put("kernel_size", pair(kernel));
                put("stride", pair(stride));
                put("padding", pair(padding));
            }
            NirNode::Flatten { start_dim, end_dim, input_shape } => {
                put("start_dim", NirArray::int(*start_dim));
                put("end_dim", NirArray::int(*end_dim));
                if let Some(s) = input_shape {
                    put("input_type", shape(s));
                }
            }
            NirNode::Lif { tau, r, v_leak, v_threshold, v_reset } => {
                put("tau", tau.clone());
                put("r", r.clone());
                put("v_leak", v_leak.clone());
                put("v_threshold", v_threshold.clone());
                put("v_reset", v_reset.clone());
            }
            NirNode::If { r, v_threshold, v_reset } => {
                put("r", r.clone());
                put("v_threshold", v_threshold.clone());
                put("v_reset", v_reset.clone());
            }
            NirNode::Li { tau, r, v_leak } => {
                put("tau", tau.clone());
                put("r", r.clone());
                put("v_leak", v_leak.clone());
            }
            NirNode::Unsupported { .. } => {}
        }
        g
    }
}

/// The largest size, stride or padding a node may declare (larger values are surely corrupt, and would
/// overflow the shape arithmetic).
const MAX_SIZE: i64 = 1 << 24;

/// The fields of one node's group, with errors that name the node and the field.
struct Fields<'a> {
    node: &'a str,
    group: &'a BTreeMap<String, NirValue>,
}

impl Fields<'_> {
    fn bad(&self, field: &str, msg: &str) -> Error {
        Error::Nir(format!("node '{}': field '{field}' {msg}", self.node))
    }

    fn optional(&self, field: &str) -> Option<&NirArray> {
        match self.group.get(field) {
            Some(NirValue::Array(a)) => Some(a),
            _ => None,
        }
    }

    fn array(&self, field: &str) -> Result<&NirArray> {
        match self.group.get(field) {
            Some(NirValue::Array(a)) => Ok(a),
            Some(NirValue::Group(_)) => Err(self.bad(field, "is a group, not an array")),
            None => Err(self.bad(field, "is missing")),
        }
    }

    fn string(&self, field: &str) -> Result<String> {
        let a = self.array(field)?;
        a.as_str().map(str::to_string).ok_or_else(|| self.bad(field, "is not a string"))
    }

    fn ints(&self, field: &str) -> Result<Vec<i64>> {
        self.array(field)?.to_i64().ok_or_else(|| self.bad(field, "is not an integer array"))
    }

    fn shape(&self, field: &str) -> Result<Vec<usize>> {
        let v = self.ints(field)?;
        if v.iter().any(|&d| d <= 0 || d > MAX_SIZE) {
            return Err(self.bad(field, &format!("holds a size outside 1 to {MAX_SIZE}: {v:?}")));
        }
        Ok(v.into_iter().map(|d| d as usize).collect())
    }

    /// A per-dimension pair given as one or two non-negative integers; `default` when missing.
    fn pair(&self, field: &str, default: Option<usize>) -> Result<[usize; 2]> {
        if self.optional(field).is_none() {
            if let Some(d) = default {
                return Ok([d, d]);
            }
        }
        let v = self.ints(field)?;
        match v.as_slice() {
            [a] if (0..=MAX_SIZE).contains(a) => Ok([*a as usize, *a as usize]),
            [a, b] if (0..=MAX_SIZE).contains(a) && (0..=MAX_SIZE).contains(b) => Ok([*a as usize, *b as usize]),
            _ => Err(self.bad(field, &format!("must hold one or two integers from 0 to {MAX_SIZE}, got {v:?}"))),
        }
    }

    /// Convolution padding: integers, or the strings `valid` and `same` (odd kernels).
    fn padding(&self, kernel: [usize; 2]) -> Result<[usize; 2]> {
        if let Some(s) = self.optional("padding").and_then(NirArray::as_str) {
            return match s {
                "valid" => Ok([0, 0]),
                "same" if kernel.iter().all(|k| k % 2 == 1) => Ok([kernel[0] / 2, kernel[1] / 2]),
                other => Err(self.bad(
                    "padding",
                    &format!("'{other}' is not supported (integers, 'valid', or 'same' with odd kernels)"),
                )),
            };
        }
        self.pair("padding", Some(0))
    }

    fn optional_scalar_i64(&self, field: &str) -> Result<Option<i64>> {
        if self.optional(field).is_none() {
            return Ok(None);
        }
        match self.ints(field)?.as_slice() {
            [v] => Ok(Some(*v)),
            other => Err(self.bad(field, &format!("must be one integer, got {other:?}"))),
        }
    }

    fn optional_int(&self, field: &str) -> Result<Option<usize>> {
        match self.optional_scalar_i64(field)? {
            Some(v) if v < 0 => Err(self.bad(field, &format!("must be non-negative, got {v}"))),
            v => Ok(v.map(|v| v as usize)),
        }
    }

    fn floats(&self, field: &str) -> Result<NirArray> {
        let a = self.array(field)?;
        if matches!(a.data, NirData::Str(_)) {
            return Err(self.bad(field, "holds strings, not numbers"));
        }
        Ok(a.clone())
    }

    /// A float array, or zeros shaped like `like` when the file leaves it out (older NIR files have no
    /// `v_reset`; NIR then resets to zero).
    fn floats_or_zero(&self, field: &str, like: &str) -> Result<NirArray> {
        match self.optional(field) {
            Some(_) => self.floats(field),
            None => {
                let l = self.floats(like)?;
                Ok(NirArray::filled_f32(&l.shape, 0.0))
            }
        }
    }

    fn matrix(&self, field: &str) -> Result<NirArray> {
        let a = self.floats(field)?;
        if a.shape.len() != 2 {
            return Err(self.bad(field, &format!("has shape {:?}, a weight matrix needs 2 dimensions", a.shape)));
        }
        Ok(a)
    }
}

/// A NIR graph: named nodes, directed edges (a node with several incoming edges sums its inputs) and
/// free-form metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NirGraph {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NirNode>,
    /// Edges `(from, to)`, in file order.
    pub edges: Vec<(String, String)>,
    /// Graph metadata (strings or arrays).
    pub metadata: BTreeMap<String, NirValue>,
}

impl NirGraph {
    /// Reads the graph from the `node` group of a NIR file.
    pub fn from_group(group: &BTreeMap<String, NirValue>) -> Result<Self> {
        let fields = Fields { node: "(graph)", group };
        let type_name = fields.string("type")?;
        if type_name != "NIRGraph" {
            return Err(Error::Nir(format!("the top node has type '{type_name}', expected 'NIRGraph'")));
        }
        let mut nodes = BTreeMap::new();
        match group.get("nodes") {
            Some(NirValue::Group(g)) => {
                for (name, value) in g {
                    let NirValue::Group(node) = value else {
                        return Err(Error::Nir(format!("node '{name}' is an array, not a group")));
                    };
                    nodes.insert(name.clone(), NirNode::from_group(name, node)?);
                }
            }
            _ => return Err(Error::Nir("the graph has no 'nodes' group".into())),
        }
        let edges_array = fields.array("edges")?;
        let edges = match (&edges_array.data, edges_array.shape.as_slice()) {
            (NirData::Str(v), [n, 2]) if v.len() == n * 2 => {
                v.chunks(2).map(|e| (e[0].clone(), e[1].clone())).collect()
            }
            (_, [0]) | (_, [0, _]) => Vec::new(),
            _ => {
                return Err(Error::Nir(format!(
                    "the graph's 'edges' must be an N×2 array of node names, got shape {:?}",
                    edges_array.shape
                )))
            }
        };
        let metadata = match group.get("metadata") {
            Some(NirValue::Group(m)) => m.clone(),
            _ => BTreeMap::new(),
        };
        Ok(Self { nodes, edges, metadata })
    }

    /// The graph as the `node` group of a NIR file.
    pub fn to_group(&self) -> BTreeMap<String, NirValue> {
        let mut g = BTreeMap::new();
        g.insert("type".into(), NirValue::Array(NirArray::string("NIRGraph")));
        let nodes = self.nodes.iter().map(|(k, n)| (k.clone(), NirValue::Group(n.to_group()))).collect();
        g.insert("nodes".into(), NirValue::Group(nodes));
        let flat: Vec<String> = self.edges.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
        g.insert(
            "edges".into(),
            NirValue::Array(NirArray { shape: vec![self.edges.len(), 2], data: NirData::Str(flat) }),
        );
        if !self.metadata.is_empty() {
            g.insert("metadata".into(), NirValue::Group(self.metadata.clone()));
        }
        g
    }

    /// A metadata string, if present.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key) {
            Some(NirValue::Array(a)) => a.as_str(),
            _ => None,
        }
    }

    /// The nodes in an order where every edge points forward; edges naming unknown nodes, and cycles, are
    /// errors that name them. Ties are broken by first appearance in the edge list.
    pub fn topological_order(&self) -> Result<Vec<String>> {
        for (a, b) in &self.edges {
            for n in [a, b] {
                if !self.nodes.contains_key(n) {
                    return Err(Error::Nir(format!("edge {a} -> {b} names '{n}', which is not a node of the graph")));
                }
            }
        }
        let mut rank: HashMap<&str, usize> = HashMap::new();
        for (a, b) in &self.edges {
            for n in [a, b] {
                let next = rank.len();
                rank.entry(n.as_str()).or_insert(next);
            }
        }
        for n in self.nodes.keys() {
            let next = rank.len();
            rank.entry(n.as_str()).or_insert(next);
        }
        let mut indegree: HashMap<&str, usize> = self.nodes.keys().map(|k| (k.as_str(), 0)).collect();
        for (_, b) in &self.edges {
            *indegree.get_mut(b.as_str()).expect("checked above") += 1;
        }
        // Among the nodes whose inputs are all placed, the one that appears first in the edge list goes next.
        let mut ready: BinaryHeap<Reverse<(usize, &str)>> =
            indegree.iter().filter(|(_, &d)| d == 0).map(|(&k, _)| Reverse((rank[k], k))).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(Reverse((_, n))) = ready.pop() {
            order.push(n.to_string());
            for (a, b) in &self.edges {
                if a == n {
                    let d = indegree.get_mut(b.as_str()).expect("checked above");
                    *d -= 1;
                    if *d == 0 {
                        ready.push(Reverse((rank[b.as_str()], b.as_str())));
                    }
                }
            }
        }
        if order.len() < self.nodes.len() {
            let mut stuck: Vec<&str> = indegree.iter().filter(|(_, &d)| d > 0).map(|(&k, _)| k).collect();
            stuck.sort();
            return Err(Error::Nir(format!("the graph has a cycle through the nodes {}", stuck.join(", "))));
        }
        Ok(order)
    }

    /// The sources of the edges into `node`, in edge order.
    pub fn inputs_of(&self, node: &str) -> Vec<&str> {
        self.edges.iter().filter(|(_, b)| b == node).map(|(a, _)| a.as_str()).collect()
    }

    /// The targets of the edges out of `node`, in edge order.
    pub fn outputs_of(&self, node: &str) -> Vec<&str> {
        self.edges.iter().filter(|(a, _)| a == node).map(|(_, b)| b.as_str()).collect()
    }
}
