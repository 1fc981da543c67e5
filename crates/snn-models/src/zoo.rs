//! Built-in architectures of Lee et al. 2020, as [`NetworkSpec`]s.

use crate::spec::{
    ConvSpec, FcSpec, InputEncoding, LayerSpec, NetworkSpec, PoolSpec, ReadoutSpec, ShortcutKind, ShortcutSpec,
};
use crate::{Error, Result};

/// Names of the built-in architectures.
pub fn builtin_names() -> &'static [&'static str] {
    &["lenet", "vgg9", "resnet11", "vgg7", "resnet7", "resnet9", "lenet-nmnist"]
}

/// Whether a built-in architecture follows the authors' published code exactly (`true`: lenet, vgg9,
/// resnet11) or is this project's derivation of the same templates (`false`: vgg7, resnet7, resnet9, whose
/// exact layer lists in the paper were not available, and lenet-nmnist, which goes beyond the paper).
pub fn is_verified(name: &str) -> bool {
    matches!(name, "lenet" | "vgg9" | "resnet11")
}

/// Where a built-in architecture comes from, in words: the authors' code, this project's derivation of the
/// paper's templates, or beyond the paper.
pub fn provenance(name: &str) -> &'static str {
    match name {
        _ if is_verified(name) => "as in the authors' code",
        "lenet-nmnist" => "beyond the paper: LeNet on N-MNIST event frames",
        _ => "derived, not verified against the paper",
    }
}

/// The built-in architecture called `name`.
pub fn builtin(name: &str) -> Result<NetworkSpec> {
    match name {
        "lenet" => Ok(lenet()),
        "vgg9" => Ok(vgg9()),
        "resnet11" => Ok(resnet11()),
        "vgg7" => Ok(vgg7()),
        "resnet7" => Ok(resnet7()),
        "resnet9" => Ok(resnet9()),
        "lenet-nmnist" => Ok(lenet_nmnist()),
        _ => Err(Error::UnknownModel { name: name.to_string(), available: builtin_names().join(", ") }),
    }
}

fn conv(name: &str, input: &str, cin: usize, cout: usize, k: usize, stride: usize, dropout: bool) -> LayerSpec {
    LayerSpec::Conv(ConvSpec {
        name: name.into(),
        input: input.into(),
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride,
        padding: k / 2,
        dropout,
        shortcut: None,
    })
}

fn pool(name: &str, input: &str) -> LayerSpec {
    LayerSpec::Pool(PoolSpec { name: name.into(), input: input.into(), kernel: 2, stride: 2, padding: 0 })
}

fn fc(name: &str, input: &str, inputs: usize, outputs: usize, dropout: bool) -> LayerSpec {
    LayerSpec::Fc(FcSpec {
        name: name.into(),
        input: input.into(),
        in_features: inputs,
        out_features: outputs,
        dropout,
    })
}

fn readout(name: &str, input: &str, inputs: usize, classes: usize) -> LayerSpec {
    LayerSpec::Readout(ReadoutSpec {
        name: name.into(),
        input: input.into(),
        in_features: inputs,
        out_features: classes,
    })
}

fn paper_spec(name: &str, family: &str, input_shape: [usize; 3], layers: Vec<LayerSpec>) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        family: family.into(),
        input_shape: input_shape.to_vec(),
        input_signed: true,
        input_gain: 1.0,
        input_encoding: InputEncoding::Poisson,
        input_mean: vec![0.4914, 0.4822, 0.4465],
        input_std: vec![0.557, 0.549, 0.5534],
        stats_after_mask: true,
        leak: 0.99,
        threshold: 1.0,
        pool_threshold: 0.75,
        dropout_p: 0.0,
        init_gain: 2.0,
        layers,
    }
}

/// MNIST LeNet: `28×28×1 – 20C5 – AP2 – 50C5 – AP2 – FC200 – FC10` (517,500 weights, no dropout),
/// unsigned input spikes at rate `x/2`, He-normal initialisation.
pub fn lenet() -> NetworkSpec {
    let mut spec = paper_spec(
        "lenet",
        "lenet",
        [1, 28, 28],
        vec![
            conv("cnn1", "input", 1, 20, 5, 1, false),
            pool("pool1", "cnn1"),
            conv("cnn2", "pool1", 20, 50, 5, 1, false),
            pool("pool2", "cnn2"),
            fc("fc0", "pool2", 50 * 7 * 7, 200, false),
            readout("fc1", "fc0", 200, 10),
        ],
    );
    spec.input_signed = false;
    spec.input_gain = 0.5;
    spec.input_mean.clear();
    spec.input_std.clear();
    spec
}

/// LeNet for N-MNIST event frames (beyond the paper): the [`lenet`] layers on a `34×34×2` input (OFF and
/// ON polarity channels), so FC200 reads `50×8×8` features (668,000 weights). The input frames are spikes
/// already; the rate-coding fields are unused.
pub fn lenet_nmnist() -> NetworkSpec {
    let mut spec = lenet();
    spec.name = "lenet-nmnist".into();
    spec.input_shape = vec![2, 34, 34];
    spec.layers[0] = conv("cnn1", "input", 2, 20, 5, 1, false);
    spec.layers[4] = fc("fc0", "pool2", 50 * 8 * 8, 200, false);
    spec
}

/// CIFAR-10 VGG9: `64C3 – 64C3 – AP2 – 128C3 – 128C3 – AP2 – 256C3 ×3 – AP2 – FC1024 – FC10`
/// (5,938,880 weights), dropout 0.2 after every spiking conv and FC0, statistics after the mask.
pub fn vgg9() -> NetworkSpec {
    let mut spec = paper_spec(
        "vgg9",
        "vgg",
        [3, 32, 32],
        vec![
            conv("cnn11", "input", 3, 64, 3, 1, true),
            conv("cnn12", "cnn11", 64, 64, 3, 1, true),
            pool("pool1", "cnn12"),
            conv("cnn21", "pool1", 64, 128, 3, 1, true),
            conv("cnn22", "cnn21", 128, 128, 3, 1, true),
            pool("pool2", "cnn22"),
            conv("cnn31", "pool2", 128, 256, 3, 1, true),
            conv("cnn32", "cnn31", 256, 256, 3, 1, true),
            conv("cnn33", "cnn32", 256, 256, 3, 1, true),
            pool("pool3", "cnn33"),
            fc("fc0", "pool3", 256 * 4 * 4, 1024, true),
            readout("fc1", "fc0", 1024, 10),
        ],
    );
    spec.dropout_p = 0.2;
    spec
}

fn with_shortcut(layer: LayerSpec, name: &str, kind: ShortcutKind, input: &str, stride: usize) -> LayerSpec {
    match layer {
        LayerSpec::Conv(mut c) => {
            c.shortcut = Some(ShortcutSpec { name: name.into(), kind, input: input.into(), stride });
            LayerSpec::Conv(c)
        }
        other => other,
    }
}

/// CIFAR-10 ResNet11 (17,936,064 weights): a 64C3 stem with pooling, four residual blocks whose shortcut
/// (1×1 conv, or identity subsampling in the last block) feeds the membrane input of the block's second
/// LIF layer, stride-2 convolutions in blocks 2 and 4, then FC1024 and the readout. Dropout 0.25,
/// statistics before the mask, initialisation `N(0, sqrt(1/fan_in))`.
pub fn resnet11() -> NetworkSpec {
    use ShortcutKind::{Conv1x1, Subsample};
    let mut spec = paper_spec(
        "resnet11",
        "resnet",
        [3, 32, 32],
        vec![
            conv("cnn11", "input", 3, 64, 3, 1, true),
            pool("pool1", "cnn11"),
            conv("cnn21", "pool1", 64, 128, 3, 1, true),
            with_shortcut(conv("cnn22", "cnn21", 128, 128, 3, 1, true), "shortcut1", Conv1x1, "pool1", 1),
            conv("cnn31", "cnn22", 128, 256, 3, 1, true),
            with_shortcut(conv("cnn32", "cnn31", 256, 256, 3, 2, true), "shortcut2", Conv1x1, "cnn22", 2),
            conv("cnn41", "cnn32", 256, 512, 3, 1, true),
            with_shortcut(conv("cnn42", "cnn41", 512, 512, 3, 1, true), "shortcut3", Conv1x1, "cnn32", 1),
            conv("cnn51", "cnn42", 512, 512, 3, 1, true),
            with_shortcut(conv("cnn52", "cnn51", 512, 512, 3, 2, true), "shortcut4", Subsample, "cnn42", 2),
            fc("fc0", "cnn52", 512 * 4 * 4, 1024, true),
            readout("fc1", "fc0", 1024, 10),
        ],
    );
    spec.dropout_p = 0.25;
    spec.stats_after_mask = false;
    spec.init_gain = 1.0;
    spec
}

/// **Derived, not verified against the paper.** VGG7 (the paper's SVHN VGG): VGG9 with its last stage
/// reduced to a single 256-channel convolution, `64C3 – 64C3 – AP2 – 128C3 – 128C3 – AP2 – 256C3 – AP2 –
/// FC1024 – FC10`, seven weight layers, same recipe and dropout as VGG9.
pub fn vgg7() -> NetworkSpec {
    let mut spec = vgg9();
    spec.name = "vgg7".into();
    spec.layers.retain(|l| !matches!(l.name(), "cnn32" | "cnn33"));
    for l in &mut spec.layers {
        if let LayerSpec::Pool(p) = l {
            if p.name == "pool3" {
                p.input = "cnn31".into();
            }
        }
    }
    spec
}

/// **Derived, not verified against the paper.** ResNet9: ResNet11 without its third residual block (the
/// stride-1 512-channel one); the last block then changes width, so its shortcut is a stride-2 1×1 conv.
pub fn resnet9() -> NetworkSpec {
    let mut spec = resnet11();
    spec.name = "resnet9".into();
    spec.layers.retain(|l| !matches!(l.name(), "cnn41" | "cnn42"));
    for l in &mut spec.layers {
        if let LayerSpec::Conv(c) = l {
            if c.name == "cnn51" {
                c.input = "cnn32".into();
                c.in_channels = 256;
            }
            if c.name == "cnn52" {
                c.shortcut = Some(ShortcutSpec {
                    name: "shortcut4".into(),
                    kind: ShortcutKind::Conv1x1,
                    input: "cnn32".into(),
                    stride: 2,
                });
            }
        }
    }
    spec
}

/// **Derived, not verified against the paper.** ResNet7 (the paper's SVHN ResNet): the 64C3 stem with
/// pooling, two residual blocks (128 and 256 channels, both stride 2 with 1×1-conv shortcuts), FC1024 and the
/// readout; seven weight layers.
pub fn resnet7() -> NetworkSpec {
    use ShortcutKind::Conv1x1;
    let mut spec = resnet11();
    spec.name = "resnet7".into();
    spec.layers = vec![
        conv("cnn11", "input", 3, 64, 3, 1, true),
        pool("pool1", "cnn11"),
        conv("cnn21", "pool1", 64, 128, 3, 1, true),
        with_shortcut(conv("cnn22", "cnn21", 128, 128, 3, 2, true), "shortcut1", Conv1x1, "pool1", 2),
        conv("cnn31", "cnn22", 128, 256, 3, 1, true),
        with_shortcut(conv("cnn32", "cnn31", 256, 256, 3, 2, true), "shortcut2", Conv1x1, "cnn22", 2),
        fc("fc0", "cnn32", 256 * 4 * 4, 1024, true),
        readout("fc1", "fc0", 1024, 10),
    ];
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_paper_code() {
        // Counts computed from the authors' layer definitions (independent of this code).
        assert_eq!(builtin("lenet").unwrap().parameter_count().unwrap(), 517_500);
        assert_eq!(builtin("vgg9").unwrap().parameter_count().unwrap(), 5_938_880);
        assert_eq!(builtin("resnet11").unwrap().parameter_count().unwrap(), 17_936_064);
    }

    #[test]
    fn lenet_dense_macs_match_a_hand_count() {
        // cnn1: 20·28·28 outputs × 25; cnn2: 50·14·14 × 20·25; fc0: 2450·200; fc1: 200·10.
        let macs: Vec<u64> = lenet().dense_macs().unwrap().into_iter().map(|(_, m)| m).collect();
        assert_eq!(macs, vec![392_000, 4_900_000, 490_000, 2_000]);
    }

    #[test]
    fn derived_networks_are_valid_and_have_the_stated_depth() {
        for (name, weight_layers) in [("vgg7", 7), ("resnet9", 9), ("resnet7", 7)] {
            let spec = builtin(name).unwrap();
            spec.validate().unwrap();
            assert!(!is_verified(name));
            let counted = spec.layers.iter().filter(|l| !matches!(l, LayerSpec::Pool(_))).count();
            assert_eq!(counted, weight_layers, "{name}");
        }
        assert!(is_verified("resnet11"));
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = builtin("vgg16").unwrap_err().to_string();
        assert!(err.contains("vgg16") && err.contains("lenet"), "{err}");
    }
}
