"""Contract and reference tests for the model zoo (pclab.models).

Every model and variant is one row of ``CASES`` and runs the same contract: the
shape of the logits, plain ``torch.fx.symbolic_trace`` reproducing the model,
finite gradients for every parameter, seeded construction, float64. The
reference tests check the maths against torch's own implementations and the
PCX architectures.
"""

import dataclasses
import doctest
import typing

import pytest
import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pclab import models
from pclab.models import (
    MODELS,
    OPTIONS,
    VGG,
    RecurrentNet,
    RNNOptions,
    Transformer,
    TransformerOptions,
    VGGOptions,
    build,
)

NUM_CLASSES = 3
BATCH = 4  # > 1 so BatchNorm has statistics to take

# (name, options, input_shape): adding a model or variant is one line here.
CASES = [
    ("mlp", {}, (1, 28, 28)),
    ("mlp", {"width": 8, "depth": 1, "bias": False}, (2,)),
    *[
        ("mlp", {"width": 8, "depth": 3, "activation": a}, (1, 8, 8))
        for a in typing.get_args(models.Activation)
    ],
    ("cnn", {}, (1, 8, 8)),
    ("cnn", {"variant": "vgg7"}, (1, 8, 8)),
    ("cnn", {"channels": (4, 4, 8, 8)}, (3, 32, 32)),
    ("cnn", {"variant": "vgg7", "channels": (4, 4, 8, 8, 8, 8), "norm": "batch"}, (1, 28, 28)),
    (
        "cnn",
        {"variant": "vgg7", "channels": [4, 4, 4, 4, 4, 8], "norm": "layer", "activation": "tanh"},
        (3, 32, 32),
    ),
    ("resnet", {"depth": 8, "width": 16}, (1, 8, 8)),
    ("resnet", {"depth": 64, "width": 8, "norm": "layer", "activation": "gelu"}, (2,)),
    ("resnet", {"depth": 2, "width": 8, "norm": "batch"}, (1, 8, 8)),
    ("resnet", {"kind": "conv", "depth": 2, "width": 4}, (1, 8, 8)),
    ("resnet", {"kind": "conv", "depth": 3, "width": 4, "norm": "batch"}, (3, 32, 32)),
    ("resnet", {"depth": 16, "width": 8, "parametrization": "mupc"}, (1, 8, 8)),
    ("resnet", {"kind": "conv", "depth": 2, "width": 4, "parametrization": "mupc"}, (1, 8, 8)),
    (
        "resnet",
        {"kind": "conv", "depth": 2, "width": 4, "norm": "layer", "activation": "leaky_relu"},
        (1, 28, 28),
    ),
    ("transformer", {"d_model": 16, "heads": 2, "layers": 2}, (1, 8, 8)),
    ("transformer", {"d_model": 8, "heads": 1, "layers": 1, "mlp_ratio": 2}, (3, 32, 32)),
    ("transformer", {"vocab_size": 98, "d_model": 16, "heads": 4, "layers": 1}, (3,)),
    (
        "transformer",
        {"vocab_size": 98, "d_model": 16, "heads": 4, "pool": "last", "activation": "relu"},
        (2,),
    ),
    ("rnn", {"hidden": 16}, (1, 8, 8)),
    ("rnn", {"cell": "lstm", "hidden": 8}, (3, 28, 28)),
    ("rnn", {"vocab_size": 11, "hidden": 8}, (3,)),
    ("rnn", {"cell": "lstm", "vocab_size": 11, "hidden": 8}, (5,)),
]
IDS = [
    "-".join(
        [name, "x".join(map(str, shape)), *(f"{key}={value}" for key, value in options.items())]
    )
    for name, options, shape in CASES
]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tensors are tiny: with a second intra-op thread, syncing costs more than the
    work, and on a busy 2-core machine a forward pass slows from ms to seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def example_input(options: dict, input_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if len(input_shape) == 1 and "vocab_size" in options:
        return torch.randint(options["vocab_size"], (BATCH, *input_shape))
    return torch.randn(BATCH, *input_shape, dtype=dtype)


def test_table_covers_every_model():
    assert (
        set(MODELS)
        == {name for name, _, _ in CASES}
        == {"mlp", "cnn", "resnet", "transformer", "rnn"}
    )
    assert set(OPTIONS) == set(MODELS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name, options, input_shape", CASES, ids=IDS)
def test_logits_shape_and_fx_trace_reproduces_model(name, options, input_shape, dtype):
    model = build(name, input_shape=input_shape, num_classes=NUM_CLASSES, **options).to(dtype)
    x = example_input(options, input_shape, dtype)

    logits = model(x)
    traced = torch.fx.symbolic_trace(model)

    assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == dtype
    torch.testing.assert_close(traced(x), logits, rtol=0, atol=0)
    # The PC engine puts value nodes on layer outputs, which in-place ops would overwrite.
    assert not any(getattr(module, "inplace", False) for module in model.modules())
    in_place = [
        node.target
        for node in traced.graph.nodes
        if node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__")
    ]
    assert in_place == []


@pytest.mark.parametrize("name, options, input_shape", CASES, ids=IDS)
def test_backward_gives_finite_gradient_for_every_parameter(name, options, input_shape):
    model = build(name, input_shape=input_shape, num_classes=NUM_CLASSES, **options)
    x = example_input(options, input_shape, torch.float32)

    nn.functional.cross_entropy(model(x), torch.arange(BATCH) % NUM_CLASSES).backward()

    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


@pytest.mark.parametrize("name, options, input_shape", CASES, ids=IDS)
def test_construction_is_deterministic_under_manual_seed(name, options, input_shape):
    def seeded():
        torch.manual_seed(0)
        return build(name, input_shape=input_shape, num_classes=NUM_CLASSES, **options).state_dict()

    first, second = seeded(), seeded()

    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# (name, options, input_shape, text the error must contain)
BAD_OPTIONS = [
    ("vgg", {}, (1, 8, 8), "valid models: mlp, cnn, resnet, transformer, rnn"),
    ("mlp", {"widht": 8}, (1, 8, 8), "'widht'.*valid options: width, depth, activation, bias"),
    (
        "resnet",
        {"variant": "vgg5"},
        (1, 8, 8),
        "'variant'.*valid options: depth, width, activation, norm, parametrization, kind",
    ),
    ("mlp", {"width": 0}, (1, 8, 8), "width=0"),
    ("mlp", {"depth": 0}, (1, 8, 8), "depth=0"),
    ("mlp", {"width": True}, (1, 8, 8), "width=True"),
    ("mlp", {"activation": "swish"}, (1, 8, 8), "activation='swish'.*'relu'"),
    ("mlp", {"bias": 1}, (1, 8, 8), "bias=1"),
    ("cnn", {"variant": "vgg11"}, (1, 8, 8), "variant='vgg11'"),
    ("cnn", {"norm": "group"}, (1, 8, 8), "norm='group'"),
    ("cnn", {"channels": (8, 8)}, (1, 8, 8), "channels=.*4 channel counts"),
    ("cnn", {"channels": (8, 0, 8, 8)}, (1, 8, 8), "channels="),
    ("cnn", {}, (64,), "input_shape"),
    ("resnet", {"kind": "rnn"}, (1, 8, 8), "kind='rnn'"),
    ("resnet", {"depth": 0}, (1, 8, 8), "depth=0"),
    ("resnet", {"kind": "conv"}, (784,), "input_shape"),
    ("transformer", {"heads": 3}, (1, 8, 8), "heads=3.*d_model=64"),
    ("transformer", {"pool": "max"}, (1, 8, 8), "pool='max'"),
    ("transformer", {}, (3,), "vocab_size"),
    ("transformer", {"vocab_size": 10}, (1, 8, 8), "vocab_size=10"),
    ("transformer", {"vocab_size": 0}, (3,), "vocab_size=0"),
    ("rnn", {"cell": "rnn"}, (1, 8, 8), "cell='rnn'"),
    ("rnn", {"hidden": -1}, (1, 8, 8), "hidden=-1"),
    ("rnn", {}, (5,), "vocab_size"),
]


@pytest.mark.parametrize("name, options, input_shape, message", BAD_OPTIONS)
def test_bad_options_raise_value_error_naming_the_option(name, options, input_shape, message):
    with pytest.raises(ValueError, match=message):
        build(name, input_shape=input_shape, num_classes=NUM_CLASSES, **options)


@pytest.mark.parametrize("input_shape, num_classes", [((0, 8, 8), 3), ((), 3), ((1, 8, 8), 0)])
def test_bad_input_shape_or_num_classes_raise_value_error(input_shape, num_classes):
    with pytest.raises(ValueError, match="input_shape|num_classes"):
        build("mlp", input_shape=input_shape, num_classes=num_classes)


@pytest.mark.parametrize("name", MODELS)
def test_options_are_typed_dataclasses_with_defaults(name):
    """What a CLI needs to list options and type-check overrides."""
    hints = typing.get_type_hints(OPTIONS[name])
    for field in dataclasses.fields(OPTIONS[name]):
        assert field.default is not dataclasses.MISSING, field.name
        assert field.name in hints
    assert dataclasses.asdict(OPTIONS[name]()).keys() == hints.keys()


def test_every_activation_choice_has_a_layer():
    assert set(typing.get_args(models.Activation)) == set(models._ACTIVATIONS)


def test_docstring_examples_run():
    assert doctest.testmod(models).failed == 0


# ------------------------------------------------------------------ references


def test_default_mlp_is_784_128_128_10():
    model = build("mlp", input_shape=(1, 28, 28), num_classes=10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 128), (128, 10)]


@pytest.mark.parametrize(
    "variant, convs, features",
    # PCX on 32x32: VGG-5 keeps 512 x (32 // 16)^2; VGG-7 keeps 512 x ((32 // 4 - 2) // 2 - 2)^2.
    [
        ("vgg5", [128, 256, 512, 512], 512 * 2 * 2),
        ("vgg7", [128, 128, 256, 256, 512, 512], 512 * 1 * 1),
    ],
)
def test_vgg_matches_pcx_on_cifar_sized_input(variant, convs, features):
    model = VGG((3, 32, 32), 10, VGGOptions(variant=variant))
    conv_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in conv_layers] == convs
    assert model.classifier.in_features == features


@settings(max_examples=25, deadline=None)
@given(
    variant=st.sampled_from(["vgg5", "vgg7"]),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
)
def test_vgg_feature_map_never_vanishes(variant, height, width):
    channels = (2,) * len(models._VGG_VARIANTS[variant])
    model = VGG((1, height, width), 3, VGGOptions(variant=variant, channels=channels))
    assert model(torch.randn(2, 1, height, width)).shape == (2, 3)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    model = Transformer((5,), 3, TransformerOptions(vocab_size=7, d_model=16, heads=4)).double()
    ours = model.blocks[0].attention
    reference = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        reference.out_proj.weight.copy_(ours.o.weight)
        reference.out_proj.bias.copy_(ours.o.bias)
    x = torch.randn(BATCH, 5, 16, dtype=torch.float64)

    expected, _ = reference(x, x, x, need_weights=False)

    torch.testing.assert_close(ours(x), expected)


@pytest.mark.parametrize("cell, reference_type", [("gru", nn.GRU), ("lstm", nn.LSTM)])
def test_unrolled_cell_matches_torch_recurrent_layer(cell, reference_type):
    torch.manual_seed(0)
    model = RecurrentNet((2, 6, 5), 3, RNNOptions(cell=cell, hidden=8)).double()
    reference = reference_type(2 * 5, 8, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(reference, f"{name}_l0").copy_(getattr(model.cell, name))
    images = torch.randn(BATCH, 2, 6, 5, dtype=torch.float64)
    rows = images.permute(0, 2, 1, 3).reshape(BATCH, 6, 10)

    _, state = reference(rows)
    last_hidden = state[0] if cell == "lstm" else state

    torch.testing.assert_close(model(images), model.head(last_hidden[0]))


def test_residual_blocks_are_identity_when_branches_output_zero():
    """x + f(x) with the last layer of every f zeroed leaves the input projection untouched."""
    model = build("resnet", input_shape=(6,), num_classes=3, depth=4, width=8)
    for block in model.blocks:
        nn.init.zeros_(block.branch[-1].weight)
        nn.init.zeros_(block.branch[-1].bias)
    x = torch.randn(BATCH, 6)

    torch.testing.assert_close(model(x), model.head(model.final(model.input(x))))


def _stream_scale(parametrization: str, depth: int, width: int) -> float:
    torch.manual_seed(0)
    model = build("resnet", input_shape=(64,), num_classes=10, depth=depth, width=width,
                  parametrization=parametrization)
    with torch.no_grad():
        return float(model.blocks(model.input(torch.rand(256, 64))).std())


def test_mupc_keeps_the_residual_stream_at_one_scale_whatever_the_depth_and_width():
    """Depth-muP's 1/sqrt(depth) on each branch: the stream's scale at initialisation
    does not grow with depth, where torch's default init lets it grow geometrically."""
    scales = [_stream_scale("mupc", d, w) for d in (2, 128) for w in (16, 128)]
    assert max(scales) / min(scales) < 1.5
    assert _stream_scale("standard", 128, 16) > 5 * _stream_scale("standard", 2, 16)


def test_mupc_layers_are_bias_free_unit_gaussians_behind_fixed_multipliers():
    torch.manual_seed(0)
    model = build("resnet", input_shape=(1, 20, 20), num_classes=10, depth=64, width=256,
                  parametrization="mupc")
    first, last = model.blocks[0].branch[1], model.blocks[0].branch[3]
    assert [m.multiplier for m in (model.input, first, last, model.head)] == pytest.approx(
        [1 / 20, 1 / 16, 1 / 128, 1 / 256])
    assert all(m.layer.bias is None for m in (model.input, first, last, model.head))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert abs(float(weights.mean())) < 0.01 and abs(float(weights.std()) - 1) < 0.01
    x = torch.randn(3, 1, 20, 20)
    torch.testing.assert_close(model.input(x.flatten(1)), model.input.layer(x.flatten(1)) / 20)
