"""The core imports no I/O: it must run anywhere, deterministically, and be testable alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import modelrollout.core
from tests.unit.test_layering import imports

CORE = Path(modelrollout.core.__file__).parent
FORBIDDEN = {
    "kopf", "kubernetes", "aiohttp", "httpx", "requests", "urllib3", "urllib", "http", "socket",
    "prometheus_client", "psutil", "subprocess", "asyncio", "pandas", "matplotlib",
}
OWN_IO = {"modelrollout.kube", "modelrollout.serving", "modelrollout.probes", "modelrollout.handlers",
          "modelrollout.exporter", "modelrollout.cli", "modelrollout.holdout"}


def test_core_sources_import_no_io_library() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 5
    for f in files:
        for name in imports(f):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{f.name} imports {name}"
            assert not any(name == m or name.startswith(m + ".") for m in OWN_IO), f"{f.name} imports {name}"


def test_importing_core_loads_no_io_module() -> None:
    runtime_io = sorted(FORBIDDEN - {"http", "socket", "urllib", "asyncio", "subprocess"})
    code = (
        "import sys, importlib, pkgutil, modelrollout.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('modelrollout.core.' + m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {runtime_io!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
