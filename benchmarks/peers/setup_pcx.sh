#!/usr/bin/env bash
# Create benchmarks/peers/.venv with PCX 0.6.3 + JAX (CPU), pinned in requirements-pcx.txt.
# Idempotent: does nothing when the venv already imports pcx/jax at the pinned versions.
# Never installs torch. Usage (from anywhere):  bash benchmarks/peers/setup_pcx.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PCX_VENV:-$HERE/.venv}"
REQ="$HERE/requirements-pcx.txt"
PY="${PYTHON:-python3}"

venv_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$REQ" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
pins = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        pins[name] = version
for name, version in pins.items():
    if md.version(name) != version:
        raise SystemExit(f"{name} {md.version(name)} != {version}")
import jax, pcx, pcx.predictive_coding, pcx.utils, pcx.functional, pcx.nn  # noqa: F401
assert jax.numpy.ones(2).sum() == 2
PY
}

if venv_ok; then
    echo "pcx venv ok: $VENV"
    exit 0
fi

echo "creating pcx venv: $VENV"
"$PY" -m venv "$VENV"
# The machine-wide pip constraints file caps torch; it is irrelevant here, so clear it.
PIP_CONSTRAINT= "$VENV/bin/pip" install --quiet -r "$REQ"

if ! venv_ok; then
    echo "pcx venv at $VENV does not import pcx/jax at the pinned versions" >&2
    exit 1
fi
"$VENV/bin/python" -c "import jax, importlib.metadata as md; print('pcx', md.version('pcx'), 'jax', jax.__version__, jax.devices())"
