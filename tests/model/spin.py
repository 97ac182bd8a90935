"""Run Spin on the protocol model (model/conveyor.pml): generate the verifier, compile it with gcc,
search the whole state space, and report which property (if any) a counterexample violates.

``python -m tests.model.spin [--full]`` prints one line per configuration (``make model``);
tests/model/test_spin.py runs the CI-sized configurations.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODEL = Path(__file__).resolve().parents[2] / "model" / "conveyor.pml"

# Each assertion of the model, by a fragment of its text as pan prints it.
PROPERTIES = {
    "P1 lost": "assert(0)",
    "P2 twice / P3 fence": "attempts==",
    "P4 stuck": "accepted",
    "message precedes row": "status!=",
}


@dataclass(frozen=True)
class Check:
    """One Spin run: the defines it used, whether it found a violation, and what it reports."""

    defines: tuple[str, ...]
    violated: str | None  # the property a counterexample violates; None: none found
    complete: bool  # the search covered the whole state space
    states: int
    seconds: float
    output: str

    def line(self) -> str:
        verdict = f"VIOLATED {self.violated}" if self.violated else "no violation"
        search = "complete" if self.complete else "INCOMPLETE"
        return f"{' '.join(self.defines) or '(defaults)':45} {verdict:32} {self.states:>12,} states  {search}  " \
               f"{self.seconds:.1f} s"


def verify(defines: tuple[str, ...], *, timeout_s: float = 600.0, memory_mb: int = 2048) -> Check:
    """``spin -a``, ``gcc``, ``./pan``: exhaustive safety search (assertions; the model's own
    quiescence check stands in for end states, so pan's end-state check is off: ``-E``)."""
    for tool in ("spin", "gcc"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} is not installed (scripts/install-debian-packages.sh)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spin-") as work:
        shutil.copy(MODEL, work)
        subprocess.run(["spin", "-a", *defines, MODEL.name], cwd=work, check=True, capture_output=True, timeout=60)
        subprocess.run(["gcc", "-O2", "-DSAFETY", "-DCOLLAPSE", f"-DMEMLIM={memory_mb}", "-o", "pan", "pan.c"],
                       cwd=work, check=True, capture_output=True, timeout=120)
        done = subprocess.run(["./pan", "-E", "-m300000"], cwd=work, capture_output=True, text=True,
                              timeout=timeout_s)
        output = done.stdout + done.stderr
    violated = None
    failed = re.search(r"assertion violated (.*)", output)
    if failed:
        violated = next((name for name, text in PROPERTIES.items() if text in failed.group(1).replace(" ", "")),
                        failed.group(1))
    states = re.search(r"([\d.e+]+) states, stored", output)
    complete = "Search not completed" not in output and "max search depth too small" not in output
    return Check(defines, violated, complete or violated is not None,
                 int(float(states.group(1))) if states else 0, time.monotonic() - started, output)


# CI's bounds. Two Conveyor workers with a crash exceed a CI machine (over 50 million states):
# one crashing worker, and two workers whose leases lapse without crashes, cover the two halves.
ONE_CRASHING_WORKER = ("-DNCONVEYOR=1", "-DCRASHES=1", "-DEXPIRIES=1")
TWO_WORKERS_LEASES_LAPSE = ("-DNCONVEYOR=2", "-DCRASHES=0", "-DEXPIRIES=1")
# A foreign worker (claim and renewal asked of the center, outcome reported, then acked) and the
# center applying its reports; one crash anywhere, one lease lapse (duplicates: ``--full``).
ONE_CRASHING_FOREIGN_WORKER = ("-DNCONVEYOR=0", "-DNFOREIGN=1", "-DCRASHES=1", "-DEXPIRIES=1", "-DDUPS=0")

# (defines, a violation expected?): CI runs these; ``--full`` adds larger bounds.
CONFIGURATIONS: list[tuple[tuple[str, ...], bool]] = [
    (ONE_CRASHING_WORKER, False),
    (TWO_WORKERS_LEASES_LAPSE, False),
    ((*TWO_WORKERS_LEASES_LAPSE, "-DNOFENCE"), True),
    ((*ONE_CRASHING_WORKER, "-DNOOUTBOX"), True),
    (ONE_CRASHING_FOREIGN_WORKER, False),
    ((*ONE_CRASHING_FOREIGN_WORKER, "-DNOFENCE"), True),
]
FULL_CONFIGURATIONS: list[tuple[tuple[str, ...], bool]] = [
    (("-DNCONVEYOR=1", "-DCRASHES=2", "-DEXPIRIES=2"), False),
    (("-DNCONVEYOR=2", "-DCRASHES=0", "-DEXPIRIES=2"), False),
    (("-DNCONVEYOR=0", "-DNFOREIGN=1", "-DCRASHES=1", "-DEXPIRIES=1", "-DDUPS=1"), False),
    (("-DNCONVEYOR=1", "-DNFOREIGN=1", "-DCRASHES=0", "-DEXPIRIES=1"), False),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also the larger bounds (two crashes)")
    args = parser.parse_args()
    wrong = 0
    for defines, expect_violation in CONFIGURATIONS + (FULL_CONFIGURATIONS if args.full else []):
        check = verify(defines, timeout_s=3000, memory_mb=8192 if args.full else 2048)
        print(check.line(), flush=True)
        if bool(check.violated) != expect_violation or not check.complete:
            wrong += 1
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
