"""pclab: predictive coding for any PyTorch model.

    >>> import torch, torch.nn as nn, pclab
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> pc = pclab.PredictiveCoding(model, loss="ce", algorithm="exact")
    >>> result = pc.step(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    >>> model[0].weight.grad.shape
    torch.Size([16, 4])
"""

from .algorithms import FPA, PC, Exact, Incremental
from .alignment import Alignment, align
from .energy import OutputLoss
from .engine import Backprop, PredictiveCoding, StepResult, learner
from .errors import DivergenceError, GraphCaptureError
from .graph import CapturedGraph, capture

__all__ = [
    "PredictiveCoding", "Backprop", "learner", "StepResult",
    "Exact", "FPA", "PC", "Incremental",
    "OutputLoss", "CapturedGraph", "capture", "align", "Alignment",
    "GraphCaptureError", "DivergenceError",
]
__version__ = "0.1.0"
