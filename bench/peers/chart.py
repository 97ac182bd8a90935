"""Bar chart of a results JSON: ``python peers/chart.py results.json out.png`` (peers' venv:
matplotlib is never a Conveyor dependency). One panel per scenario, bars coloured by system."""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"conveyor": "#1f77b4", "celery": "#2ca02c", "dramatiq": "#d62728", "huey": "#9467bd",
           "pgqueuer": "#ff7f0e", "procrastinate": "#8c564b", "amqp": "#7f7f7f"}
TITLES = {"submit": "Durable submit (tasks/s, higher is better)", "drain": "Drain (tasks/s, higher is better)",
          "latency": "Submit-to-start latency (ms, lower is better)", "memory": "Worker RSS (MiB, lower is better)",
          "embedded": "Embedded on SQLite (tasks/s)", "ceiling": "Raw AMQP ceiling (msg/s)"}


def bars(data: dict[str, Any]) -> dict[str, list[tuple[str, float, str]]]:
    panels: dict[str, list[tuple[str, float, str]]] = {}
    for case in data["cases"]:
        for row in case["rows"]:
            for key in row["keys"]:
                value = case["median"].get(key)
                if value is None:
                    continue
                label = row["label"] if len(row["keys"]) == 1 else f"{row['label'].split(': p50')[0]} {key[:3]}"
                panels.setdefault(case["scenario"], []).append((label, value, case["system"]))
    return panels


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    with open(source) as f:
        data = json.load(f)
    panels = bars(data)
    if not panels:
        raise SystemExit("nothing to draw")
    heights = [max(1.6, 0.32 * len(items) + 0.9) for items in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (scenario, items) in zip(axes[:, 0], panels.items(), strict=True):
        labels = [label for label, _, _ in items][::-1]
        values = [value for _, value, _ in items][::-1]
        colours = [COLOURS.get(system, "#333333") for _, _, system in items][::-1]
        ax.barh(labels, values, color=colours)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}" if v >= 100 else f" {v:.2f}", va="center", fontsize=7)
        ax.set_title(TITLES.get(scenario, scenario), fontsize=9, loc="left")
        if scenario == "latency":
            ax.set_xscale("log")  # a backlogged system is 1000x slower than an idle one
        ax.tick_params(labelsize=7)
        ax.margins(x=0.15)
    machine = data.get("machine", {})
    fig.suptitle(f"Conveyor benchmark {data['date']}: N={data['args']['tasks']:,}, {data['args']['repeats']} "
                 f"repeat(s), {machine.get('cores')} cores, RabbitMQ {machine.get('rabbitmq')}, "
                 f"PostgreSQL {machine.get('postgresql')}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
