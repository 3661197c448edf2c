"""README.md stays true: its configuration reference is the one the code defines."""

from __future__ import annotations

from pathlib import Path

from scripts.config_reference import splice

ROOT = Path(__file__).resolve().parents[3]


def test_readme_configuration_reference_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert splice(readme) == readme, (
        "README.md's configuration reference is stale: run "
        "PYTHONPATH=daemons python3 scripts/config_reference.py --update README.md")


def test_readme_names_the_test_command_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\n    scripts/test\n" in readme
    assert "\nscripts/test\n" in (ROOT / ".ci/run").read_text()
