"""The examples in the library's docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import pclab

MODULES = sorted(m.name for m in pkgutil.iter_modules(pclab.__path__, "pclab.")
                 if m.name not in ("pclab.__main__", "pclab.cli"))


@pytest.mark.parametrize("name", ["pclab", *MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
