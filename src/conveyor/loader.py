"""Find the ``Conveyor`` app a worker or scheduler serves: ``module[:attribute]``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from conveyor.errors import ConfigError

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def load_app(ref: str) -> Conveyor:
    from conveyor.app import Conveyor

    module_name, _, attribute = ref.partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the current folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, Conveyor):
        raise ConfigError(f"{module_name}:{attribute} is not a Conveyor app")
    return app
