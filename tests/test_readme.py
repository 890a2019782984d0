from pathlib import Path

from latency_sensitivity.columns import markdown_table

REPO = Path(__file__).resolve().parents[1]


def test_readme_metrics_table_matches_columns():
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- metrics-table:start -->\n") + len("<!-- metrics-table:start -->\n")
    end = text.index("<!-- metrics-table:end -->")
    assert text[start:end] == markdown_table(), "regenerate with: latency-sensitivity columns"


def test_ci_runs_the_readme_test_command():
    ci = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if l and not l.startswith(("#", "set "))]
    readme = (REPO / "README.md").read_text()
    assert all(line in readme for line in ci)  # every step, the last one the whole suite
    assert ci[-1].endswith("python -m pytest -q -n 2 --dist loadfile")


def _markdown_files():
    """The README, the benchmark notes and the published runs' reports (a study's recorded results/ may keep a
    report without its figures)."""
    notes = [p for p in (REPO / "benchmarks").rglob("*.md") if "results" not in p.relative_to(REPO).parts]
    return [REPO / "README.md", *sorted(notes), *sorted((REPO / "reference").rglob("*.md"))]


def test_markdown_links_and_figures_resolve():
    import re

    missing = []
    for md in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if "://" in target or target.startswith("#"):
                continue
            if not (md.parent / target.split("#")[0]).exists():
                missing.append(f"{md.relative_to(REPO)}: {target}")
    assert not missing, missing


def test_readme_paths_to_published_runs_and_studies_exist():
    import re

    text = (REPO / "README.md").read_text()
    paths = set(re.findall(r"`((?:reference|benchmarks)/[^`\s]+)`", text))
    assert any(p.startswith("reference/") for p in paths) and any(p.startswith("benchmarks/") for p in paths)
    assert not [p for p in paths if not (REPO / p).exists()]
