"""Shared pieces of the benchmark. ``record`` and ``pace`` are stdlib-only: the task modules and
clients of every system import them, in the project's venv and in the peers' venv alike."""
