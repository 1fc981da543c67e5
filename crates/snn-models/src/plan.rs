//! The network resolved for execution. Built once from the spec when a network is made, it gives both
//! training passes every layer's input, weight and geometry as indices and numbers, so that neither pass looks
//! a layer or a weight up by name (names are used at the boundaries only: masks, activity, checkpoints).

use std::collections::HashMap;

use snn_core::events::ConvGeometry;

use crate::spec::{LayerSpec, NetworkSpec, ShortcutKind, INPUT};
use crate::{Error, Result};

/// Where a layer reads its input from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// The network's input window.
    Input,
    /// The output of the layer with this index in [`Plan::layers`].
    Layer(usize),
}

/// A residual shortcut added into a convolution's input current.
#[derive(Debug, Clone)]
pub(crate) struct Shortcut {
    /// What the shortcut reads.
    pub from: Feed,
    /// How it maps its input to the convolution's output shape.
    pub map: ShortcutMap,
}

/// The map of a residual shortcut.
#[derive(Debug, Clone)]
pub(crate) enum ShortcutMap {
    /// A 1×1 convolution with its own weight.
    Conv1x1 {
        /// Index of the weight in the network's weight list.
        weight: usize,
        /// Geometry of the 1×1 convolution.
        geometry: ConvGeometry,
    },
    /// Identity subsampling: output `(c, i, j)` is input `(c, s·i, s·j)`.
    Subsample {
        /// The stride `s`.
        stride: usize,
        /// Per-sample shape of the input `[C, H, W]`.
        in_shape: [usize; 3],
    },
}

/// What a layer computes from its input.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Convolution into LIF neurons, with an optional shortcut.
    Conv {
        /// Index of the kernel in the network's weight list.
        weight: usize,
        /// Geometry of the convolution.
        geometry: ConvGeometry,
        /// The residual shortcut into the same neurons.
        shortcut: Option<Shortcut>,
    },
    /// Fully connected map into LIF neurons.
    Fc {
        /// Index of the weight in the network's weight list.
        weight: usize,
        /// Output neurons.
        outputs: usize,
    },
    /// Average pooling into IF neurons.
    Pool {
        /// Window side and stride.
        kernel: usize,
        /// Per-sample shape of the input `[C, H, W]`.
        in_shape: [usize; 3],
    },
    /// Linear map into the leaky readout.
    Readout {
        /// Index of the weight in the network's weight list.
        weight: usize,
        /// Classes (readout neurons).
        classes: usize,
    },
}

/// One layer of a [`Plan`].
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// The layer's name in the spec.
    pub name: String,
    /// Where its input comes from.
    pub from: Feed,
    /// What it computes.
    pub op: Op,
    /// Per-sample output shape.
    pub shape: Vec<usize>,
    /// Outputs per sample (neurons, or classes for the readout).
    pub neurons: usize,
    /// Index of the last layer that reads this layer's output, if any.
    pub last_read: Option<usize>,
}

impl Layer {
    /// Whether the layer ends in spiking neurons (every layer but the readout).
    pub fn spikes(&self) -> bool {
        !matches!(self.op, Op::Readout { .. })
    }

    /// Whether the layer's neurons are the IF neurons after pooling.
    pub fn is_pool(&self) -> bool {
        matches!(self.op, Op::Pool { .. })
    }
}

/// A network's layers in execution order, resolved to indices.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The layers; the last one is the readout.
    pub layers: Vec<Layer>,
    /// Per-sample input shape `[C, H, W]`.
    pub input_shape: [usize; 3],
}

impl Plan {
    /// Resolves a validated spec whose per-layer output shapes are `shapes`, with its weights named (in
    /// order) by `weight_names`.
    pub fn new(spec: &NetworkSpec, shapes: &HashMap<String, Vec<usize>>, weight_names: &[String]) -> Result<Self> {
        let shape3 = |name: &str| -> Result<[usize; 3]> {
            let shape = if name == INPUT { &spec.input_shape } else { &shapes[name] };
            match shape[..] {
                [c, h, w] => Ok([c, h, w]),
                _ => Err(Error::Spec(format!("'{name}' feeds a convolution or pooling but has shape {shape:?}"))),
            }
        };
        let weight = |layer: &str| -> Result<usize> {
            let name = format!("{layer}.weight");
            weight_names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| Error::Weights(format!("missing tensor '{name}'")))
        };
        let geometry = |input: &str, outputs: usize, kernel: usize, padding: usize, stride: usize| {
            let shape = shape3(input)?;
            ConvGeometry::new(shape, outputs, kernel, padding, stride)
                .ok_or_else(|| Error::Spec(format!("kernel {kernel} does not fit input '{input}' {shape:?}")))
        };
        let index: HashMap<&str, usize> = spec.layers.iter().enumerate().map(|(i, l)| (l.name(), i)).collect();
        let feed = |name: &str| -> Result<Feed> {
            if name == INPUT {
                return Ok(Feed::Input);
            }
            index.get(name).map(|&i| Feed::Layer(i)).ok_or_else(|| Error::Spec(format!("unknown layer '{name}'")))
        };
        let mut layers = Vec::with_capacity(spec.layers.len());
        for layer in &spec.layers {
            let op = match layer {
                LayerSpec::Conv(c) => {
                    let shortcut = match &c.shortcut {
                        None => None,
                        Some(sc) => Some(Shortcut {
                            from: feed(&sc.input)?,
                            map: match sc.kind {
                                ShortcutKind::Conv1x1 => ShortcutMap::Conv1x1 {
                                    weight: weight(&sc.name)?,
                                    geometry: geometry(&sc.input, c.out_channels, 1, 0, sc.stride)?,
                                },
                                ShortcutKind::Subsample => {
                                    ShortcutMap::Subsample { stride: sc.stride, in_shape: shape3(&sc.input)? }
                                }
                            },
                        }),
                    };
                    Op::Conv {
                        weight: weight(&c.name)?,
                        geometry: geometry(&c.input, c.out_channels, c.kernel, c.padding, c.stride)?,
                        shortcut,
                    }
                }
                LayerSpec::Fc(f) => Op::Fc { weight: weight(&f.name)?, outputs: f.out_features },
                LayerSpec::Pool(p) => Op::Pool { kernel: p.kernel, in_shape: shape3(&p.input)? },
                LayerSpec::Readout(r) => Op::Readout { weight: weight(&r.name)?, classes: r.out_features },
            };
            let shape = shapes[layer.name()].clone();
            layers.push(Layer {
                name: layer.name().to_string(),
                from: feed(layer.input())?,
                op,
                neurons: shape.iter().product(),
                shape,
                last_read: None,
            });
        }
        for i in 0..layers.len() {
            let mut reads = vec![layers[i].from];
            if let Op::Conv { shortcut: Some(sc), .. } = &layers[i].op {
                reads.push(sc.from);
            }
            for from in reads {
                if let Feed::Layer(j) = from {
                    layers[j].last_read = Some(i);
                }
            }
        }
        Ok(Self { layers, input_shape: shape3(INPUT)? })
    }

    /// Index of the layer named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Entries per sample of what `from` holds.
    pub fn feed_len(&self, from: Feed) -> usize {
        match from {
            Feed::Input => self.input_shape.iter().product(),
            Feed::Layer(i) => self.layers[i].neurons,
        }
    }

    /// The readout (the last layer) and its weight and class count.
    pub fn readout(&self) -> Result<(&Layer, usize, usize)> {
        match self.layers.last() {
            Some(l @ Layer { op: Op::Readout { weight, classes }, .. }) => Ok((l, *weight, *classes)),
            _ => Err(Error::Spec("network has no readout".into())),
        }
    }
}
