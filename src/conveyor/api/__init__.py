"""The HTTP API of the scheduling center: ``create_app(settings, service) -> FastAPI``."""

from conveyor.api.app import create_app

__all__ = ["create_app"]
