"""Entry point: `python3 -m runner COMMAND ...` from the repository root (the justfile calls this).

Stdlib only until it has made sure the venvs exist: it sets up what COMMAND needs, then re-executes
itself inside the core venv.
"""
from __future__ import annotations

import os
import sys

from runner import env

# What each command needs before it can run (see runner/setup.py).
NEEDS = {"validate": ["core"], "report": ["core"], "compare": ["core"], "setup": [],
         "run": ["all"], "serve": ["core", "llama", "gateway"], "replay": ["core", "llama", "gateway"], "test": ["all"]}


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "help"
    core = env.venv("core")
    inside = os.path.realpath(sys.prefix) == os.path.realpath(core.path)
    if inside and os.environ.get("PYTHONHASHSEED") != "0":
        # Faker (the data generator) picks from collections ordered by string hashes: without a fixed hash seed
        # the same generator seed printed other city names in another process, and the dataset version changed.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "runner", *sys.argv[1:]])
    if not inside:
        from runner import setup
        if cmd == "setup":
            sys.exit(setup.main(sys.argv[2:]))
        setup.ensure(NEEDS.get(cmd, ["core"]))
        os.environ["PYTHONPATH"] = str(env.REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(str(core.python), [str(core.python), "-m", "runner", *sys.argv[1:]])
    from runner import cli
    sys.exit(cli.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
