"""Clear errors for the commonest ways a connection URL is wrong.

A mistyped PostgreSQL database name used to cost the pool's whole 10 s connect timeout and end
in "pool initialization incomplete"; a missing RabbitMQ virtual host surfaced as an
``InvalidFrameError`` about ``Connection.Close``. ``check_postgres`` connects once, directly,
before the pool is built, and reports the server's own reason; ``explain_amqp`` turns the
RabbitMQ adapter's connect failure into the likely cause. Both mask passwords.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from conveyor.config import mask_secrets
from conveyor.errors import BrokerConnectionError, StoreError

CONNECT_TIMEOUT_S = 10


def check_postgres(url: str) -> None:
    """Connect once; StoreError with the server's reason (``database "x" does not exist``,
    ``password authentication failed``, ``connection refused``) if that fails."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {mask_secrets(url)}: {_reason(str(exc))}") from None


def _reason(text: str) -> str:
    """The useful part of a libpq error (after the last "FATAL:", else its last line)."""
    if "FATAL:" in text:
        text = text.rsplit("FATAL:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return mask_secrets(lines[-1] if lines else text)


def explain_amqp(url: str, exc: BrokerConnectionError) -> BrokerConnectionError:
    """A clearer error for a failed RabbitMQ connect (vhost missing or refused, bad login)."""
    cause = repr(exc.__cause__) if exc.__cause__ is not None else str(exc)
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    user = parts.username or "guest"
    if "Connection.Close" in cause and "Connection.OpenOk" in cause:
        return BrokerConnectionError(
            f"RabbitMQ at {mask_secrets(url)} refused to open virtual host {vhost!r}: it does not exist, or user "
            f"{user!r} has no access to it (see `rabbitmqctl list_vhosts` and `rabbitmqctl list_permissions -p "
            f"{vhost}`)")
    if "ACCESS_REFUSED" in cause:
        return BrokerConnectionError(f"RabbitMQ at {mask_secrets(url)} refused the login of user {user!r}: check "
                                     "the user name and password in CONVEYOR_BROKER_URL")
    return BrokerConnectionError(mask_secrets(str(exc)))
