"""docs/openapi.json is the API's published spec; this test fails when it is stale.

Regenerate it with ``CONVEYOR_WRITE_OPENAPI=1 .venv/bin/pytest tests/e2e/test_openapi.py``
(or ``.venv/bin/python -m tests.e2e.test_openapi``) and commit the result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from conveyor import __version__
from conveyor.api import create_app
from conveyor.config import Settings

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def render_spec() -> str:
    spec = create_app(Settings()).openapi()  # no lifespan: nothing is opened
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_committed_openapi_spec_is_current() -> None:
    current = render_spec()
    if os.environ.get("CONVEYOR_WRITE_OPENAPI"):
        SPEC.write_text(current, encoding="utf-8")
    committed = SPEC.read_text(encoding="utf-8") if SPEC.exists() else ""
    assert committed == current, (
        "docs/openapi.json is stale: run CONVEYOR_WRITE_OPENAPI=1 .venv/bin/pytest tests/e2e/test_openapi.py")


def test_spec_names_the_api_and_documents_errors_and_auth() -> None:
    spec = json.loads(render_spec())
    assert (spec["info"]["title"], spec["info"]["version"]) == ("Conveyor", __version__)
    submit = spec["paths"]["/api/v1/tasks"]["post"]
    assert {"200", "201", "401", "413", "422", "503"} <= set(submit["responses"])
    assert submit["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "TaskIn" in spec["components"]["schemas"]


if __name__ == "__main__":
    SPEC.write_text(render_spec(), encoding="utf-8")
