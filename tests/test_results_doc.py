"""docs/results.md is written by `bench --results-doc`, one section per suite, never by hand."""
from pathlib import Path

from tllib_jtln.bench.results_doc import update_results_doc


def _report(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"paired_{name}.png").write_bytes(b"\x89PNG fake")
    report = folder / f"results_{name}.md"
    report.write_text(f"### {name}\n{text}\n\n![pairs](paired_{name}.png)\n")
    return report


def test_a_suite_section_is_added_then_replaced_and_the_others_kept(tmp_path):
    page = tmp_path / "docs" / "results.md"
    update_results_doc(page, "a", _report(tmp_path / "out_a", "a", "first run of a"))
    update_results_doc(page, "b", _report(tmp_path / "out_b", "b", "b's table"))
    update_results_doc(page, "a", _report(tmp_path / "out_a", "a", "second run of a"))
    text = page.read_text()
    assert text.startswith("# Results") and "do not edit by hand" in text
    assert "second run of a" in text and "first run of a" not in text and "b's table" in text
    assert text.count("<!-- suite: a -->") == 1 and text.index("suite: a -->") < text.index("suite: b -->")
    assert "](results/paired_a.png)" in text and (page.parent / "results" / "paired_b.png").is_file()


def test_bench_report_only_writes_the_page_without_training(tmp_path, monkeypatch, capsys):
    import json

    from tllib_jtln.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\nout: {tmp_path / 'out'}\nseeds: [0, 1]\nbase: {{epochs: 1}}\n"
                     "methods: {erm: {method: erm}, joint: {method: joint}}\npairs: [[joint, erm]]\n")
    for row, top1 in (("erm", 0.5), ("joint", 0.6)):
        for seed in (0, 1):
            folder = tmp_path / "out" / "default" / row / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps({"test_top1": top1 + seed / 100, "val_top1": top1}))
    monkeypatch.setattr("tllib_jtln.bench.suite.run_runs", lambda *a: (_ for _ in ()).throw(AssertionError("trained")))
    page = tmp_path / "results.md"
    assert main(["bench", "--suite", str(suite), "--report-only", "--results-doc", str(page)]) == 0
    text = page.read_text()
    assert "<!-- suite: s -->" in text and "| joint |" in text and "joint - erm" in text
