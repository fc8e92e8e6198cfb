"""The lab: experiments that run end to end and write ``runs/<name>/``.

Each experiment is one module with a typed config (quick and full presets), a
``run(config, out)`` that runs its sweep through :mod:`.sweep` and writes the
config, raw JSON records, plots and ``summary.md``, a ``summarise(records)`` that
computes every claim from the records, and a typer-compatible ``command``.
:data:`COMMANDS` maps each CLI sub-command name to its function; the CLI does
``app.command(name)(fn)`` for each. The library never imports this package.

========================  ===============================================================
command                   question
========================  ===============================================================
``catapult``              lazy / catapult / divergent learning-rate regimes (Lewkowycz 2020)
``sample-efficiency``     wide catapult-recipe net and its distilled student vs a standard net
``double-descent``        test error vs model size through the interpolation threshold
``grok``                  steps to 99% train / validation accuracy on a + b mod p
========================  ===============================================================
"""

from __future__ import annotations

from typing import Callable

from . import catapult, double_descent, grok, sample_efficiency

COMMANDS: dict[str, Callable[..., None]] = {
    "catapult": catapult.command,
    "sample-efficiency": sample_efficiency.command,
    "double-descent": double_descent.command,
    "grok": grok.command,
}

__all__ = ["COMMANDS"]
