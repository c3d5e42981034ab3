import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from runner import env  # noqa: E402


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    """Every test files its runs and cache under its own temporary folder."""
    d = tmp_path / "runs"
    monkeypatch.setenv("FORGE_RUNS", str(d))
    monkeypatch.setenv("FORGE_REPORTS", str(tmp_path / "reports"))
    return d


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight 2-layer llama (hidden 64) with the real SmolLM2 tokenizer, built here."""
    from runner import setup
    bm = setup.ensure_base_model("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("tiny-model") / "tiny"
    ml = env.venv("ml")
    subprocess.run([str(ml.python), "-m", "runner.adapters.hf_export", "tiny", "--tokenizer", str(bm.hf_dir),
                    "--out", str(out), "--seed", "0"], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    return out
