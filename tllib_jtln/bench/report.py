"""Tables from a suite's runs: mean +- std over the units (class split x seed), and paired differences.

Numbers come only from each run's ``summary.json`` (the test accuracy of the epoch chosen on
the target validation split). A cell holding a run whose epoch was chosen on the test set
(``selected_on: test``, TLlib's protocol under ``--val-split test``) is marked with
:data:`TEST_SELECTED`, and every table containing one says so below it. ``std`` is the sample
standard deviation over the units (ddof = 1); a cell with fewer finished units than the suite asks
for shows how many it has, e.g. ``(2/3)``. A paired difference ``a - b`` is computed per unit (same
class split, same seed, same data) and reported as its mean with a 95% t-interval, the paired
t-test's p-value and the win count (:mod:`tllib_jtln.bench.paired`), in the tables and in the
forest plot ``paired_<name>.png``. Runs made with ``--skip-test`` (selection runs) have no test
figures: a suite of such runs is reported on validation alone. Below the accuracy tables, one
sentence names the cells holding runs that ended at chance (read from each run's ``metrics.jsonl``:
:func:`~tllib_jtln.engine.health.run_at_chance`), whose numbers are failed runs, not fine-tuning.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

from .paired import PairedStats, paired_stats, plot_paired
from ..errors import UserError, one_line
from ..fileio import save_figure, write_text
from ..engine.health import run_at_chance
from .runfolder import read_metrics, read_summary

METRICS = (("test_top1", "test top-1"), ("test_mean_class_acc", "test mean-class acc"),
           ("val_top1", "validation top-1 (what model and switch selection may look at)"))
#: short names of the metrics, for axis labels
METRIC_NAMES = {"test_top1": "test top-1", "test_mean_class_acc": "test mean-class acc", "val_top1": "validation top-1"}


def collect_results(suite: dict, runs: list, out_dir: Path) -> list[dict]:
    """One record per run: its coordinates and, when finished, its summary numbers (a summary
    that cannot be read leaves the run unfinished, with the reason under ``error``)."""
    records = []
    for run in runs:
        record = {"row": run.row, "setting": run.setting, "split": run.split, "seed": run.seed, "finished": False}
        try:
            summary = read_summary(out_dir / run.name)
        except UserError as exc:  # unreadable: not counted as finished, and said so
            summary, record["error"] = None, one_line(exc)
        if summary is not None:
            record.update(finished=True, **summary, at_chance=_ended_at_chance(out_dir / run.name, summary))
        records.append(record)
    return records


def _ended_at_chance(log_dir: Path, summary: dict) -> bool | None:
    """Whether the finished run ended at chance (:func:`~tllib_jtln.engine.health.run_at_chance`); None
    when its ``metrics.jsonl`` or its target classes cannot be read."""
    metrics, classes = read_metrics(log_dir), summary.get("target_classes")
    if metrics is None or not classes:
        return None
    return run_at_chance(metrics, summary.get("best_epoch"), len(classes))


def render_at_chance(suite: dict, records: list[dict]) -> str:
    """One sentence naming the cells with runs that ended at chance (their mean is not a fine-tuning
    result but a failed run's), with how many of the cell's finished runs did; "" when none did."""
    cells = []
    for setting in suite["settings"]:
        for row in suite["methods"]:
            done = [r for r in records if r["row"] == row and r["setting"] == setting and r["finished"]]
            failed = sum(r.get("at_chance") is True for r in done)
            if failed:
                cells.append(f"{setting}/{row} {failed} of {len(done)}")
    if not cells:
        return ""
    return ("Runs that ended at chance (each warned that its target head was at chance from epoch 2 on, "
            "and its kept epoch is at chance on validation: `engine/health.py`): " + ", ".join(cells) + ".")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of fractions, returned in percent."""
    pct = [100.0 * v for v in values]
    mean = statistics.fmean(pct)
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return mean, std


def _cell(values: list[float], expected: int) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    count = f" ({len(values)}/{expected})" if len(values) < expected else ""
    return f"{mean:.1f} ± {std:.1f}{count}"


TEST_SELECTED = "†"
TEST_SELECTED_NOTE = (f"{TEST_SELECTED} epoch chosen on the test set (--val-split test, TLlib's protocol): "
                      f"not comparable with validation-selected cells")


def _test_selected(records: list[dict], row: str, setting: str) -> bool:
    return any(r["row"] == row and r["setting"] == setting and r.get("selected_on") == "test" for r in records)


def _values(records: list[dict], row: str, setting: str, metric: str) -> dict[tuple, float]:
    """``{(class split, seed): value}`` of the finished runs of ``row`` in ``setting``."""
    return {(r.get("split"), r["seed"]): r[metric] for r in records
            if r["row"] == row and r["setting"] == setting and r["finished"] and r.get(metric) is not None}


def unit_count(suite: dict) -> int:
    """Runs per (row, setting): the class splits (1 without ``splits``) times the seeds."""
    return len(suite.get("splits") or [None]) * len(suite["seeds"])


def units_text(suite: dict) -> str:
    """What a cell averages over, in words."""
    splits = suite.get("splits")
    seeds = f"seeds {suite['seeds']}"
    return f"{len(splits)} class splits x {seeds} ({unit_count(suite)} units)" if splits else seeds


def render_table(suite: dict, records: list[dict], metric: str) -> str:
    settings, rows, expected = list(suite["settings"]), list(suite["methods"]), unit_count(suite)
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for row in rows:
        cells = [_cell(list(_values(records, row, s, metric).values()), expected)
                 + (f" {TEST_SELECTED}" if _test_selected(records, row, s) else "") for s in settings]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if any(r.get("selected_on") == "test" for r in records):
        lines.append(f"\n{TEST_SELECTED_NOTE}")
    return "\n".join(lines)


def render_budgets(suite: dict, records: list[dict]) -> str:
    """Images seen per stream by each row (summed over its stages), per setting: the matched budgets."""
    settings = list(suite["settings"])
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for row in suite["methods"]:
        cells = []
        for s in settings:
            seen = {json.dumps(r.get("images_seen"), sort_keys=True) for r in records
                    if r["row"] == row and r["setting"] == s and r["finished"] and r.get("images_seen")}
            cells.append(" / ".join(_budget(json.loads(x)) for x in sorted(seen)) or "-")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _budget(seen: dict) -> str:
    return f"{seen.get('source', 0):,} src + {seen.get('target', 0):,} tgt"


def pair_stats(suite: dict, records: list[dict], metric: str, setting: str, a: str, b: str) -> PairedStats | None:
    """``a - b`` in ``setting`` over the units both rows finished (None when there is none)."""
    va, vb = _values(records, a, setting, metric), _values(records, b, setting, metric)
    units = sorted(set(va) & set(vb), key=lambda unit: (str(unit[0]), unit[1]))
    return paired_stats([va[u] for u in units], [vb[u] for u in units]) if units else None


def render_pairs(suite: dict, records: list[dict], metric: str = "test_top1") -> str:
    """Per-unit differences a - b in points: mean [95% t-interval], paired t-test p, and the wins
    (units where a > b); see :mod:`tllib_jtln.bench.paired`."""
    if not suite.get("pairs"):
        return ""
    settings = list(suite["settings"])
    lines = ["| pair (a - b) | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for a, b in suite["pairs"]:
        cells = []
        for s in settings:
            st = pair_stats(suite, records, metric, s, a, b)
            flag = f" {TEST_SELECTED}" if _test_selected(records, a, s) or _test_selected(records, b, s) else ""
            cells.append("-" if st is None else st.cell() + flag)
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    if any(r.get("selected_on") == "test" for r in records):
        lines.append(f"\n{TEST_SELECTED_NOTE}")
    return "\n".join(lines)


def k_of_settings(suite: dict) -> dict[str, int]:
    """``{setting: K}`` for the settings that fix ``num_samples_per_class`` (directly or through ``base``)."""
    ks = {}
    for setting, values in suite["settings"].items():
        k = {**suite.get("base", {}), **(values or {})}.get("num_samples_per_class")
        if isinstance(k, int):
            ks[setting] = k
    return ks


def row_style(index: int) -> dict:
    """Matplotlib line style of the ``index``-th row: the 10-colour cycle, then the next ten rows
    with other markers and dashes, so no two of the first 30 rows look alike."""
    turn = index // 10
    return {"color": f"C{index % 10}", "marker": "osD"[turn % 3], "linestyle": ("-", "--", ":")[turn % 3]}


def plot_accuracy_vs_k(suite: dict, records: list[dict], path: Path, metric: str = "test_top1") -> Path | None:
    """``metric`` (%, target test top-1 by default) against K, one line per method row, error bars =
    std over the units (class split x seed).

    Written when at least two settings with finished runs differ in K; a row's point is drawn where
    it has a finished unit, labelled ``n/N`` when only n of the N units finished. Returns the path, or
    None when there is nothing to draw."""
    ks = {s: k for s, k in k_of_settings(suite).items()
          if any(_values(records, row, s, metric) for row in suite["methods"])}  # settings with a finished run
    if len(set(ks.values())) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(ks, key=ks.get)
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    for index, row in enumerate(suite["methods"]):
        points = [(ks[s], *mean_std(list(values.values())), len(values))
                  for s in order if (values := _values(records, row, s, metric))]
        if not points:
            continue
        x, mean, std, counts = zip(*points)
        shift = (index - len(suite["methods"]) / 2) * 0.015  # side by side, so error bars do not hide each other
        xs = [k * (1 + shift) for k in x]
        ax.errorbar(xs, mean, yerr=std, capsize=3, label=row, **row_style(index))
        for xi, yi, n in zip(xs, mean, counts):
            if n < unit_count(suite):  # a cell with missing units says how many it has, as the tables do
                ax.annotate(f"{n}/{unit_count(suite)}", (xi, yi), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sorted(set(ks.values())))
    ax.set_xticklabels([str(k) for k in sorted(set(ks.values()))])
    ax.set_xlabel("K (labelled target images per class)")
    ax.set_ylabel(f"target {METRIC_NAMES[metric]} (%)")
    ax.set_title(f"{suite['name']}: mean ± std over {units_text(suite)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: rows can be many
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _merge_unrecorded(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """One row's distinct switch dicts, with those that differ only by keys some runs lack (a switch
    added after those runs were made, so their ``summary.json`` does not name it) merged into one;
    returns the dicts and the sorted names of the keys some runs did not record."""
    if len(runs) < 2:
        return runs, []
    union = {k: v for d in runs for k, v in d.items()}
    if any(d.get(k, union[k]) != union[k] for d in runs for k in union):  # a real difference: keep them apart
        return runs, []
    return [union], sorted(k for k in union if any(k not in d for d in runs))


def render_switches(suite: dict, records: list[dict]) -> str:
    """Each row's resolved switches as its runs' ``summary.json`` recorded them (``switches``): the
    values every row with switches shares on one line, then what each row sets differently. Runs
    that differ only because older code did not record a switch are one cell, with that noted."""
    by_row, unrecorded = {}, {}
    for row in suite["methods"]:
        seen = {json.dumps(r.get("switches") or {}, sort_keys=True) for r in records if r["row"] == row and r["finished"]}
        by_row[row], unrecorded[row] = _merge_unrecorded([json.loads(x) for x in sorted(seen)])
    with_switches = [d for runs in by_row.values() for d in runs if d]
    shared = {k: v for k, v in with_switches[0].items() if all(d.get(k, object()) == v for d in with_switches)} \
        if with_switches else {}
    lines = ["Shared by every row with switches: " + ("; ".join(f"{k}={v}" for k, v in sorted(shared.items()))
                                                    or "(none)") + ".", "", "| method | its own switches |", "|---|---|"]
    for row, runs in by_row.items():
        cells = ["; ".join(f"{k}={v}" for k, v in sorted(d.items()) if k not in shared) or ("(shared only)" if d else "(none)")
                 for d in runs]
        note = f" ({', '.join(unrecorded[row])}: not recorded by the runs made before it existed)" if unrecorded[row] else ""
        lines.append(f"| {row} | " + (" / ".join(cells) or "-") + note + " |")
    return "\n".join(lines)


def _selection_sentence(records: list[dict]) -> str:
    chosen = sorted({r.get("selected_on") or "val" for r in records if r["finished"]})
    words = {"val": "the target validation split", "test": f"the TEST set ({TEST_SELECTED})",
             "last": "none (last epoch kept)"}
    return "Epoch chosen on " + (", ".join(words[c] for c in chosen) if chosen else words["val"]) + "."


def plot_pairs(suite: dict, records: list[dict], path: Path, metric: str = "test_top1") -> Path | None:
    """The forest plot of every pair (mean difference and 95% t-interval over the paired units), one
    panel per setting, in the order of K (``paired_<name>.png``); None when no pair has a unit."""
    ks = k_of_settings(suite)
    settings = sorted(suite["settings"], key=lambda s: (ks.get(s) is None, ks.get(s, 0)))
    panels = {}
    for s in settings:
        rows = [(f"{a} - {b}", st) for a, b in suite.get("pairs", [])
                if (st := pair_stats(suite, records, metric, s, a, b)) is not None]
        counts = sorted({st.n for _, st in rows})
        n = "/".join(map(str, counts))
        panels[f"K = {ks[s]} ({n} units)" if s in ks else f"{s} ({n} units)"] = rows
    return plot_paired(panels, path, f"{suite['name']}: paired differences, mean and 95% t-interval",
                       METRIC_NAMES[metric])


def report_metrics(records: list[dict]) -> list[str]:
    """The metrics a report shows: validation alone when every finished run skipped the test pass."""
    finished = [r for r in records if r["finished"]]
    if finished and all(r.get("test_skipped") for r in finished):
        return ["val_top1"]
    return [metric for metric, _ in METRICS]


def write_report(suite: dict, records: list[dict], out_dir: Path, suite_file: str) -> Path:
    """Write ``results_<name>.json``, ``results_<name>.md`` and the pictures into ``out_dir`` (named
    after the suite, so suites sharing run folders keep their own); returns the markdown path.

    A suite whose runs all skipped the test pass (``--skip-test``) is reported on validation alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(json.dumps({"suite": suite, "runs": records}, indent=1), out_dir / f"results_{suite['name']}.json")
    finished = sum(r["finished"] for r in records)
    metrics = report_metrics(records)
    headline = "target test accuracy" if "test_top1" in metrics else "target VALIDATION accuracy (--skip-test runs)"
    skipped = sum(bool(r.get("test_skipped")) for r in records if r["finished"])
    parts = [f"### {suite['name']}: {headline} (%), mean ± std over {units_text(suite)}",
             f"Command: `tllib-jtln bench --suite {suite_file}`. Machine: {platform.machine()}, "
             f"{platform.processor() or 'cpu'}; {time.strftime('%Y-%m-%d')}. "
             f"Runs finished: {finished}/{len(records)}. {_selection_sentence(records)}"
             + (f" {skipped} runs skipped the test pass (--skip-test): validation figures only." if skipped else "")]
    main = metrics[0]  # test top-1, or validation top-1 for --skip-test suites
    forest = plot_pairs(suite, records, out_dir / f"paired_{suite['name']}.png", main)
    if forest is not None:  # the picture a reader looks at first: above the tables
        parts += [f"\n![paired differences, {METRIC_NAMES[main]}: mean and 95% t-interval]({forest.name})"]
    for metric in metrics:
        parts += [f"\n**{dict(METRICS)[metric]}**\n", render_table(suite, records, metric)]
    if at_chance := render_at_chance(suite, records):
        parts += [f"\n{at_chance}"]
    parts += ["\n**images seen per stream (source + target) by each run**\n", render_budgets(suite, records),
              "\n**switches of each row (resolved, from summary.json)**\n", render_switches(suite, records)]
    if suite.get("pairs"):
        unit = "same class split and seed" if suite.get("splits") else "same seeds"
        how = f"points, {unit}; mean [95% t-interval], paired t-test p (scipy.stats.ttest_rel), wins"
        for metric in [m for m in ("test_top1", "val_top1") if m in metrics]:
            note = "; what switches are chosen on" if metric == "val_top1" else ""
            parts += [f"\n**paired differences, {METRIC_NAMES[metric]} ({how}{note})**\n",
                      render_pairs(suite, records, metric)]
    picture = plot_accuracy_vs_k(suite, records, out_dir / f"accuracy_vs_k_{suite['name']}.png", main)
    if picture is not None:
        parts += [f"\n![{METRIC_NAMES[main]} against K]({picture.name})"]
    md_path = out_dir / f"results_{suite['name']}.md"
    write_text("\n".join(parts) + "\n", md_path)
    return md_path
