"""The operator library ``cagul_kernels/_C*.so`` depends on libtorch only, so a C++ program
(an AOTInductor runner, ``torch::inductor::AOTIModelPackageLoader``) can
``dlopen(path, RTLD_LAZY)`` it without Python: no ``libtorch_python`` or ``libpython``
among its needed libraries, and no Python symbol but the one the ``PyInit__C`` stub calls
(resolved lazily, only if Python imports the module)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from cagul_kernels import _C

TOOLS_MISSING = shutil.which("readelf") is None or shutil.which("nm") is None
pytestmark = pytest.mark.skipif(TOOLS_MISSING, reason="needs binutils (readelf, nm)")


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def test_needs_no_python_library():
    needed = re.findall(
        r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _run("readelf", "-d", _C.__file__)
    )
    assert any(name.startswith("libtorch_cpu") for name in needed), needed
    assert not [name for name in needed if "python" in name], needed


def test_only_python_symbol_is_the_module_stub():
    undefined = _run("nm", "-D", "--undefined-only", _C.__file__).split()
    python = sorted({s for s in undefined if s.startswith(("Py", "_Py"))})
    assert python == ["PyModule_Create2"], python
