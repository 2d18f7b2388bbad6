"""Project-level checks: README table current, architecture contracts, packaging."""

import shutil
import subprocess
import sys

from conftest import ROOT

from zoo.cli.readme import GENERATED, render_readme


def test_readme_tables_are_current():
    readme = (ROOT / "README.md").read_text()
    for key in GENERATED:
        assert f"<!-- {key}:start -->" in readme and f"<!-- {key}:end -->" in readme, key
    assert render_readme(readme) == readme, "regenerate with: .venv/bin/zoo readme"


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first = readme.index("make demo")
    assert first < readme.index("make test") < readme.index("<!-- model-table:start -->")


def test_import_contracts():
    exe = shutil.which("lint-imports", path=str(ROOT / ".venv" / "bin")) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e .[dev]"
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_zoo_cli_lists_models():
    res = subprocess.run([sys.executable, "-m", "zoo.cli", "list", "resnet*"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "resnet56" in res.stdout and "lenet5" not in res.stdout
