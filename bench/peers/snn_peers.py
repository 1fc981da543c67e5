#!/usr/bin/env python3
"""Peer benchmark: the spiking LeNet and VGG9 of Lee et al. 2020 in plain PyTorch, snnTorch and SpikingJelly.

Two modes.

Timing (the protocol `cargo xtask bench --peers` speaks):

    snn_peers.py --impl {plain,snntorch,spikingjelly} --model {mnist,vgg9} --batch B --timesteps T
                 --mode {train,infer} --steps N --threads K [--device {cpu,cuda}]
                 [--weights W.safetensors] [--pixels P.safetensors]

builds the network in the chosen implementation, runs one warm-up step and then N timed steps on seeded
random inputs, and prints one final line of key=value pairs, among them `sec_per_step` (median),
`sec_min`, `peak_rss_mb` and `rss_base_mb`. Optionally the weights come from `<layer>.weight` tensors of
W (instead of the seeded initialisation) and the images from P: `pixels` [B, C, H, W] (f32 raw values in
[0, 1], normalised here as the model's recipe says) and `labels` [B]; every step still encodes fresh
Bernoulli spikes from them. The result line then says `weights=given` and `pixels=given` (else `seeded`).
With `--device cuda` the network, the spike draws and the dropout masks live on the first GPU, and the two
memory fields hold the GPU memory PyTorch allocated (peak, and before the first step) instead of the RSS.

Forward check (plain PyTorch only):

    snn_peers.py --check-forward --model {mnist,vgg9} --weights W.safetensors --input X.safetensors
                 --out Y.safetensors [--dtype {f32,f64}]

runs the plain network without dropout on the input window `input` [T, B, C, H, W] with the weights
`<layer>.weight` and writes the readout `output` [B, classes] (f32), plus the spike count of every
spiking layer per neuron position (`count.<layer>`, summed over steps and batch), then prints
`params=<number of weights>`.

See README.md beside this file for the neuron mapping of each library.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

# --------------------------------------------------------------------------------------------------------
# The networks, as layer tables (the same layers, names and shapes as crates/snn-models/src/zoo.rs)
# --------------------------------------------------------------------------------------------------------

LEAK = 0.99  # λ of the hidden LIF neurons and of the readout
THRESHOLD = 1.0  # θ of the hidden LIF neurons; also normalises the readout
POOL_THRESHOLD = 0.75  # θ of the IF neurons after average pooling (no leak)
NG_EPS = 1e-3  # guard of the leak-correction factor
LR = 0.0085
WEIGHT_DECAY = 5e-4


def _conv(name, cin, cout, k, dropout):
    return {"kind": "conv", "name": name, "in": cin, "out": cout, "kernel": k, "padding": k // 2, "dropout": dropout}


def _pool(name):
    return {"kind": "pool", "name": name}


def _fc(name, fin, fout, dropout):
    return {"kind": "fc", "name": name, "in": fin, "out": fout, "dropout": dropout}


def _readout(name, fin, classes):
    return {"kind": "readout", "name": name, "in": fin, "out": classes}


MODELS = {
    # MNIST LeNet: 20C5 - AP2 - 50C5 - AP2 - FC200 - FC10, no dropout; unsigned input spikes at rate x/2.
    "mnist": {
        "input": (1, 28, 28),
        "signed": False,
        "gain": 0.5,
        "mean": None,
        "std": None,
        "dropout_p": 0.0,
        "layers": [
            _conv("cnn1", 1, 20, 5, False),
            _pool("pool1"),
            _conv("cnn2", 20, 50, 5, False),
            _pool("pool2"),
            _fc("fc0", 50 * 7 * 7, 200, False),
            _readout("fc1", 200, 10),
        ],
    },
    # CIFAR-10 VGG9: 64C3 ×2 - AP2 - 128C3 ×2 - AP2 - 256C3 ×3 - AP2 - FC1024 - FC10, dropout 0.2 on every
    # spiking conv and FC0; normalised pixels, signed input spikes at rate |x|.
    "vgg9": {
        "input": (3, 32, 32),
        "signed": True,
        "gain": 1.0,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.557, 0.549, 0.5534),
        "dropout_p": 0.2,
        "layers": [
            _conv("cnn11", 3, 64, 3, True),
            _conv("cnn12", 64, 64, 3, True),
            _pool("pool1"),
            _conv("cnn21", 64, 128, 3, True),
            _conv("cnn22", 128, 128, 3, True),
            _pool("pool2"),
            _conv("cnn31", 128, 256, 3, True),
            _conv("cnn32", 256, 256, 3, True),
            _conv("cnn33", 256, 256, 3, True),
            _pool("pool3"),
            _fc("fc0", 256 * 4 * 4, 1024, True),
            _readout("fc1", 1024, 10),
        ],
    },
}
MODEL_ALIASES = {"lenet": "mnist"}
IMPLS = ("plain", "snntorch", "spikingjelly")


def weight_shapes(model):
    """The weights of a model, in layer order: (name, shape)."""
    out = []
    for layer in MODELS[model]["layers"]:
        if layer["kind"] == "conv":
            out.append((layer["name"] + ".weight", (layer["out"], layer["in"], layer["kernel"], layer["kernel"])))
        elif layer["kind"] in ("fc", "readout"):
            out.append((layer["name"] + ".weight", (layer["out"], layer["in"])))
    return out


def parameter_count(model):
    return sum(math.prod(shape) for _, shape in weight_shapes(model))


def layer_shapes(model):
    """Per-sample output shape of every layer, by name."""
    shape = MODELS[model]["input"]
    shapes = {}
    for layer in MODELS[model]["layers"]:
        if layer["kind"] == "conv":
            shape = (layer["out"], shape[1], shape[2])  # stride 1, padding k // 2
        elif layer["kind"] == "pool":
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        else:
            if math.prod(shape) != layer["in"]:
                raise AssertionError(f"{layer['name']}: {shape} does not flatten to {layer['in']}")
            shape = (layer["out"],)
        shapes[layer["name"]] = shape
    return shapes


# --------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------


def he_normal_(weight):
    """N(0, sqrt(2 / fan_in)), fan_in = every input of one output neuron (k·k·C_in, or in_features)."""
    import torch

    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / weight[0].numel()))


def normalise_pixels(model, pixels, dtype):
    """Raw f32 pixels in [0, 1], [B, C, H, W], normalised as the model's recipe says (VGG9: CIFAR-10 mean and
    standard deviation; MNIST: unchanged)."""
    import torch

    cfg = MODELS[model]
    if cfg["mean"] is not None:
        mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
        std = torch.tensor(cfg["std"]).view(-1, 1, 1)
        pixels = (pixels - mean) / std
    return pixels.to(dtype)


def make_pixels(model, batch, generator, dtype):
    """Seeded uniform pixels in [0, 1], normalised as the model's recipe says: [B, C, H, W]."""
    import torch

    pixels = torch.rand((batch, *MODELS[model]["input"]), generator=generator, dtype=torch.float32)
    return normalise_pixels(model, pixels, dtype)


def read_tensors(path, names, what):
    """Those of the named tensors that a safetensors file holds (others are not read), and the names of all
    its tensors: ({name: tensor}, [names]). Ends with exit code 2 on an unreadable file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            present = sorted(f.keys())
            return {name: f.get_tensor(name) for name in names if name in present}, present
    except Exception as e:  # noqa: BLE001 (any reading or parsing error)
        fail(f"cannot read {what} from {path}: {e}")


def load_weights(net, model, path):
    """Copies the tensors `<layer>.weight` of a safetensors file into the layers of the same names of `net`
    (any of the three implementations; they name their weighted layers alike), converting to the network's
    dtype. Other tensors and the metadata are ignored; a missing, mis-shaped or non-float tensor ends with
    exit code 2."""
    import torch

    shapes = weight_shapes(model)
    weights, _ = read_tensors(path, [name for name, _ in shapes], "weights")
    with torch.no_grad():
        for name, shape in shapes:
            if name not in weights:
                fail(f"{path} has no tensor '{name}' (model {model} needs {name} of shape {list(shape)})")
            w = weights[name]
            if tuple(w.shape) != shape:
                fail(f"{path}: '{name}' has shape {list(w.shape)}, model {model} needs {list(shape)}")
            if not w.is_floating_point():
                fail(f"{path}: '{name}' has dtype {w.dtype}, expected a float tensor (f32)")
            target = getattr(net, name.rsplit(".", 1)[0]).weight
            target.copy_(w.to(target.dtype))


def load_pixels(model, path, batch, dtype):
    """Reads `pixels` (raw values in [0, 1], [B, C, H, W]) and `labels` ([B], integer or integral float) from
    a safetensors file; returns the normalised pixels and the labels (int64). B must equal `batch`. Any
    problem ends with exit code 2."""
    import torch

    cfg = MODELS[model]
    classes = cfg["layers"][-1]["out"]
    expected = f"[{batch}, {', '.join(map(str, cfg['input']))}]"
    tensors, present = read_tensors(path, ["pixels", "labels"], "pixels and labels")
    for name in ("pixels", "labels"):
        if name not in tensors:
            fail(
                f"{path} has no tensor '{name}' (found: {', '.join(present) or 'none'}; needs 'pixels' {expected}, "
                f"raw values in [0, 1], and 'labels' [{batch}])"
            )
    pixels, labels = tensors["pixels"], tensors["labels"]
    if pixels.dim() != 4 or tuple(pixels.shape[1:]) != cfg["input"]:
        fail(f"{path}: 'pixels' has shape {list(pixels.shape)}, model {model} needs {expected}")
    if pixels.shape[0] != batch:
        fail(f"{path}: 'pixels' holds {pixels.shape[0]} images but --batch is {batch} (shape {expected} needed)")
    if not pixels.is_floating_point():
        fail(f"{path}: 'pixels' has dtype {pixels.dtype}, expected f32 raw values in [0, 1]")
    pixels = pixels.to(torch.float32)
    if not bool(((pixels >= 0.0) & (pixels <= 1.0)).all()):
        fail(
            f"{path}: 'pixels' has values outside [0, 1] (min {pixels.min().item():.6g}, max "
            f"{pixels.max().item():.6g}); give raw, not normalised pixels"
        )
    if tuple(labels.shape) != (batch,):
        fail(f"{path}: 'labels' has shape {list(labels.shape)}, expected [{batch}] (one per image, --batch {batch})")
    if labels.dtype == torch.bool or labels.is_complex():
        fail(f"{path}: 'labels' has dtype {labels.dtype}, expected an integer or f32 tensor")
    if labels.is_floating_point():
        labels = labels.to(torch.float64)
        if not bool((labels == labels.round()).all()):
            fail(f"{path}: 'labels' holds non-integral values")
    labels = labels.to(torch.int64)
    if not bool(((labels >= 0) & (labels < classes)).all()):
        fail(f"{path}: 'labels' has values outside [0, {classes}) (min {int(labels.min())}, max {int(labels.max())})")
    return normalise_pixels(model, pixels, dtype), labels


def encode(model, pixels, timesteps, generator):
    """Bernoulli rate coding with a fresh draw at every step: a spike of sign(x) where gain·|x| > U(0, 1).

    Returns the window [T, B, C, H, W] (unsigned MNIST: gain 1/2, spikes in {0, 1}; CIFAR: gain 1,
    spikes in {-1, 0, 1})."""
    import torch

    gain = MODELS[model]["gain"]
    r = torch.rand((timesteps, *pixels.shape), generator=generator, dtype=pixels.dtype, device=generator.device)
    fired = (gain * pixels.abs()).unsqueeze(0) > r
    return fired.to(pixels.dtype) * torch.sign(pixels).unsqueeze(0)


def draw_masks(model, batch, generator, dtype):
    """One inverted-dropout mask per layer with dropout, [B, ...] with values {0, 1/(1-p)}, held over the
    whole window (one mask per sample, per neuron position)."""
    import torch

    cfg = MODELS[model]
    p = cfg["dropout_p"]
    shapes = layer_shapes(model)
    masks = {}
    for layer in cfg["layers"]:
        if layer.get("dropout") and p > 0.0:
            keep = torch.rand((batch, *shapes[layer["name"]]), generator=generator, device=generator.device) >= p
            masks[layer["name"]] = keep.to(dtype) / (1.0 - p)
    return masks


def leaky_readout_value(currents, leak=LEAK, threshold=THRESHOLD):
    """M(t) = λ·(M(t-1) + I(t)), M(0) = 0; returns M(T) / (θ·T). Differentiable through the leak."""
    steps = currents.shape[0]
    m = currents[0] * leak
    for t in range(1, steps):
        m = (m + currents[t]) * leak
    return m / (threshold * steps)


# --------------------------------------------------------------------------------------------------------
# Plain PyTorch: the paper's method, layer-major (one convolution per layer over all T·B frames) with the
# neuron recurrences and the spike-based backward rule as autograd Functions
# --------------------------------------------------------------------------------------------------------


def _plain_functions():
    import torch

    class SpikeWindow(torch.autograd.Function):
        """Neurons with hard reset to zero over a window of input currents [T, B, ...].

        Forward, from V(0) = 0:  U(t) = V(t-1) + I(t);  s(t) = 1[U(t) > θ];  V(t) = λ·(1 - s(t))·U(t).

        Backward (Lee et al. 2020 as the authors coded it): the error reaches the input current only at the
        neuron's own spike times, scaled by `scale` (1/θ for the LIF layers, 1 for the pooling neurons) and,
        for the LIF layers, by the leak-correction factor NG = 1[LF > ε] + ln(λ)·LF/(Tot + 1[Tot < ε]) with
        LF = Σ_t λ^(T-t) s(t) and Tot = Σ_t s(t); it is carried back to the inputs since the previous spike,
        cut at every reset, and not attenuated by the leak:
            δ(t) = s(t)·NG·scale·g(t) + (1 - s(t))·δ(t+1),  δ(T+1) = 0.
        """

        @staticmethod
        def forward(ctx, currents, threshold, leak, scale, leak_correction):
            steps = currents.shape[0]
            spikes = torch.empty(currents.shape, dtype=torch.bool, device=currents.device)
            v = torch.zeros_like(currents[0])
            for t in range(steps):
                u = v + currents[t]
                torch.gt(u, threshold, out=spikes[t])
                v = u if leak == 1.0 else u.mul_(leak)
                v.masked_fill_(spikes[t], 0.0)
            ctx.save_for_backward(spikes)
            ctx.constants = (leak, scale, leak_correction)
            return spikes.to(currents.dtype)

        @staticmethod
        def backward(ctx, grad_spikes):
            (spikes,) = ctx.saved_tensors
            leak, scale, leak_correction = ctx.constants
            steps = spikes.shape[0]
            gain = grad_spikes * scale
            if leak_correction:
                lf = torch.zeros(spikes.shape[1:], dtype=grad_spikes.dtype, device=spikes.device)
                for t in range(steps):
                    lf.mul_(leak).add_(spikes[t].to(lf.dtype))
                tot = spikes.sum(0, dtype=grad_spikes.dtype)
                ng = (lf > NG_EPS).to(lf.dtype) + math.log(leak) * lf / (tot + (tot < NG_EPS).to(tot.dtype))
                gain = gain * ng
            grad = torch.empty_like(grad_spikes)
            delta = torch.zeros_like(grad_spikes[0])
            for t in range(steps - 1, -1, -1):
                delta = torch.where(spikes[t], gain[t], delta)
                grad[t] = delta
            return grad, None, None, None, None

    class LeakyReadout(torch.autograd.Function):
        """Forward: M(t) = λ·(M(t-1) + I(t)), y = M(T)/(θ·T). Backward as coded by the authors: the leak is
        not differentiated, ∂y/∂I(t) = 1/(θ·T) at every step."""

        @staticmethod
        def forward(ctx, currents, threshold, leak):
            ctx.constants = (currents.shape[0], threshold)
            m = torch.zeros_like(currents[0])
            for t in range(currents.shape[0]):
                m = (m + currents[t]) * leak
            return m / (threshold * currents.shape[0])

        @staticmethod
        def backward(ctx, grad_out):
            steps, threshold = ctx.constants
            g = grad_out / (threshold * steps)
            return g.unsqueeze(0).expand(steps, *g.shape).contiguous(), None, None

    return SpikeWindow, LeakyReadout


def build_plain(model, dtype):
    import torch
    import torch.nn.functional as F
    from torch import nn

    SpikeWindow, LeakyReadout = _plain_functions()
    cfg = MODELS[model]

    class PlainNet(nn.Module):
        def __init__(self):
            super().__init__()
            for layer in cfg["layers"]:
                if layer["kind"] == "conv":
                    k = layer["kernel"]
                    mod = nn.Conv2d(layer["in"], layer["out"], k, padding=layer["padding"], bias=False)
                elif layer["kind"] in ("fc", "readout"):
                    mod = nn.Linear(layer["in"], layer["out"], bias=False)
                else:
                    continue
                he_normal_(mod.weight)
                self.add_module(layer["name"], mod)
            self.to(dtype)

        def forward(self, window, masks=None, counts=None):
            """window [T, B, C, H, W] -> readout [B, classes]; `masks` by layer name (training), `counts`
            (a dict) receives every spiking layer's spike count per neuron position."""
            steps, batch = window.shape[:2]
            x = window
            for layer in cfg["layers"]:
                name, kind = layer["name"], layer["kind"]
                frames = x.reshape(steps * batch, *x.shape[2:])
                if kind == "conv":
                    w = getattr(self, name).weight
                    cur = F.conv2d(frames, w, padding=layer["padding"])
                elif kind == "pool":
                    cur = F.avg_pool2d(frames, 2)
                else:
                    cur = F.linear(frames.reshape(steps * batch, -1), getattr(self, name).weight)
                cur = cur.reshape(steps, batch, *cur.shape[1:])
                if kind == "readout":
                    return LeakyReadout.apply(cur, THRESHOLD, LEAK)
                if kind == "pool":
                    spikes = SpikeWindow.apply(cur, POOL_THRESHOLD, 1.0, 1.0, False)
                else:
                    spikes = SpikeWindow.apply(cur, THRESHOLD, LEAK, 1.0 / THRESHOLD, True)
                if counts is not None:
                    counts[name] = spikes.detach().sum(dim=(0, 1))
                if masks is not None and name in masks:
                    spikes = spikes * masks[name]
                x = spikes
            raise AssertionError("the layer table has no readout")

    return PlainNet()


# --------------------------------------------------------------------------------------------------------
# snnTorch: step-major (the network is called once per time step, as in snnTorch's tutorials), snn.Leaky
# neurons with reset to zero and the default surrogate
# --------------------------------------------------------------------------------------------------------


def build_snntorch(model, dtype):
    import snntorch as snn
    import torch
    import torch.nn.functional as F
    from torch import nn

    cfg = MODELS[model]

    class SnnTorchNet(nn.Module):
        def __init__(self):
            super().__init__()
            for layer in cfg["layers"]:
                name, kind = layer["name"], layer["kind"]
                if kind == "conv":
                    mod = nn.Conv2d(layer["in"], layer["out"], layer["kernel"], padding=layer["padding"], bias=False)
                elif kind in ("fc", "readout"):
                    mod = nn.Linear(layer["in"], layer["out"], bias=False)
                if kind == "pool":
                    self.add_module(name, nn.AvgPool2d(2))
                    self.add_module(name + "_if", snn.Leaky(beta=1.0, threshold=POOL_THRESHOLD, reset_mechanism="zero"))
                else:
                    he_normal_(mod.weight)
                    self.add_module(name, mod)
                    if kind != "readout":
                        self.add_module(name + "_lif", snn.Leaky(beta=LEAK, threshold=THRESHOLD, reset_mechanism="zero"))
            self.to(dtype)

        def forward(self, window, masks=None):
            steps = window.shape[0]
            mems = {}
            readout = None
            for t in range(steps):
                x = window[t]
                for layer in cfg["layers"]:
                    name, kind = layer["name"], layer["kind"]
                    if kind == "readout":
                        cur = getattr(self, name)(x.flatten(1))
                        readout = cur * LEAK if readout is None else (readout + cur) * LEAK
                        break
                    if kind == "fc":
                        x = x.flatten(1)
                    cur = getattr(self, name)(x)
                    neuron = getattr(self, name + ("_if" if kind == "pool" else "_lif"))
                    mem = mems.get(name)
                    if mem is None:
                        mem = torch.zeros_like(cur)
                    x, mems[name] = neuron(cur, mem)
                    x = x.to(cur.dtype)  # snnTorch's surrogates return f32 spikes whatever the dtype (no-op in f32)
                    if masks is not None and name in masks:
                        x = x * masks[name]
            return readout / (THRESHOLD * steps)

    return SnnTorchNet()


# --------------------------------------------------------------------------------------------------------
# SpikingJelly: multi-step mode (layers take the whole [T, B, ...] window), LIFNode/IFNode with hard reset
# to zero and the default surrogate, SpikingJelly's own dropout (one mask held over the window)
# --------------------------------------------------------------------------------------------------------


def build_spikingjelly(model, dtype):
    import torch
    from spikingjelly.activation_based import functional, layer as sj_layer, neuron
    from torch import nn

    cfg = MODELS[model]
    p = cfg["dropout_p"]
    # SpikingJelly fires at H >= threshold, ours at U > θ: the next representable value above θ in the
    # network's dtype gives the same firing rule (pooled spikes hit 0.75 exactly, so this matters).
    above = lambda theta: torch.nextafter(torch.tensor(theta, dtype=dtype), torch.tensor(math.inf, dtype=dtype)).item()
    lif_threshold, pool_threshold = above(THRESHOLD), above(POOL_THRESHOLD)

    class SpikingJellyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.order = []
            for spec in cfg["layers"]:
                name, kind = spec["name"], spec["kind"]
                if kind == "conv":
                    mod = sj_layer.Conv2d(
                        spec["in"], spec["out"], spec["kernel"], padding=spec["padding"], bias=False, step_mode="m"
                    )
                elif kind in ("fc", "readout"):
                    mod = sj_layer.Linear(spec["in"], spec["out"], bias=False, step_mode="m")
                if kind == "pool":
                    self._add(name, sj_layer.AvgPool2d(2, 2, step_mode="m"))
                    self._add(name + "_if", neuron.IFNode(v_threshold=pool_threshold, v_reset=0.0, step_mode="m"))
                    continue
                if kind in ("fc", "readout"):
                    self._add(name + "_flatten", sj_layer.Flatten(step_mode="m"))
                he_normal_(mod.weight)
                self._add(name, mod)
                if kind == "readout":
                    continue
                # λ = 1 - 1/τ with the input not decayed: H(t) = V(t-1)·(1 - 1/τ) + X(t).
                self._add(
                    name + "_lif",
                    neuron.LIFNode(
                        tau=1.0 / (1.0 - LEAK), decay_input=False, v_threshold=lif_threshold, v_reset=0.0, step_mode="m"
                    ),
                )
                if spec.get("dropout") and p > 0.0:
                    self._add(name + "_dropout", sj_layer.Dropout(p, step_mode="m"))
            self.to(dtype)

        def _add(self, name, mod):
            self.add_module(name, mod)
            self.order.append(name)

        def forward(self, window, masks=None):
            functional.reset_net(self)  # fresh membranes and dropout masks for every window
            x = window
            for name in self.order:
                x = getattr(self, name)(x)
            return leaky_readout_value(x)

    return SpikingJellyNet()


BUILDERS = {"plain": build_plain, "snntorch": build_snntorch, "spikingjelly": build_spikingjelly}


# --------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------


def _status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb():
    """Current resident set size of this process in MB."""
    value = _status_mb("VmRSS:")
    return value if value is not None else peak_rss_mb()


def peak_rss_mb():
    """Peak resident set size of this process in MB."""
    value = _status_mb("VmHWM:")
    if value is not None:
        return value
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


# --------------------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------------------


def run_timing(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: this PyTorch sees no CUDA device")
    gen = torch.Generator().manual_seed(args.seed)
    dtype = torch.float32
    net = BUILDERS[args.impl](args.model, dtype)
    if args.weights is not None:
        load_weights(net, args.model, args.weights)  # replaces the seeded initialisation
    net = net.to(device)
    classes = MODELS[args.model]["layers"][-1]["out"]
    if args.pixels is not None:
        pixels, labels = load_pixels(args.model, args.pixels, args.batch, dtype)
    else:
        pixels = make_pixels(args.model, args.batch, gen, dtype)
        labels = torch.arange(args.batch) % classes
    onehot = torch.nn.functional.one_hot(labels, classes).to(dtype).to(device)
    pixels = pixels.to(device)
    if device.type == "cuda":
        # Spikes and masks are drawn where the network runs, as a GPU training loop would draw them.
        gen = torch.Generator(device=device).manual_seed(args.seed)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.0, weight_decay=WEIGHT_DECAY)
    train = args.mode == "train"
    net.train(train)
    masked = args.impl != "spikingjelly"  # SpikingJelly draws its masks in its own Dropout layers

    def step():
        if train:
            window = encode(args.model, pixels, args.timesteps, gen)
            masks = draw_masks(args.model, args.batch, gen, dtype) if masked else None
            out = net(window, masks)
            loss = ((out - onehot) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()
        with torch.no_grad():
            window = encode(args.model, pixels, args.timesteps, gen)
            out = net(window, None)
            return float(((out - onehot) ** 2).sum())

    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss_base = torch.cuda.memory_allocated(device) / 2**20 if on_gpu else rss_mb()
    times = []
    loss = float("nan")
    for rep in range(args.steps + 1):  # rep 0 is the warm-up
        start = time.perf_counter()
        loss = step()  # .item() waits for the GPU
        elapsed = time.perf_counter() - start
        if rep > 0:
            times.append(elapsed)
    times.sort()
    fields = {
        "impl": args.impl,
        "model": args.model,
        "mode": args.mode,
        "batch": args.batch,
        "timesteps": args.timesteps,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "params": parameter_count(args.model),
        "loss": f"{loss:.6g}",
        "weights": "seeded" if args.weights is None else "given",
        "pixels": "seeded" if args.pixels is None else "given",
        "sec_per_step": f"{times[len(times) // 2]:.6f}",
        "sec_min": f"{times[0]:.6f}",
        "sec_max": f"{times[-1]:.6f}",
        "device": device.type,
        # On a GPU the two memory fields are the device memory PyTorch allocated (peak and before the first
        # step), not the host's resident set.
        "peak_rss_mb": f"{(torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else peak_rss_mb()):.1f}",
        "rss_base_mb": f"{rss_base:.1f}",
    }
    print(" ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def run_check(args):
    import torch
    from safetensors.torch import save_file

    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    cfg = MODELS[args.model]
    net = build_plain(args.model, dtype)
    load_weights(net, args.model, args.weights)
    inputs, present = read_tensors(args.input, ["input"], "the input window")

    if "input" not in inputs:
        fail(f"{args.input} has no tensor 'input' (found: {', '.join(present) or 'none'})")
    window = inputs["input"]
    if window.dim() != 5 or tuple(window.shape[2:]) != cfg["input"] or window.shape[0] == 0 or window.shape[1] == 0:
        fail(
            f"{args.input}: 'input' has shape {list(window.shape)}, expected [T, B, {', '.join(map(str, cfg['input']))}]"
            " with T, B >= 1"
        )
    window = window.to(dtype)

    net.eval()
    counts = {}
    with torch.no_grad():
        out = net(window, None, counts)
    tensors = {"output": out.to(torch.float32).contiguous()}
    for name, count in counts.items():
        tensors["count." + name] = count.to(torch.float32).contiguous()
    save_file(
        tensors,
        args.out,
        metadata={"model": args.model, "dtype": args.dtype, "timesteps": str(window.shape[0]), "batch": str(window.shape[1])},
    )
    print(f"params={parameter_count(args.model)}", flush=True)


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def fail(msg):
    print(f"snn_peers.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def model_name(text):
    name = MODEL_ALIASES.get(text, text)
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model '{text}' (choose from {', '.join(MODELS)})")
    return name


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="snn_peers.py",
        description="Time the spiking LeNet (mnist) or VGG9 of Lee et al. 2020 in plain PyTorch, snnTorch or "
        "SpikingJelly, or (--check-forward) run the plain PyTorch forward pass on given weights and input.",
        epilog="Timing prints one final line of key=value pairs: sec_per_step (median of the timed steps), "
        "sec_min, sec_max, peak_rss_mb (process peak RSS), rss_base_mb (RSS before the first step), and the "
        "settings, with weights= and pixels= (given or seeded). Check mode prints params=<number of weights>.",
    )
    parser.add_argument("--impl", choices=IMPLS, help="implementation to time (timing mode)")
    parser.add_argument("--model", type=model_name, required=True, help="mnist (LeNet, 1x28x28) or vgg9 (3x32x32)")
    parser.add_argument("--batch", type=positive_int, help="batch size")
    parser.add_argument("--timesteps", type=positive_int, help="time steps T per window")
    parser.add_argument("--mode", choices=("train", "infer"), help="training step or inference pass")
    parser.add_argument("--steps", type=positive_int, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="timing: where the network runs (default cpu)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs, masks and weights (default 0)")
    parser.add_argument(
        "--weights",
        help="safetensors file with the <layer>.weight tensors (timing: optional, replaces the seeded "
        "initialisation; check: required)",
    )
    parser.add_argument(
        "--pixels",
        help="timing: safetensors file with 'pixels' [B, C, H, W] (f32, raw values in [0, 1], normalised by the "
        "script) and 'labels' [B] (integer or f32), B = --batch, instead of the seeded random images",
    )
    check = parser.add_argument_group("forward check (plain PyTorch)")
    check.add_argument("--check-forward", action="store_true", help="run the forward check instead of timing")
    check.add_argument("--input", help="safetensors file with the input window 'input' [T, B, C, H, W]")
    check.add_argument("--out", help="safetensors file to write: 'output' [B, classes] (f32) and count.<layer>")
    check.add_argument(
        "--dtype", choices=("f32", "f64"), default="f32", help="arithmetic of the forward check (default f32)"
    )
    args = parser.parse_args(argv)

    if args.check_forward:
        if args.impl not in (None, "plain"):
            parser.error(f"--check-forward runs the plain implementation only, not --impl {args.impl}")
        missing = [f"--{k}" for k in ("weights", "input", "out") if getattr(args, k) is None]
        if missing:
            parser.error(f"--check-forward needs {', '.join(missing)}")
        if args.pixels is not None:
            parser.error("--pixels applies to timing only; --check-forward reads its window from --input")
        for flag in ("weights", "input"):
            if not os.path.isfile(getattr(args, flag)):
                parser.error(f"--{flag}: no such file: {getattr(args, flag)}")
    else:
        missing = [f"--{k}" for k in ("impl", "batch", "timesteps", "mode", "steps", "threads") if getattr(args, k) is None]
        if missing:
            parser.error(f"timing needs {', '.join(missing)} (or --check-forward)")
        if args.dtype != "f32":
            parser.error("--dtype applies to --check-forward only; timing runs in f32")
        for flag in ("weights", "pixels"):
            if getattr(args, flag) is not None and not os.path.isfile(getattr(args, flag)):
                parser.error(f"--{flag}: no such file: {getattr(args, flag)}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.check_forward:
        run_check(args)
        return
    try:
        if args.impl == "snntorch":
            import snntorch  # noqa: F401
        elif args.impl == "spikingjelly":
            import spikingjelly  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        fail(f"--impl {args.impl} needs {e.name}; install bench/peers/requirements.txt ({e})")
    run_timing(args)


if __name__ == "__main__":
    main()
