#!/usr/bin/env python3
"""Independent checks of this toolkit's NIR files with the field's own Python packages.

    nir_check.py simulate GRAPH.nir --input IN.json --dt DT --out OUT.json
        Reads GRAPH.nir with `nir.read` (type-checked), reports its node types, shapes and edges, and runs it in
        snnTorch (float64) on the input spike trains of IN.json: convolutions, linear maps, pooling and LIF
        neurons come from snnTorch's own NIR importer; IF and LI neurons are built here from their NIR
        definitions because snnTorch 1.0's importer maps IF to a leaky neuron with beta = 0.9 and has no LI.
        The run with snnTorch's own IF mapping is reported too (or why that mapping refuses the file), to show
        what that difference costs.

    nir_check.py snntorch-file OUT.nir --input IN.json --out OUT.json
        Builds a small network in snnTorch (conv, LIF, average pooling, non-leaky pooling neurons, flatten,
        linear, LIF), exports it with snnTorch's `export_to_nir`, appends a linear + LI readout with the nir
        package (snnTorch has no leaky-integrator neuron to export), writes it with `nir.write`, and runs the
        snnTorch network itself on IN.json.

IN.json holds {"shape": [T, B, C, H, W], "data": [...]}; OUT.json gets, per spiking node, the spikes summed over
the window and the batch (keyed by neuron node, with the synaptic node that feeds it), and the readout
membrane after the last step, [B, classes].
"""

import argparse
import copy
import json

import nir
import numpy as np
import torch

DT_SNNTORCH = 1e-4  # the step snnTorch's NIR importer and exporter assume


def load_input(path):
    with open(path) as f:
        spec = json.load(f)
    return torch.tensor(np.array(spec["data"], dtype=np.float64).reshape(spec["shape"]))


class IntegrateAndFire(torch.nn.Module):
    """NIR IF by forward Euler: v += dt * R * I; spike and reset to v_reset when v > v_threshold."""

    def __init__(self, node, dt):
        super().__init__()
        self.gain = float(np.unique(node.r)[0]) * dt
        self.threshold = float(np.unique(node.v_threshold)[0])
        self.reset = float(np.unique(node.v_reset)[0])
        self.v = None

    def forward(self, i):
        self.v = torch.zeros_like(i) if self.v is None else self.v
        self.v = self.v + self.gain * i
        s = (self.v > self.threshold).to(i.dtype)
        self.v = torch.where(s > 0, torch.full_like(self.v, self.reset), self.v)
        return s


class LeakyIntegrator(torch.nn.Module):
    """NIR LI by forward Euler: v += dt / tau * ((v_leak - v) + R * I); the membrane is the output."""

    def __init__(self, node, dt):
        super().__init__()
        self.a = dt / float(np.unique(node.tau)[0])
        self.r = float(np.unique(node.r)[0])
        self.v_leak = float(np.unique(node.v_leak)[0])
        self.v = None

    def forward(self, i):
        self.v = torch.zeros_like(i) if self.v is None else self.v
        self.v = self.v + self.a * ((self.v_leak - self.v) + self.r * i)
        return self.v


class Float64(torch.nn.Module):
    """Passes a module's output on as float64 (snnTorch's neurons return float32 spikes, exact as 0 and 1)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        # Without init_hidden (snnTorch's IF mapping) a neuron returns (spikes, membrane).
        return (out[0] if isinstance(out, tuple) else out).to(torch.float64)


def feeding(graph, name):
    return sorted(a for a, b in graph.edges if b == name)


def run_graph(graph, x, dt, snntorch_if):
    import nirtorch
    from snntorch.import_nir import _nir_to_snntorch_module

    names = {id(n): k for k, n in graph.nodes.items()}
    modules = {}

    def keep(make):
        def build(node):
            module = make(node)
            modules[names[id(node)]] = module
            return module
        return build

    snn_map = lambda n: _nir_to_snntorch_module(n, init_hidden=True)
    snn_neuron = lambda n: Float64(snn_map(n))
    node_map = {
        nir.Conv2d: keep(snn_map),
        nir.Linear: keep(snn_map),
        nir.AvgPool2d: keep(snn_map),
        nir.LIF: keep(snn_neuron),
        # NIR shapes have no batch dimension; torch's Flatten counts it.
        nir.Flatten: keep(lambda n: torch.nn.Flatten(int(n.start_dim) + 1, int(n.end_dim))),
        nir.IF: keep(snn_neuron if snntorch_if else (lambda n: IntegrateAndFire(n, dt))),
        nir.LI: keep(lambda n: LeakyIntegrator(n, dt)),
    }
    module = nirtorch.nir_to_torch(graph, node_map, dtype=torch.float64).double()
    counts = {name: 0.0 for name, n in graph.nodes.items() if isinstance(n, (nir.LIF, nir.IF))}
    hooks = []
    for name in counts:
        def hook(_m, _inp, out, name=name):
            counts[name] += float((out[0] if isinstance(out, tuple) else out).sum())
        hooks.append(modules[name].register_forward_hook(hook))
    state = None
    readout = None
    with torch.no_grad():
        for t in range(x.shape[0]):
            out, state = module(x[t]) if state is None else module(x[t], state)
            readout = out
    for h in hooks:
        h.remove()
    return counts, readout


def simulate(args):
    graph = nir.read(args.graph)
    x = load_input(args.input)
    report = {
        "nodes": {k: type(n).__name__ for k, n in graph.nodes.items()},
        "edges": sorted([a, b] for a, b in graph.edges),
        "shapes": {k: [int(d) for d in n.output_type["output"]] for k, n in graph.nodes.items()},
        "metadata_keys": sorted(graph.metadata.keys()),
    }
    counts, readout = run_graph(graph, x, args.dt, snntorch_if=False)
    report["spikes"] = [{"neuron": k, "layer": feeding(graph, k), "count": v} for k, v in sorted(counts.items())]
    report["readout_membrane"] = readout.tolist()
    try:
        own, _ = run_graph(nir.read(args.graph), x, args.dt, snntorch_if=True)
        report["spikes_with_snntorch_if"] = [{"neuron": k, "count": v} for k, v in sorted(own.items())]
    except (AssertionError, ValueError, RuntimeError) as e:
        report["snntorch_if_refused"] = f"{type(e).__name__}: {e}"
    with open(args.out, "w") as f:
        json.dump(report, f)


def snntorch_file(args):
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(args.seed)
    leak = 0.99
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=2, bias=False),
        snn.Leaky(beta=torch.full((4, 14, 14), leak), threshold=torch.ones(4, 14, 14), reset_mechanism="zero", init_hidden=True),
        torch.nn.AvgPool2d((2, 2), stride=(2, 2)),
        snn.Leaky(beta=torch.ones(4, 7, 7), threshold=torch.full((4, 7, 7), 0.75), reset_mechanism="zero", init_hidden=True),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 7 * 7, 16, bias=False),
        snn.Leaky(beta=torch.full((16,), leak), threshold=torch.full((16,), 0.5), reset_mechanism="zero", init_hidden=True),
    )
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[5].weight.mul_(2.0)
    readout = torch.nn.Linear(16, 3, bias=False)
    # The export runs the network once and leaves float32 state in its neurons: simulate a fresh copy.
    fresh = copy.deepcopy(net)
    with np.errstate(divide="ignore"):
        graph = export_to_nir(net, torch.zeros(1, 1, 14, 14), ignore_dims=[0])
    # Append the leaky readout that snnTorch cannot export: its membrane takes leak * (M + W o) each step.
    last = next(a for a, b in graph.edges if b == "output")
    graph.edges = [e for e in graph.edges if e[1] != "output"]
    tau = DT_SNNTORCH / (1 - leak)
    graph.nodes["readout"] = nir.Linear(weight=readout.weight.detach().numpy())
    graph.nodes["readout_li"] = nir.LI(
        tau=np.full(3, tau, dtype=np.float32), r=np.full(3, leak * tau / DT_SNNTORCH, dtype=np.float32),
        v_leak=np.zeros(3, dtype=np.float32))
    graph.nodes["output"] = nir.Output(output_type=np.array([3]))
    graph.edges += [(last, "readout"), ("readout", "readout_li"), ("readout_li", "output")]
    nir.write(args.graph, graph)

    x = load_input(args.input)
    net, readout = fresh.double(), readout.double()
    counts = {i: 0.0 for i, m in enumerate(net) if isinstance(m, snn.Leaky)}
    membrane = None
    with torch.no_grad():
        for t in range(x.shape[0]):
            h = x[t]
            for i, m in enumerate(net):
                h = m(h).to(torch.float64)  # snnTorch's spikes come out as float32
                if i in counts:
                    counts[i] += float(h.sum())
            membrane = leak * ((0 if membrane is None else membrane) + readout(h))
    spikes = [{"neuron": str(i), "layer": feeding(graph, str(i)), "count": c} for i, c in counts.items()]
    with open(args.out, "w") as f:
        json.dump({"spikes": spikes, "readout_membrane": membrane.tolist()}, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("graph")
    s.add_argument("--input", required=True)
    s.add_argument("--dt", type=float, required=True)
    s.add_argument("--out", required=True)
    f = sub.add_parser("snntorch-file")
    f.add_argument("graph")
    f.add_argument("--input", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    simulate(args) if args.mode == "simulate" else snntorch_file(args)


if __name__ == "__main__":
    main()
