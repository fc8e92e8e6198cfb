"""Every model of the zoo (``pclab.models``) is captured exactly: one row per model kind."""

from __future__ import annotations

import pytest
import torch

import pclab
from pclab import models
from graphs import pc_grads, reference_grads, relative_error

ZOO = [
    ("mlp", {"width": 16, "depth": 3, "activation": "sigmoid"}, (1, 8, 8)),
    ("cnn", {"channels": (4, 4, 8, 8)}, (1, 8, 8)),
    ("cnn", {"variant": "vgg7", "channels": (4, 4, 4, 4, 8, 8), "norm": "batch"}, (1, 8, 8)),
    ("resnet", {"depth": 6, "width": 8, "norm": "layer"}, (1, 8, 8)),
    ("resnet", {"kind": "conv", "depth": 2, "width": 4}, (1, 8, 8)),
    ("transformer", {"d_model": 8, "heads": 2, "layers": 2}, (1, 8, 8)),
    ("transformer", {"d_model": 8, "heads": 2, "layers": 1, "vocab_size": 11, "pool": "last"}, (3,)),
    ("rnn", {"cell": "gru", "hidden": 8}, (1, 8, 8)),
    ("rnn", {"cell": "lstm", "hidden": 8, "vocab_size": 11}, (3,)),
]


def _case(name, options, shape):
    torch.manual_seed(0)
    model = models.build(name, input_shape=shape, num_classes=5, **options).double()
    g = torch.Generator().manual_seed(0)
    if "vocab_size" in options:
        x = torch.randint(0, options["vocab_size"], (4, *shape), generator=g)
    else:
        x = torch.randn((4, *shape), generator=g, dtype=torch.float64)
    return model, (x,), torch.randint(0, 5, (4,), generator=g)


@pytest.mark.parametrize("name,options,shape", ZOO, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ZOO)])
def test_zoo_model_exact_and_fpa_match_autograd(name, options, shape):
    model, x, y = _case(name, options, shape)
    reference = reference_grads(model, x, y, "ce")
    exact, _ = pc_grads(pclab.PredictiveCoding(model, loss="ce", algorithm="exact"), x, y)
    assert relative_error(exact, reference) < 1e-8
    fpa, _ = pc_grads(pclab.PredictiveCoding(model, loss="ce", algorithm="fpa", steps=200, step_size=0.5), x, y)
    assert relative_error(fpa, reference) < 1e-3
