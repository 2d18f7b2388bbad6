"""Project-level checks: README table current, architecture contracts, packaging."""

import re
import shutil
import subprocess
import sys

from conftest import ROOT

from zoo._cli import model_table


def test_readme_model_table_is_current():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->", readme, re.S)
    assert m, "README.md lacks the model-table markers"
    assert m.group(1).strip() == model_table().strip(), "regenerate with: .venv/bin/zoo table"


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
    res = subprocess.run(
        [sys.executable, "-m", "zoo._cli", "list", "resnet*"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0 and "resnet56" in res.stdout and "lenet5" not in res.stdout
