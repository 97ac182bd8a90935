"""The conformance kit's runner (protocol/conformance/runner.py), imported from its file: the kit
lives beside the schemas, outside the Python package and the tests."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.processes import REPO_ROOT

KIT_DIR = REPO_ROOT / "protocol" / "conformance"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conveyor_conformance_runner", KIT_DIR / "runner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


runner = _load()
