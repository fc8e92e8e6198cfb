"""The table of graphs every equivalence and contract test runs over.

Each entry builds a small model and a batch; adding a graph kind is one line in
``GRAPHS``. Together they cover what the engine must handle exactly: fan-out,
weight sharing, unrolled recurrence, residual connections (one and two layers per
block), normalisation, attention, convolution and pooling, embeddings, multiple
inputs, dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(F.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        h = self.pool(F.relu(self.c1(x)))
        h = F.avg_pool2d(torch.tanh(self.c2(h)), 2)
        return self.head(h.flatten(1))


class Residual(nn.Module):
    """Residual blocks ``h + block(h)`` between a linear stem and head.

    By default two pre-activation blocks of one layer: every block output fans out
    twice. With ``hidden``, ResNet-style blocks of two layers through ``hidden``
    features: a block's first layer reads every earlier block's output through the
    skips, yet sits two edges from the output.
    """

    def __init__(self, blocks: int = 2, hidden: int | None = None) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 16)
        layers = (lambda: [nn.Tanh(), nn.Linear(16, 16)]) if hidden is None else \
            (lambda: [nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 16)])
        self.blocks = nn.ModuleList(nn.Sequential(*layers()) for _ in range(blocks))
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class Norms(nn.Module):
    """BatchNorm (couples the examples of a batch) and LayerNorm, plus dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn = nn.Linear(12, 16), nn.BatchNorm1d(16)
        self.fc2, self.ln = nn.Linear(16, 16), nn.LayerNorm(16)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.fc1(x)))
        h = self.drop(torch.tanh(self.ln(self.fc2(h))))
        return self.out(h)


class GRU(nn.Module):
    """A GRU cell unrolled over 4 steps: one module, four value nodes sharing weights."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.out = nn.GRUCell(3, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 8)
        for t in range(4):
            h = self.cell(x[:, t], h)
        return self.out(h)


class LSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell, self.out = nn.LSTMCell(3, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], 8)
        for t in range(4):
            h, c = self.cell(x[:, t], (h, c))
        return self.out(h)


class Attention(nn.Module):
    """Single-head self-attention: softmax of a product of two value nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(6, 6) for _ in range(4))
        self.norm, self.head = nn.LayerNorm(6), nn.Linear(6, 5)

    def forward(self, x):
        h = self.norm(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(6), dim=-1)
        h = x + self.o(att @ self.v(h))
        return self.head(h.mean(1))


class TiedEmbedding(nn.Module):
    """Token embedding whose weight is reused as the output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mix = nn.Embedding(7, 8), nn.Linear(8, 8)

    def forward(self, tokens):
        h = torch.tanh(self.mix(self.emb(tokens).mean(1)))
        return F.linear(h, self.emb.weight)


class TwoInputs(nn.Module):
    """Two inputs merged by a product; one branch fans out to the product and the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(12, 8), nn.Linear(3, 8), nn.Linear(8, 5)

    def forward(self, x, z):
        a = self.a(x)
        return self.out(torch.sigmoid(a) * self.b(z) + a)


@dataclass(frozen=True)
class Graph:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple]
    classes: int = 5


def _x(shape):
    return lambda g: (torch.randn(shape, generator=g),)


GRAPHS = [
    Graph("mlp", MLP, _x((6, 12))),
    Graph("cnn", CNN, _x((6, 1, 8, 8))),
    Graph("residual", Residual, _x((6, 12))),
    Graph("residual-bottleneck", lambda: Residual(blocks=3, hidden=8), _x((6, 12))),
    Graph("norms+dropout", Norms, _x((6, 12))),
    Graph("gru-unrolled", GRU, _x((6, 4, 3))),
    Graph("lstm-unrolled", LSTM, _x((6, 4, 3))),
    Graph("attention", Attention, _x((6, 4, 6))),
    Graph("tied-embedding", TiedEmbedding, lambda g: (torch.randint(0, 7, (6, 3), generator=g),), classes=7),
    Graph("two-inputs", TwoInputs, lambda g: (torch.randn(6, 12, generator=g), torch.randn(6, 3, generator=g))),
]


def named(name: str) -> Graph:
    """The table entry called ``name``: tests that need one kind of graph say which."""
    return next(g for g in GRAPHS if g.name == name)


def make(graph: Graph, dtype: torch.dtype, seed: int = 0):
    """Model, inputs (a tuple) and class targets for one table entry, in ``dtype``."""
    torch.manual_seed(seed)
    model = graph.build().to(dtype)
    g = torch.Generator().manual_seed(seed)
    inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in graph.inputs(g))
    target = torch.randint(0, graph.classes, (inputs[0].shape[0],), generator=g)
    return model, inputs, target


def reference_grads(model: nn.Module, inputs: tuple, target: torch.Tensor, loss: str, seed: int = 1):
    """Autograd's gradients of the batch-mean loss (the reference for exact and FPA)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(*inputs)
    if loss == "ce":
        value = F.cross_entropy(out, target)
    else:
        value = 0.5 * (out - F.one_hot(target, out.shape[-1]).to(out.dtype)).pow(2).sum() / out.shape[0]
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def pc_grads(pc, inputs: tuple, target: torch.Tensor, seed: int = 1, **kwargs):
    """Gradients one ``pc.step`` writes, with the same RNG seed as the reference."""
    pc.model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    result = pc.step(inputs, target, **kwargs)
    grads = {n: p.grad.clone() for n, p in pc.model.named_parameters()}
    pc.model.zero_grad(set_to_none=True)
    return grads, result


def relative_error(grads: dict, reference: dict) -> float:
    """Largest per-parameter relative error ``|g - r| / |r|``.

    A parameter whose true gradient is (analytically) zero, such as a bias feeding a
    BatchNorm, is measured against 1e-3 of the largest gradient instead of its own
    rounding noise.
    """
    assert grads.keys() == reference.keys()
    floor = 1e-3 * max(float(r.norm()) for r in reference.values())
    return max(float((grads[k] - reference[k]).norm()) / max(float(reference[k].norm()), floor)
               for k in reference)
