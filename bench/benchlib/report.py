"""Medians over repeats, the one markdown table, and the results JSON."""

from __future__ import annotations

import statistics
from typing import Any

from benchlib.scenarios import Case, Compare, Metrics, Row

COLUMNS = ("Celery", "Dramatiq", "Huey", "ceiling")
# Ratios above 1 favour Conveyor for rates, below 1 for latency and memory.
SCENARIO_CELLS = {"latency": "latency (lower is better)", "memory": "memory (lower is better)"}


def medians(runs: list[Metrics]) -> Metrics:
    ok = [r for r in runs if "error" not in r]
    keys = {k for r in ok for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median(r[k] for r in ok if k in r) for k in sorted(keys)}


def fmt(row: Row, values: Metrics) -> str:
    if any(k not in values for k in row.keys):
        return "failed"
    if row.unit == "tasks/s":
        return " / ".join(f"{values[k]:,.0f}/s" for k in row.keys)
    if row.unit == "ms":
        return " / ".join(f"{values[k]:.2f}" if values[k] < 10 else f"{values[k]:.1f}" for k in row.keys) + " ms"
    return " / ".join(f"{values[k]:.1f}" for k in row.keys) + f" {row.unit}"


def ratio_cell(row: Row, mine: Metrics, compares: list[Compare], med: dict[str, Metrics]) -> str:
    parts = []
    for c in compares:
        other = med.get(c.case_id, {})
        their_keys = (c.key,) * len(row.keys) if c.key else row.keys
        if any(k not in mine for k in row.keys) or any(k not in other for k in their_keys):
            text = "n/a"
        else:
            text = " / ".join(f"{mine[a] / other[b]:.2f}" for a, b in zip(row.keys, their_keys, strict=True))
        parts.append(f"{text} ({c.label})" if c.label else text)
    return "; ".join(parts)


def notes(case: Case, runs: list[Metrics], med: Metrics) -> str:
    out = [case.note] if case.note else []
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        out.append(f"failed {len(failed)}/{len(runs)}: {str(failed[-1])[:120]}")
    retried = sum(1 for r in runs if "first_error" in r and "error" not in r)
    if retried:
        out.append(f"{retried} run(s) passed on a second try")
    if "achieved_rate" in med and med["achieved_rate"] < 0.95 * med.get("target_rate", 0):
        out.append(f"client kept up only {med['achieved_rate']:,.0f}/s")
    if "submit_call_p50_ms" in med:
        out.append(f"of which the submit call: p50 {med['submit_call_p50_ms']:.2f} ms")
    if case.once:
        out.append("1 run")
    return "; ".join(out)


def n_cell(case: Case, med: Metrics) -> str:
    """Tasks measured: the planned N, or fewer where a time cap stopped the client."""
    done = med.get("n", med.get("samples", case.n))
    return f"{done:,.0f}" if done >= case.n else f"{done:,.0f} of {case.n:,} (time cap)"


def table(cases: list[Case], raw: dict[str, list[Metrics]]) -> str:
    med = {c.id: medians(raw.get(c.id, [])) for c in cases}
    head = ["Scenario", "System / config", "N", "Median", *(f"Conveyor ÷ {col}" for col in COLUMNS), "Notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in cases:
        for row in case.rows:
            mine = med[case.id]
            cells = [SCENARIO_CELLS.get(case.scenario, case.scenario), row.label, n_cell(case, mine), fmt(row, mine)]
            for col in COLUMNS:
                compares = [c for c in case.compare if c.column == col]
                cells.append(ratio_cell(row, med[case.id], compares, med) if compares else "")
            cells.append(notes(case, raw.get(case.id, []), med[case.id]))
            lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def payload(cases: list[Case], raw: dict[str, list[Metrics]]) -> list[dict[str, Any]]:
    return [{
        "id": c.id, "scenario": c.scenario, "system": c.system.family, "n": c.n, "note": c.note,
        "rows": [{"label": r.label, "keys": list(r.keys), "unit": r.unit} for r in c.rows],
        "compare": [{"column": x.column, "case": x.case_id, "key": x.key, "label": x.label} for x in c.compare],
        "repeats": raw.get(c.id, []), "median": medians(raw.get(c.id, [])),
    } for c in cases]
