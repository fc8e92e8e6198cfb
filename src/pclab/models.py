r"""Model zoo: ordinary ``nn.Module`` classifiers for predictive-coding experiments.

The PC engine captures a model with plain ``torch.fx.symbolic_trace`` and gives
every parametrised layer output a value node, so every model here is written to
be traceable as is: built from ``torch.nn`` layers and functional ops, no
data-dependent control flow (loops run over lengths fixed at construction), no
in-place ops, and one tensor of logits as output.

Each model takes ``(input_shape, num_classes, options)`` where ``input_shape`` is
the per-example shape: an image ``(C, H, W)`` of floats, or ``(L,)`` integer
tokens for the sequence models. Options are small frozen dataclasses that check
themselves, so :data:`OPTIONS` tells a CLI every option's name, type and default.

>>> model = build("mlp", input_shape=(1, 28, 28), num_classes=10, width=64)
>>> model(torch.randn(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

import dataclasses
import itertools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Union

import torch
from torch import nn

__all__ = [
    "MODELS",
    "OPTIONS",
    "build",
    "Activation",
    "Norm",
    "MLP",
    "MLPOptions",
    "VGG",
    "VGGOptions",
    "ResidualMLP",
    "ResidualCNN",
    "ResidualOptions",
    "ResNetOptions",
    "Parametrization",
    "BLOCKS",
    "Transformer",
    "TransformerOptions",
    "RecurrentNet",
    "RNNOptions",
]

Activation = Literal["relu", "tanh", "sigmoid", "leaky_relu", "gelu"]
Norm = Literal["none", "batch", "layer"]
Parametrization = Literal["standard", "mupc"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


# --------------------------------------------------------------------- options


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _violation(value: object, hint: object) -> str | None:
    """What ``value`` should have been to match the annotation ``hint``; None if it does."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        expected = _violation(value, inner)
        return expected and f"{expected}, or None"
    if origin is Literal:
        return None if value in args else "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        ok = isinstance(value, tuple) and len(value) > 0 and all(map(_is_count, value))
        return None if ok else "a non-empty tuple of integers >= 1"
    if hint is bool:
        return None if isinstance(value, bool) else "True or False"
    if hint is int:
        return None if _is_count(value) else "an integer >= 1"
    raise TypeError(f"options cannot check values of type {hint}; extend _violation")


@dataclass(frozen=True)
class _Options:
    """Base of the option dataclasses: checks every field against its annotation.

    A bad value then fails at construction with the option's name, not deep
    inside a layer constructor. Integer options are sizes and counts, so they
    must be >= 1; ``Literal`` options list their valid choices.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # CLIs and YAML configs give sequences as lists
                value = tuple(value)
                object.__setattr__(self, field.name, value)
            expected = _violation(value, hints[field.name])
            if expected is not None:
                raise ValueError(
                    f"option {field.name}={value!r} is invalid for {type(self).__name__}: "
                    f"expected {expected}"
                )


@dataclass(frozen=True)
class MLPOptions(_Options):
    """Options of :class:`MLP`: ``depth`` hidden layers of ``width`` units."""

    width: int = 128
    depth: int = 2
    activation: Activation = "relu"
    bias: bool = True


class _Conv(NamedTuple):
    channels: int
    padded: bool  # False: PCX's unpadded ("valid") 3x3 conv, which trims one pixel per side
    pooled: bool  # followed by 2x2 max-pooling


# Transcribed from PCX's VGG5 / VGG7 (github.com/liukidar/pcx, the models of
# Pinchetti et al. 2024, "Benchmarking predictive coding networks -- made simple",
# arXiv:2407.01163). On 32x32 inputs they leave 512 x 2 x 2 (VGG-5) and 512 x 1 x 1
# (VGG-7) features for the single linear classifier.
_VGG_VARIANTS: dict[str, tuple[_Conv, ...]] = {
    "vgg5": (
        _Conv(128, padded=True, pooled=True),
        _Conv(256, padded=True, pooled=True),
        _Conv(512, padded=True, pooled=True),
        _Conv(512, padded=True, pooled=True),
    ),
    "vgg7": (
        _Conv(128, padded=True, pooled=True),
        _Conv(128, padded=True, pooled=False),
        _Conv(256, padded=True, pooled=True),
        _Conv(256, padded=False, pooled=False),
        _Conv(512, padded=True, pooled=True),
        _Conv(512, padded=False, pooled=False),
    ),
}


@dataclass(frozen=True)
class VGGOptions(_Options):
    """Options of :class:`VGG`; ``channels`` overrides the variant's channel counts, one per conv."""

    variant: Literal["vgg5", "vgg7"] = "vgg5"
    channels: tuple[int, ...] | None = None
    activation: Activation = "relu"
    norm: Norm = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        convs = len(_VGG_VARIANTS[self.variant])
        if self.channels is not None and len(self.channels) != convs:
            raise ValueError(
                f"option channels={self.channels!r} is invalid for variant {self.variant!r}: "
                f"it has {convs} conv layers, so give {convs} channel counts"
            )


@dataclass(frozen=True)
class ResidualOptions(_Options):
    """Options of :class:`ResidualMLP` and :class:`ResidualCNN`: ``depth`` blocks of ``width`` features.

    ``parametrization="mupc"`` is Innocenti et al.'s (2025) muPC, a Depth-muP
    parametrisation (see :class:`ResidualMLP`); ``"standard"`` is torch's default.
    """

    depth: int = 8
    width: int = 64
    activation: Activation = "relu"
    norm: Norm = "none"
    parametrization: Parametrization = "standard"


@dataclass(frozen=True)
class ResNetOptions(ResidualOptions):
    """Options of the ``"resnet"`` entry: :class:`ResidualOptions` plus which network, by ``kind``."""

    kind: Literal["mlp", "conv"] = "mlp"


@dataclass(frozen=True)
class TransformerOptions(_Options):
    """Options of :class:`Transformer`; ``vocab_size`` is required for token input and only then."""

    d_model: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    activation: Activation = "gelu"
    pool: Literal["mean", "last"] = "mean"
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.heads:
            raise ValueError(
                f"option heads={self.heads} is invalid: it must divide d_model={self.d_model}"
            )


@dataclass(frozen=True)
class RNNOptions(_Options):
    """Options of :class:`RecurrentNet`; ``vocab_size`` is required for token input and only then."""

    cell: Literal["gru", "lstm"] = "gru"
    hidden: int = 128
    vocab_size: int | None = None


# ---------------------------------------------------------- shared pieces


def _activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def _norm(kind: str, features: int, *, conv: bool) -> list[nn.Module]:
    """Zero or one normalisation layer over ``features`` channels.

    ``"layer"`` on conv maps is GroupNorm with one group (Wu & He 2018): it
    normalises over (C, H, W) like LayerNorm, without fixing H and W.
    """
    if kind == "none":
        return []
    if kind == "batch":
        return [nn.BatchNorm2d(features) if conv else nn.BatchNorm1d(features)]
    return [nn.GroupNorm(1, features) if conv else nn.LayerNorm(features)]


def _checked_shape(model: str, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(map(_is_count, shape)):
        raise ValueError(
            f"{model}: input_shape must be a non-empty tuple of integers >= 1, got {input_shape!r}"
        )
    if not _is_count(num_classes):
        raise ValueError(f"{model}: num_classes must be an integer >= 1, got {num_classes!r}")
    return shape


def _image_shape(
    model: str, input_shape: tuple[int, ...], num_classes: int
) -> tuple[int, int, int]:
    shape = _checked_shape(model, input_shape, num_classes)
    if len(shape) != 3:
        raise ValueError(
            f"{model}: input_shape must be one image's (C, H, W), got {shape}; "
            f"pass e.g. (1, 28, 28) for MNIST"
        )
    return shape


class _Rows(nn.Module):
    """(B, C, H, W) -> (B, H, C*W): each image row, across channels, is one sequence element."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.height, self.features = height, channels * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1, 3).reshape(-1, self.height, self.features)


def _sequence_embedding(
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None,
    dim: int,
    *,
    project_rows: bool,
) -> tuple[nn.Module, int, int]:
    """Module turning one input into a sequence, with its length and feature size.

    Tokens ``(L,)`` are embedded into ``dim`` features. An image ``(C, H, W)``
    becomes its H rows of C*W pixels, linearly projected to ``dim`` if
    ``project_rows``.
    """
    shape = _checked_shape(model, input_shape, num_classes)
    if len(shape) == 1:
        if vocab_size is None:
            raise ValueError(
                f"{model}: token input_shape {shape} needs option vocab_size "
                f"(e.g. p + 1 for a+b mod p with an '=' token)"
            )
        return nn.Embedding(vocab_size, dim), shape[0], dim
    channels, height, width = _image_shape(model, shape, num_classes)
    if vocab_size is not None:
        raise ValueError(
            f"{model}: option vocab_size={vocab_size} is for token input (L,), "
            f"but input_shape {shape} is an image; drop vocab_size"
        )
    rows = _Rows(channels, height, width)
    if project_rows:
        return nn.Sequential(rows, nn.Linear(rows.features, dim)), height, dim
    return rows, height, rows.features


# ------------------------------------------------------------------ models


class MLP(nn.Module):
    r"""Fully connected classifier, the network of the classic PC equivalence results.

    .. math::
        h_0 = \operatorname{flatten}(x), \qquad
        h_l = \sigma(W_l h_{l-1} + b_l) \quad (l = 1, \dots, \text{depth}), \qquad
        \text{logits} = W_\text{out} h_\text{depth} + b_\text{out}.

    Whittington & Bogacz (2017), "An approximation of the error backpropagation
    algorithm in a predictive coding network with local Hebbian synaptic
    plasticity". Any ``input_shape`` is flattened into float features.

    >>> model = MLP((1, 28, 28), num_classes=10)  # 784-128-128-10
    >>> [layer.out_features for layer in model.layers if isinstance(layer, nn.Linear)]
    [128, 128, 10]
    >>> model(torch.randn(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, options: MLPOptions = MLPOptions()
    ) -> None:
        super().__init__()
        shape = _checked_shape("MLP", input_shape, num_classes)
        sizes = [math.prod(shape)] + [options.width] * options.depth
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(sizes):
            layers += [nn.Linear(n_in, n_out, bias=options.bias), _activation(options.activation)]
        layers.append(nn.Linear(sizes[-1], num_classes, bias=options.bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class VGG(nn.Module):
    r"""Small VGG: 3x3 conv blocks with 2x2 max-pooling, then one linear classifier.

    Each block is :math:`h \mapsto \operatorname{pool}(\sigma(N(\operatorname{conv}_{3\times3}(h))))`
    with the pooling and normalisation :math:`N` optional (Simonyan & Zisserman
    2015). ``"vgg5"`` and ``"vgg7"`` are the CIFAR-10 architectures of the PCX
    benchmark (Pinchetti et al. 2024, arXiv:2407.01163): channels
    128-256-512-512, each conv pooled, and 128-128-256-256-512-512 with pools
    after convs 1, 3, 5 and convs 4, 6 unpadded.

    The layout is fitted to the input at construction so the feature map never
    vanishes: an unpadded conv falls back to padding 1 along an axis shorter
    than 3 pixels, and pooling skips an axis shorter than 2. On 32x32 the
    networks are exactly PCX's; on 8x8 digits they still run.

    >>> model = VGG((3, 32, 32), num_classes=10, options=VGGOptions(variant="vgg7"))
    >>> model.classifier.in_features  # 512 x 1 x 1, as in PCX
    512
    >>> VGG((1, 8, 8), 10, VGGOptions(channels=(8, 8, 16, 16)))(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, options: VGGOptions = VGGOptions()
    ) -> None:
        super().__init__()
        channels, height, width = _image_shape("VGG", input_shape, num_classes)
        convs = _VGG_VARIANTS[options.variant]
        outputs = options.channels or [conv.channels for conv in convs]
        layers: list[nn.Module] = []
        for conv, out in zip(convs, outputs):
            padding = tuple(0 if not conv.padded and size >= 3 else 1 for size in (height, width))
            height, width = height + 2 * padding[0] - 2, width + 2 * padding[1] - 2
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, padding=padding),
                *_norm(options.norm, out, conv=True),
                _activation(options.activation),
            ]
            kernel = (2 if height >= 2 else 1, 2 if width >= 2 else 1)
            if conv.pooled and kernel != (1, 1):
                layers.append(nn.MaxPool2d(kernel))
                height, width = height // kernel[0], width // kernel[1]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class _Residual(nn.Module):
    """x + f(x): the identity path carries signals, and PC errors, past f."""

    def __init__(self, *branch: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(*branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class _Scaled(nn.Module):
    """``layer(multiplier * x)``: a bias-free layer with N(0, 1) weights behind a fixed multiplier.

    The multiplier scales the input rather than the output so that the layer's own
    output, where the PC engine puts a value node, is the scaled activity muPC's
    energy is written in; for a linear map without bias the two are equal.
    """

    def __init__(self, layer: nn.Module, multiplier: float) -> None:
        super().__init__()
        nn.init.normal_(layer.weight)
        self.layer = layer
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * self.multiplier)


_Layer = Callable[[bool], nn.Module]
"""Makes one linear layer (``Linear`` or ``Conv2d``), with or without bias."""


def _parametrised(options: ResidualOptions, make: _Layer, multiplier: float) -> nn.Module:
    """``make``'s layer under ``options.parametrization``: torch's default init, or
    muPC's N(0, 1) weights without bias behind ``multiplier``."""
    if options.parametrization == "standard":
        return make(True)
    return _Scaled(make(False), multiplier)


def _residual_trunk(
    options: ResidualOptions, make: _Layer, fan_in: int, *, conv: bool
) -> tuple[nn.Sequential, nn.Sequential]:
    """``depth`` pre-activation blocks of layers with ``fan_in`` inputs each, and the
    norm + activation to apply after the last one.

    Under muPC each layer sees its input at ``1/sqrt(fan_in)`` (unit-scale outputs from
    unit-scale inputs) and each branch's last layer an extra ``1/sqrt(depth)``
    (Depth-muP): the sum of ``depth`` branches then keeps unit scale however deep the
    trunk.
    """

    def pre_activated(multiplier: float) -> list[nn.Module]:
        return [
            *_norm(options.norm, options.width, conv=conv),
            _activation(options.activation),
            _parametrised(options, make, multiplier),
        ]

    inner, outer = 1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in * options.depth)
    blocks = nn.Sequential(
        *(_Residual(*pre_activated(inner), *pre_activated(outer)) for _ in range(options.depth))
    )
    # Pre-activation blocks leave the last sum raw; He et al. normalise and
    # activate it once before the classifier.
    final = nn.Sequential(
        *_norm(options.norm, options.width, conv=conv), _activation(options.activation)
    )
    return blocks, final


def _ends(
    options: ResidualOptions, make_input: _Layer, input_fan_in: int, num_classes: int
) -> tuple[nn.Module, nn.Module]:
    """The input layer and the linear head. muP reads out at ``1/width``, not
    ``1/sqrt(width)``: the head's output then starts near zero and its updates are
    what move it (Yang & Hu 2021)."""
    width = options.width
    head = _parametrised(options, lambda bias: nn.Linear(width, num_classes, bias=bias), 1 / width)
    return _parametrised(options, make_input, 1 / math.sqrt(input_fan_in)), head


class ResidualMLP(nn.Module):
    r"""Deep fully connected network of pre-activation residual blocks.

    .. math::
        h_0 = W_\text{in} \operatorname{flatten}(x), \qquad
        h_{l} = h_{l-1} + W_{l,2}\, \sigma(N(W_{l,1}\, \sigma(N(h_{l-1})))), \qquad
        \text{logits} = W_\text{out}\, \sigma(N(h_\text{depth}))

    (He et al. 2016, "Identity mappings in deep residual networks"), with
    :math:`N` the optional normalisation. The identity paths are what let
    He et al. train very deep stacks (``depth`` 32, 64, ...). In the standard
    parametrisation (torch's default init) the branches are not rescaled with depth.

    ``parametrization="mupc"`` is muPC (Innocenti, Achour & Buckley 2025, "muPC:
    scaling predictive coding to 100+ layer networks"): every weight N(0, 1) and no
    biases, each layer's input multiplied by ``1/sqrt(fan_in)``, each branch's last
    layer by a further ``1/sqrt(depth)``, and the head by ``1/width``. It leaves what
    the network can compute unchanged and keeps the residual stream at one scale
    whatever the depth and width. Its authors train 128 layers with PC, their values
    on the residual stream: here ``value_nodes=BLOCKS``; with a value at every layer
    inference still diverges with depth (``tests/test_value_nodes.py``). Their blocks
    have one layer; these keep He et al.'s two.

    >>> model = ResidualMLP((1, 28, 28), 10, ResidualOptions(depth=32, width=32))
    >>> model(torch.randn(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    >>> mupc = ResidualMLP((1, 28, 28), 10, ResidualOptions(depth=64, width=32, parametrization="mupc"))
    >>> mupc.head.multiplier, mupc.head.layer.bias
    (0.03125, None)
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        options: ResidualOptions = ResidualOptions(),
    ) -> None:
        super().__init__()
        shape = _checked_shape("ResidualMLP", input_shape, num_classes)
        width, features = options.width, math.prod(shape)
        self.input, self.head = _ends(
            options, lambda bias: nn.Linear(features, width, bias=bias), features, num_classes
        )
        self.blocks, self.final = _residual_trunk(
            options, lambda bias: nn.Linear(width, width, bias=bias), width, conv=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final(self.blocks(self.input(x.flatten(1)))))


class ResidualCNN(nn.Module):
    r"""Convolutional pre-activation ResNet at constant width and resolution.

    The blocks of :class:`ResidualMLP` with 3x3 convolutions (padding 1) in
    place of the linear maps, a 3x3 conv input projection to ``width``
    channels, and global average pooling before the linear head (He et al.
    2016, "Identity mappings in deep residual networks"). Without
    downsampling any image size works. ``parametrization="mupc"`` scales it as
    :class:`ResidualMLP` (a 3x3 convolution's fan-in is ``9 x channels``).

    >>> model = ResidualCNN((3, 32, 32), 10, ResidualOptions(depth=2, width=8, norm="batch"))
    >>> model(torch.randn(4, 3, 32, 32)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        options: ResidualOptions = ResidualOptions(),
    ) -> None:
        super().__init__()
        channels, _, _ = _image_shape("ResidualCNN", input_shape, num_classes)
        width = options.width

        def conv(inputs: int) -> _Layer:
            return lambda bias: nn.Conv2d(inputs, width, kernel_size=3, padding=1, bias=bias)

        self.input, self.head = _ends(options, conv(channels), channels * 9, num_classes)
        self.blocks, self.final = _residual_trunk(options, conv(width), width * 9, conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.final(self.blocks(self.input(x)))
        return self.head(features.mean(dim=(2, 3)))


class _SelfAttention(nn.Module):
    r"""Multi-head self-attention with every projection an ``nn.Linear`` that fx can see.

    Per head, :math:`\operatorname{softmax}(Q K^\top / \sqrt{d_\text{head}})\, V`;
    heads are concatenated and mixed by :math:`W_o`. Same maths as
    ``nn.MultiheadAttention``, which fx would capture as one opaque leaf.
    """

    def __init__(self, d_model: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.seq_len, self.heads, self.head_dim = seq_len, heads, d_model // heads

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.seq_len, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._split_heads(self.q(x)),
            self._split_heads(self.k(x)),
            self._split_heads(self.v(x)),
        )
        attention = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)
        heads = (
            (attention @ v).transpose(1, 2).reshape(-1, self.seq_len, self.heads * self.head_dim)
        )
        return self.o(heads)


class _EncoderBlock(nn.Module):
    """Pre-LayerNorm encoder block: h = x + Attn(LN(x)), out = h + MLP(LN(h))."""

    def __init__(self, d_model: int, seq_len: int, options: TransformerOptions) -> None:
        super().__init__()
        hidden = options.mlp_ratio * d_model
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = _SelfAttention(d_model, options.heads, seq_len)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), _activation(options.activation), nn.Linear(hidden, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    r"""Tiny pre-LayerNorm Transformer encoder classifier.

    .. math::
        h_0 = E(x) + P, \qquad
        h'_l = h_{l-1} + \operatorname{Attn}(\operatorname{LN}(h_{l-1})), \qquad
        h_l = h'_l + \operatorname{MLP}(\operatorname{LN}(h'_l)), \qquad
        \text{logits} = W_\text{out} \operatorname{pool}(\operatorname{LN}(h_\text{layers}))

    with multi-head attention written out (Vaswani et al. 2017), LayerNorm
    before each sublayer (Xiong et al. 2020, "On layer normalization in the
    transformer architecture"), a learned positional embedding :math:`P`
    (initialised N(0, 0.02^2)), and mean-pooling over positions or, with
    ``pool="last"``, the last position. :math:`E` embeds integer tokens
    (``input_shape=(L,)``, option ``vocab_size``) or linearly projects each
    image row of C*W pixels (``input_shape=(C, H, W)``, H tokens).

    Grokking a+b mod p (Power et al. 2022) uses tokens ``[a, b]`` or
    ``[a, b, =]`` with ``vocab_size=p + 1``:

    >>> model = Transformer((3,), 97, TransformerOptions(vocab_size=98, d_model=32, pool="last"))
    >>> model(torch.tensor([[3, 5, 97], [96, 1, 97]])).shape
    torch.Size([2, 97])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        options: TransformerOptions = TransformerOptions(),
    ) -> None:
        super().__init__()
        d_model = options.d_model
        self.embed, seq_len, _ = _sequence_embedding(
            "Transformer", input_shape, num_classes, options.vocab_size, d_model, project_rows=True
        )
        self.position = nn.Parameter(0.02 * torch.randn(1, seq_len, d_model))
        self.blocks = nn.Sequential(
            *(_EncoderBlock(d_model, seq_len, options) for _ in range(options.layers))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self.pool = options.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.blocks(self.embed(x) + self.position))
        pooled = h[:, -1] if self.pool == "last" else h.mean(dim=1)
        return self.head(pooled)


class RecurrentNet(nn.Module):
    r"""GRU or LSTM cell unrolled over a fixed-length sequence, classified from its last state.

    .. math::
        s_t = \operatorname{cell}(x_t, s_{t-1}), \quad s_0 = 0, \qquad
        \text{logits} = W_\text{out} h_L

    with the GRU cell of Cho et al. (2014) or the LSTM cell of Hochreiter &
    Schmidhuber (1997), whose state :math:`s_t = (h_t, c_t)`. The loop is
    unrolled over the length fixed by ``input_shape``, so fx records one cell
    call per step, all sharing the cell's weights. Images are read row by row
    (``(C, H, W)`` -> H steps of C*W pixels, as in row-wise sequential MNIST);
    integer tokens ``(L,)`` are embedded into ``hidden`` features (option
    ``vocab_size``).

    >>> model = RecurrentNet((1, 28, 28), 10, RNNOptions(cell="lstm", hidden=32))
    >>> model(torch.randn(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, options: RNNOptions = RNNOptions()
    ) -> None:
        super().__init__()
        self.embed, self.seq_len, features = _sequence_embedding(
            "RecurrentNet",
            input_shape,
            num_classes,
            options.vocab_size,
            options.hidden,
            project_rows=False,
        )
        cell = nn.LSTMCell if options.cell == "lstm" else nn.GRUCell
        self.cell = cell(features, options.hidden)
        self.head = nn.Linear(options.hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = self.embed(x)
        state: typing.Any = None  # the cells start from zeros
        for t in range(self.seq_len):
            state = self.cell(sequence[:, t], state)
        hidden = state[0] if isinstance(self.cell, nn.LSTMCell) else state
        return self.head(hidden)


# ---------------------------------------------------------------- registry

BLOCKS: tuple[type[nn.Module], ...] = (_Residual, _EncoderBlock)
"""The zoo's residual blocks: as PC units (``value_nodes=BLOCKS``, ``TrainConfig(value_nodes="blocks")``)
each gets one value node, on the residual stream after it."""


def _resnet(input_shape: tuple[int, ...], num_classes: int, options: ResNetOptions) -> nn.Module:
    network = ResidualCNN if options.kind == "conv" else ResidualMLP
    return network(input_shape, num_classes, options)


_REGISTRY: dict[str, tuple[type[_Options], Callable[..., nn.Module]]] = {
    "mlp": (MLPOptions, MLP),
    "cnn": (VGGOptions, VGG),
    "resnet": (ResNetOptions, _resnet),
    "transformer": (TransformerOptions, Transformer),
    "rnn": (RNNOptions, RecurrentNet),
}

MODELS: tuple[str, ...] = tuple(_REGISTRY)
"""Names accepted by :func:`build`."""

OPTIONS: Mapping[str, type] = types.MappingProxyType(
    {name: options for name, (options, _) in _REGISTRY.items()}
)
"""Options dataclass of each model; ``dataclasses.fields`` gives each option's name, type and default."""


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    """Build model ``name`` for inputs of per-example ``input_shape``, from keyword ``options``.

    The options are those of ``OPTIONS[name]``; unknown names and bad values
    raise ``ValueError`` naming the option.

    >>> build("cnn", input_shape=(1, 8, 8), num_classes=10, variant="vgg7", norm="batch")(
    ...     torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> build("mlp", input_shape=(2,), num_classes=2, widht=8)
    Traceback (most recent call last):
    ValueError: unknown option 'widht' for model 'mlp'; valid options: width, depth, activation, bias
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    options_type, make = _REGISTRY[name]
    valid = [field.name for field in dataclasses.fields(options_type)]
    unknown = [option for option in options if option not in valid]
    if unknown:
        raise ValueError(
            f"unknown option {', '.join(map(repr, unknown))} for model {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    return make(tuple(input_shape), num_classes, options_type(**options))
