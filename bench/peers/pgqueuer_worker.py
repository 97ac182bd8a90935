"""One PgQueuer worker process: ``python -m peers.pgqueuer_worker --batch-size B``.

It does what ``pgq run peers.pgqueuer_app:main --batch-size B`` does (``pgqueuer.run`` on
uvloop, SIGTERM/SIGINT for a graceful stop) through PgQueuer's documented Python entry point:
the ``pgq run`` command of pgqueuer 1.6.0 fails at start-up with typer 0.29 (its
``--log-level`` option reaches the logger as a string).
"""

from __future__ import annotations

import argparse
import logging

import pgqueuer
import uvloop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--max-concurrent-tasks", type=int, default=0, help="0: no limit (its default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(pgqueuer.run("peers.pgqueuer_app:main", batch_size=args.batch_size,
                            max_concurrent_tasks=args.max_concurrent_tasks or None))


if __name__ == "__main__":
    main()
