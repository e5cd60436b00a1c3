"""Layering: the host side never imports Textual (it runs headless on hosts, under systemd)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import hostctl


def test_hostctl_never_imports_textual() -> None:
    modules = [m.name for m in pkgutil.walk_packages(hostctl.__path__, "hostctl.") if m.name != "hostctl.__main__"]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert len(modules) > 10 and out.strip() == "[]"
