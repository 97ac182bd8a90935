"""``conveyor db upgrade``: apply the store's schema migrations."""

from __future__ import annotations

import click

from conveyor.cli.main import CliContext, cli


@cli.group()
def db() -> None:
    """Store schema commands."""


@db.command()
@click.pass_obj
def upgrade(ctx: CliContext) -> None:
    """Create or upgrade the store's schema (PostgreSQL migrations; SQLite creates on open)."""
    url = ctx.settings.store_url
    if url.startswith(("postgresql:", "postgres:")):
        from conveyor.store.migrate import upgrade as pg_upgrade

        applied = pg_upgrade(url)
        click.echo(f"applied migrations: {applied}" if applied else "schema is up to date")
    else:
        from conveyor.store import open_store

        open_store(url).close()
        click.echo("schema is up to date")
