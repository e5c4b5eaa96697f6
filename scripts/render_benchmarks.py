#!/usr/bin/env python
"""Render pytest-benchmark's ``--benchmark-json`` output as the README's markdown speed table.

Usage: ``python scripts/render_benchmarks.py benchmarks/results/latest.json [> table.md]``.
One table per benchmark group: median and IQR-free spread (stddev) in milliseconds, rounds,
and each benchmark's ``extra_info`` (speed-up ratios, recall, images/s) as recorded by the bench.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render(report: dict) -> str:
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "unknown cpu"
    cores = machine.get("cpu", {}).get("count", "?")
    lines = [f"Machine: {cpu}, {cores} logical cores, {machine.get('system', '')} "
             f"{machine.get('machine', '')}, Python {machine.get('python_version', '?')}; "
             f"date {report.get('datetime', '?')[:10]}."]
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in report.get("benchmarks", []):
        groups[bench.get("group") or "ungrouped"].append(bench)
    for group, benches in sorted(groups.items()):
        lines += ["", f"**{group}**", "", "| benchmark | median (ms) | stddev (ms) | rounds | notes |",
                  "|---|---:|---:|---:|---|"]
        for bench in sorted(benches, key=lambda b: b["stats"]["median"]):
            stats = bench["stats"]
            notes = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(bench.get("extra_info", {}).items()))
            lines.append(f"| {bench['name']} | {stats['median'] * 1e3:.2f} | {stats['stddev'] * 1e3:.2f} | "
                         f"{stats['rounds']} | {notes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: render_benchmarks.py BENCH.json\n")
        return 2
    try:
        with open(argv[0]) as handle:
            report = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        sys.stderr.write(f"render_benchmarks.py: cannot read {argv[0]}: {exc}\n")
        return 2
    sys.stdout.write(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
