"""Medians over repeats, the one markdown table, and the results JSON."""

from __future__ import annotations

import statistics
from typing import Any

from benchlib.cases import Case, Compare, Metrics, Row

COLUMNS = ("Celery", "Dramatiq", "Huey", "PgQueuer", "Procrastinate", "ceiling")
# Ratios above 1 favour Conveyor for rates, below 1 for latency and memory.
SCENARIO_CELLS = {"latency": "latency (lower is better)", "memory": "memory (lower is better)"}
CPU_HEAD = "CPU µs/task: worker / broker / PG = total"
OTHER_LOAD_NOTE = 0.25  # note other CPU on the machine above this share of the attributed total


def medians(runs: list[Metrics]) -> Metrics:
    ok = [r for r in runs if "error" not in r and "skipped" not in r]
    keys = {k for r in ok for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median(r[k] for r in ok if k in r) for k in sorted(keys)}


def fmt(row: Row, values: Metrics) -> str:
    if any(k not in values for k in row.keys):
        return "n/a"
    if row.unit == "tasks/s":
        return " / ".join(f"{values[k]:,.0f}/s" for k in row.keys)
    if row.unit == "ms":
        return " / ".join(f"{values[k]:.2f}" if values[k] < 10 else f"{values[k]:.1f}" for k in row.keys) + " ms"
    return " / ".join(f"{values[k]:.1f}" for k in row.keys) + f" {row.unit}"


def cpu_cell(case: Case, row: Row, med: Metrics) -> str:
    """Worker / broker / PG microseconds of CPU per task; n/a for a server the system does
    not use (its CPU is in the JSON all the same). Redis, where used, is added after PG."""
    if not row.cpu or "cpu_us_worker" not in med:
        return ""
    uses = case.system.uses
    if any(f"cpu_us_{role}" not in med for role in uses):
        return f"{med['cpu_us_worker']:,.0f} / ? (a server restarted during the drain)"
    parts, total = [], med["cpu_us_worker"]
    for role in ("broker", "pg"):
        if role in uses:
            parts.append(f"{med[f'cpu_us_{role}']:,.0f}")
            total += med[f"cpu_us_{role}"]
        else:
            parts.append("n/a")
    text = f"{med['cpu_us_worker']:,.0f} / " + " / ".join(parts)
    if "redis" in uses:
        text += f" + Redis {med['cpu_us_redis']:,.0f}"
        total += med["cpu_us_redis"]
    return f"{text} = {total:,.0f}"


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


def notes(case: Case, row: Row, runs: list[Metrics], med: Metrics) -> str:
    out = [case.note] if case.note else []
    skipped = [r["skipped"] for r in runs if "skipped" in r]
    if skipped:
        out.append(f"not run: {skipped[-1]}")
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        out.append(f"failed {len(failed)}/{len(runs)}: {str(failed[-1])[:120]}")
    retried = sum(1 for r in runs if "first_error" in r and "error" not in r)
    if retried:
        out.append(f"{retried} run(s) passed on a second try")
    if "target_rate" in med:
        out.append(client_note(med))
    if row.cpu:
        out.extend(cpu_notes(case, med))
    if case.once:
        out.append("1 run")
    return "; ".join(out)


def client_note(med: Metrics) -> str:
    """Whether the paced client kept its rate, so a latency figure measures the system."""
    target, achieved = med["target_rate"], med["achieved_rate"]
    lag = med.get("send_lag_p99_ms", 0.0)
    clients = f"{med.get('clients', 1):.0f} client process(es)"
    kept = achieved >= 0.97 * target and lag < 50
    head = (f"client kept {target:,.0f}/s" if kept else
            f"client did NOT keep {target:,.0f}/s: {achieved:,.0f}/s")
    return (f"{head} ({clients}, send lag p99 {lag:.1f} ms); "
            f"submit call p50 {med.get('submit_call_p50_ms', 0.0):.2f} ms, "
            f"client CPU {med.get('client_cpu_us_per_task', 0.0):,.0f} µs/submit")


def cpu_notes(case: Case, med: Metrics) -> list[str]:
    if "cpu_us_worker" not in med:
        return []
    out = []
    attributed = med["cpu_us_worker"] + sum(med.get(f"cpu_us_{r}", 0.0) for r in case.system.uses)
    if med.get("cpu_us_other", 0.0) > OTHER_LOAD_NOTE * attributed:
        out.append(f"other CPU on the machine meanwhile {med['cpu_us_other']:,.0f} µs/task")
    if med.get("cpu_window_all_busy", 1.0) < 1.0:
        out.append("CPU window from the first task (not every process was at work before the end)")
    busy = [f"{role} {med[f'idle_cpu_pct_{role}']:.0f}%" for role in ("pg", "broker")
            if role in case.system.uses and med.get(f"idle_cpu_pct_{role}", 0.0) >= 5.0]
    if busy:
        out.append("servers busy before the drain (other users): " + ", ".join(busy) + " of a core")
    return out


def n_cell(case: Case, med: Metrics) -> str:
    """Tasks measured: the planned N, or fewer where a time cap stopped the client."""
    done: float = med["n"] if "n" in med else med.get("samples", case.n)
    return f"{done:,.0f}" if done >= case.n else f"{done:,.0f} of {case.n:,} (time cap)"


def table(cases: list[Case], raw: dict[str, list[Metrics]]) -> str:
    med = {c.id: medians(raw.get(c.id, [])) for c in cases}
    head = ["Scenario", "System / config", "N", "Median", CPU_HEAD, *(f"Conveyor ÷ {col}" for col in COLUMNS),
            "Notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in cases:
        mine = med[case.id]
        for row in case.rows:
            cells = [SCENARIO_CELLS.get(case.scenario, case.scenario), row.label, n_cell(case, mine), fmt(row, mine),
                     cpu_cell(case, row, mine)]
            for col in COLUMNS:
                compares = [c for c in case.compare if c.column == col]
                cells.append(ratio_cell(row, mine, compares, med) if compares else "")
            cells.append(notes(case, row, raw.get(case.id, []), mine))
            lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def payload(cases: list[Case], raw: dict[str, list[Metrics]]) -> list[dict[str, Any]]:
    return [{
        "id": c.id, "scenario": c.scenario, "system": c.system.family, "n": c.n, "note": c.note,
        "uses": list(c.system.uses),
        "rows": [{"label": r.label, "keys": list(r.keys), "unit": r.unit, "cpu": r.cpu} for r in c.rows],
        "compare": [{"column": x.column, "case": x.case_id, "key": x.key, "label": x.label} for x in c.compare],
        "repeats": raw.get(c.id, []), "median": medians(raw.get(c.id, [])),
    } for c in cases]
