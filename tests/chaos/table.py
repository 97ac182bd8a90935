"""Render chaos tallies (JSON lines, as ``make chaos`` appends them) as docs/reliability.md's table.
Usage: ``python -m tests.chaos.table chaos-results.jsonl``."""

from __future__ import annotations

import json
import sys


def render(lines: list[str]) -> str:
    rows = ["| Scenario | Form | Submitted | Succeeded | Failed | Lost | Ran twice | Stuck | Time |",
            "|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        t = json.loads(line)
        rows.append(f"| {t['scenario']} | {t['form']} | {t['submitted']:,} | {t['succeeded']:,} | {t['failed']:,} | "
                    f"{t['lost']} | {t['ran_twice']} | {t['stuck']} | {t['time_s']:.1f} s |")
    return "\n".join(rows)


if __name__ == "__main__":
    with open(sys.argv[1]) as results:
        print(render([line for line in results if line.strip()]))
