"""The README's promises: the TLlib snippet runs as written, and CI runs the README's test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_tllib_snippet_runs_and_gives_a_finite_differentiable_loss():
    section = README.split("### Inside a TLlib script", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["M"].shape == (10, 5)
    assert scope["loss"].isfinite()
    assert scope["source_logits"].grad is not None and scope["source_logits"].grad.abs().sum() > 0


def test_ci_runs_the_readme_test_command():
    quickstart = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_no_merge_conflict_markers_in_tracked_text():
    import subprocess

    files = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yaml", "*.toml", "*.txt", "*.sh", "Makefile"],
                           cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (an sdist): the markdown at least
        files = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("*.md")]
    marked = [name for name in files
              if re.search(r"^(<{7} |>{7} |={7}$)", (ROOT / name).read_text(errors="replace"), re.M)]
    assert not marked, f"merge conflict markers in {marked}"


def test_readme_is_a_five_minute_read_whose_links_resolve():
    """At most 300 lines, the verdict before the usage, and every relative link names a file that exists."""
    lines = README.splitlines()
    assert len(lines) <= 300
    assert README.index("## The verdict") < README.index("## Using it")
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)\)", README)
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert targets and not missing, missing
