"""Errors pclab raises when a model, an input or an inference run cannot be used."""

from __future__ import annotations


class GraphCaptureError(RuntimeError):
    """The model's computation graph could not be captured with ``torch.fx``.

    The message names the module where capture failed, the reason, and the fix
    (usually: make the branch static, or declare the module a leaf with
    ``leaf_modules=`` so it becomes one opaque predictive-coding node).
    """


class DivergenceError(FloatingPointError):
    """A non-finite value appeared in the input or during inference.

    ``node`` and ``step`` say where it was first seen; no gradient was written.
    """

    def __init__(self, message: str, *, node: str, step: int | None) -> None:
        super().__init__(message)
        self.node = node
        self.step = step
