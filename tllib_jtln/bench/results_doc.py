"""A results page built from suites' reports: ``tllib-jtln bench --suite FILE --results-doc PAGE``.

Each suite owns one section of the page, between ``<!-- suite: NAME -->`` and ``<!-- /suite: NAME -->``;
writing a suite's report replaces its own section (or appends it) and leaves the others as they
are, so the page is regenerated from the runs, one suite at a time, never edited by hand. The
pictures a report links (``paired_NAME.png``, ``accuracy_vs_k_NAME.png``) are copied into
``<page folder>/results/`` and the links rewritten to point there.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..fileio import atomic_write, write_text

_PICTURE = re.compile(r"\]\(([^)/]+\.png)\)")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- suite: {name} -->", f"<!-- /suite: {name} -->"


def update_results_doc(page: Path, name: str, report: Path) -> Path:
    """Put the markdown ``report`` of suite ``name`` into ``page`` as that suite's section.

    Args:
        page: the results page (created with a title when missing).
        name: the suite's name (its section's key).
        report: ``results_<name>.md`` as :func:`~tllib_jtln.bench.report.write_report` wrote it; the
            pictures it links lie beside it.
    Returns: ``page``.
    """
    page, report = Path(page), Path(report)
    pictures = page.parent / "results"
    body = report.read_text(encoding="utf-8")
    for picture in _PICTURE.findall(body):
        source = report.parent / picture
        if source.is_file():
            data = source.read_bytes()
            atomic_write(pictures / picture, lambda handle: handle.write(data))
    body = _PICTURE.sub(lambda m: f"](results/{m.group(1)})", body).strip()
    start, end = _markers(name)
    section = f"{start}\n{body}\n{end}"
    text = page.read_text(encoding="utf-8") if page.is_file() else (
        "# Results\n\nWritten by `tllib-jtln bench --suite FILE --results-doc docs/results.md` from the runs of "
        "each suite (one section per suite, replaced whole when the suite reports again); do not edit by hand.\n")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    write_text(text.rstrip("\n") + "\n", page)
    return page
