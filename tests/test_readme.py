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
    assert ci[-1].endswith("python -m pytest -q")
