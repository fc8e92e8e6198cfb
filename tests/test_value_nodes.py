"""Where value nodes go: residual blocks as PC units (``value_nodes=BLOCKS``, ``"blocks"``).

Placing values changes which energy inference descends, never what exact and FPA
compute: they equal backprop for any placement. What it changes is the energy's
curvature: a value read by many later nodes (a branch output on a residual stream
feeds every later block) makes it grow with depth.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

import pclab
from pclab.models import BLOCKS, build
from pclab.training import ConfigError, TrainConfig, train
from graphs import pc_grads, reference_grads, relative_error

ZOO = {
    "resnet": dict(name="resnet", input_shape=(10,), depth=3, width=8),
    "resnet-mupc": dict(name="resnet", input_shape=(10,), depth=3, width=8, parametrization="mupc"),
    "resnet-conv": dict(name="resnet", input_shape=(2, 6, 6), kind="conv", depth=2, width=4),
    "transformer": dict(name="transformer", input_shape=(1, 8, 8), d_model=8, heads=2, layers=2),
}


def _zoo(key: str, seed: int = 0, batch: int = 6):
    options = dict(ZOO[key])
    name, shape = options.pop("name"), options.pop("input_shape")
    torch.manual_seed(seed)
    model = build(name, input_shape=shape, num_classes=3, **options).double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (batch,), generator=g)


def test_blocks_put_one_value_node_on_the_residual_stream_after_each_block():
    model, x, _ = _zoo("resnet")
    graph = pclab.capture(model, (x,), value_nodes=BLOCKS)
    assert graph.names == ("input", "blocks.0", "blocks.1", "blocks.2")
    assert graph.parents == {"input": (), "blocks.0": ("input",), "blocks.1": ("blocks.0",),
                             "blocks.2": ("blocks.1",), "output": ("blocks.2",)}
    stream = model.input(x)
    for block in model.blocks:
        stream = block(stream)
    values = graph.forward_with_values(x)[1:]
    torch.testing.assert_close(values[-1], stream)


@pytest.mark.parametrize("key", list(ZOO))
def test_exact_equals_autograd_and_fpa_converges_to_it_with_blocks_as_units(key):
    model, x, y = _zoo(key)
    reference = reference_grads(model, (x,), y, "ce")
    exact = pclab.PredictiveCoding(model, loss="ce", algorithm="exact", value_nodes=BLOCKS)
    assert relative_error(pc_grads(exact, (x,), y)[0], reference) < 1e-8
    fpa = pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=200, step_size=0.5, value_nodes=BLOCKS)
    assert relative_error(pc_grads(fpa, (x,), y)[0], reference) < 1e-8


def test_pc_with_blocks_as_units_is_gradient_descent_on_the_energy_of_the_stream():
    """Each step moves every stream value by -step_size * dF/dv, F summed over the
    blocks' errors and the loss, written out here by hand with autograd."""
    model, x, y = _zoo("resnet")
    step_size, steps = 0.2, 3
    blocks = list(model.blocks)

    def energy(values):
        h0, *hs = values
        f = 0.5 * ((h0 - model.input(x)) ** 2).sum()
        for block, before, after in zip(blocks, values, hs):
            f = f + 0.5 * ((after - block(before)) ** 2).sum()
        return f + torch.nn.functional.cross_entropy(model.head(model.final(values[-1])), y, reduction="sum")

    with torch.no_grad():
        values = [model.input(x)]
        for block in blocks:
            values.append(block(values[-1]))
    trace = []
    for _ in range(steps):
        values = [v.detach().requires_grad_(True) for v in values]
        f = energy(values)
        trace.append(f.item() / len(x))
        grads = torch.autograd.grad(f, values)
        values = [v - step_size * g for v, g in zip(values, grads)]
    values = [v.detach() for v in values]
    final = energy(values)
    trace.append(final.item() / len(x))
    want = torch.autograd.grad(final / len(x), list(model.parameters()))

    result = pclab.PredictiveCoding(model, loss="ce", algorithm="pc", steps=steps, step_size=step_size,
                                    value_nodes=BLOCKS).step(x, y)
    assert result.energy_trace == pytest.approx(trace, rel=1e-10)
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def _descends(model, x, y, value_nodes, step_size: float) -> bool:
    """Whether 20 pc steps at ``step_size`` lower the energy at every step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the energy-rise warning is the point
        trace = pclab.PredictiveCoding(model, loss="mse", algorithm="pc", steps=20, step_size=step_size,
                                       value_nodes=value_nodes).step(x, y).energy_trace
    model.zero_grad(set_to_none=True)
    return all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(trace))


@pytest.mark.parametrize("parametrization", ["standard", "mupc"])
def test_stable_inference_step_shrinks_with_depth_for_layer_values_but_not_for_block_values(parametrization):
    def net(depth):
        torch.manual_seed(0)
        model = build("resnet", input_shape=(10,), num_classes=3, depth=depth, width=16,
                      parametrization=parametrization).double()
        g = torch.Generator().manual_seed(0)
        return model, torch.randn(8, 10, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)

    shallow, deep = net(2), net(64)
    for step_size in (0.01, 0.05, 0.2):
        assert _descends(*shallow, BLOCKS, step_size) and _descends(*deep, BLOCKS, step_size)
    assert _descends(*shallow, "layers", 0.05)
    assert not _descends(*deep, "layers", 0.01)  # five times smaller, and still too large


def test_blocks_need_a_model_made_of_blocks(tmp_path):
    config = TrainConfig(data="digits", model="mlp", value_nodes="blocks", epochs=1, train_size=50,
                         out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="'blocks' needs a model made of residual blocks.*use 'layers'"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="value_nodes.*'layers', 'blocks'"):
        TrainConfig(value_nodes="block")


def test_training_a_resnet_with_blocks_records_the_choice_and_learns(tmp_path):
    config = TrainConfig(data="digits", model="resnet", model_options={"depth": 4, "width": 32},
                         value_nodes="blocks", epochs=3, train_size=500, out=str(tmp_path / "run"))
    result = train(config, progress=False)
    assert "value_nodes: blocks" in (tmp_path / "run" / "config.yaml").read_text()
    assert result.final_test_accuracy > 0.5
