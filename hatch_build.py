"""Build hook: compile the modules every record passes through with mypyc.

The same source, compiled to C through its type annotations: about a fifth fewer instructions
a record. Where it cannot compile (no C compiler or Python headers), or with
TARGET_CUSTOMERIO_PURE_PYTHON=1, the package installs as plain Python: the same code, slower.
The target logs which one runs (`mapping: compiled` or `mapping: interpreted`).
"""

from __future__ import annotations

import os
from typing import Any

from hatch_mypyc.plugin import MypycBuildHook


class CompileHook(MypycBuildHook):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("TARGET_CUSTOMERIO_PURE_PYTHON"):
            self.clean([version])  # no compiled module left in place to shadow the source
            return
        try:
            super().initialize(version, build_data)
        except Exception as exc:  # noqa: BLE001 - any compile failure leaves the plain-Python package
            self.clean([version])
            self.app.display_warning(f"target-customerio: not compiled, installing plain Python ({str(exc).strip()[:300]})")


def get_build_hook() -> type[CompileHook]:
    return CompileHook  # hatchling's choice when a module holds several hook classes
