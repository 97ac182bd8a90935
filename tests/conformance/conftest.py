"""The conformance suite runs worker processes against the real RabbitMQ (a vhost of its own)
and PostgreSQL (a schema of its own), like the integration tests."""

from __future__ import annotations

from tests.integration.conftest import vhost_url

__all__ = ["vhost_url"]
