"""Where the heavy, versioned build products live, and what each is keyed by.

Stdlib only: this runs before any venv exists. Everything lives in a user-level cache
(like pip's), keyed by the versions it was built from, so a fresh clone and CI reuse it.
`FORGE_CACHE` overrides the location.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from runner.llama_build import BASE_CMAKE, FORCE_ENV

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"


def cache_root() -> Path:
    if os.environ.get("FORGE_CACHE"):
        return Path(os.environ["FORGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finetune-forge"


def runs_root() -> Path:
    """Run records and the stage cache: runs/ in the repository unless FORGE_RUNS says otherwise."""
    return Path(os.environ.get("FORGE_RUNS", REPO / "runs")).resolve()


def reports_root() -> Path:
    """Where evidence packs are published: reports/ in the repository (committed for the default recipe)."""
    return Path(os.environ.get("FORGE_REPORTS", REPO / "reports")).resolve()


def project_config() -> dict:
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Venv:
    group: str
    pins: tuple[str, ...]
    torch: str | None

    @property
    def key(self) -> str:
        return short_hash({"py": sys.version_info[:2], "pins": self.pins, "torch": self.torch})

    @property
    def path(self) -> Path:
        return cache_root() / "venvs" / f"{self.group}-{self.key}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name


def venv(group: str) -> Venv:
    cfg = project_config()
    pins = tuple(cfg["project"]["optional-dependencies"][group])
    torch_cfg = cfg["tool"]["forge"]["torch"]
    torch = torch_cfg["version"] if group in torch_cfg["venvs"] else None
    return Venv(group, pins, torch)


@dataclass(frozen=True)
class LlamaCpp:
    sdist: str
    targets: tuple[str, ...]
    builds: tuple[dict, ...]      # the build ladder (runner/llama_build.py)
    selftest_model: str
    forced: str | None = None     # $FORGE_LLAMA_BUILD: start the ladder at this configuration

    @property
    def key(self) -> str:
        # The ladder picks instruction sets from this CPU's flags, so the build is keyed by them too.
        return short_hash({"sdist": self.sdist, "targets": self.targets, "cpu": cpu_flags(), "cmake": BASE_CMAKE,
                           "builds": self.builds, "selftest_model": self.selftest_model, "forced": self.forced})

    @property
    def path(self) -> Path:
        return cache_root() / "llama.cpp" / self.key

    @property
    def source(self) -> Path:
        """The vendored llama.cpp tree (convert_hf_to_gguf.py, gguf-py, tools/)."""
        return self.path / "src"

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.source / "gguf-py"

    def bin(self, name: str) -> Path:
        return self.path / "build" / "bin" / name

    @property
    def build_record(self) -> Path:
        """Which build configuration was kept and why, with every self-test result (written by set-up)."""
        return self.path / "build.json"

    def record(self) -> dict:
        try:
            return json.loads(self.build_record.read_text())
        except (OSError, ValueError):
            return {}


def cpu_flags() -> list[str]:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return [platform.machine(), flags]


def llama_cpp() -> LlamaCpp:
    cfg = project_config()["tool"]["forge"]["llama_cpp"]
    return LlamaCpp(cfg["sdist"], tuple(cfg["targets"]), tuple(cfg["builds"]), cfg["selftest_model"],
                    os.environ.get(FORCE_ENV) or None)


@dataclass(frozen=True)
class BaseModel:
    name: str
    package: str
    gguf_glob: str
    hub_id: str

    @property
    def key(self) -> str:
        return short_hash({"package": self.package, "glob": self.gguf_glob, "export": 3})

    @property
    def path(self) -> Path:
        return cache_root() / "models" / f"{self.name}-{self.key}"

    @property
    def hf_dir(self) -> Path:
        return self.path / "hf"

    @property
    def gguf_dir(self) -> Path:
        """The GGUF file the package ships, unpacked (the self-test's model, and the export's source)."""
        return cache_root() / "models" / f"{self.name}-gguf-{self.key}"


def base_models() -> dict[str, BaseModel]:
    cfg = project_config()["tool"]["forge"]["base_models"]
    return {n: BaseModel(n, c["package"], c["gguf_glob"], c["hub_id"]) for n, c in cfg.items()}


@dataclass(frozen=True)
class DebPackage:
    """A Debian package pinned in [tool.forge.debian] (or by a recipe's data source, with its sha256), unpacked
    (not installed) into the cache."""
    name: str
    version: str
    sha256: str | None = None

    @property
    def key(self) -> str:
        return short_hash({"name": self.name, "version": self.version, "arch": platform.machine(),
                           **({"sha256": self.sha256} if self.sha256 else {})})

    @property
    def path(self) -> Path:
        return cache_root() / "debian" / f"{self.name}-{self.key}"

    def bin(self, name: str) -> Path:
        return self.path / "root" / "usr" / "bin" / name


def debian(name: str) -> DebPackage:
    return DebPackage(name, project_config()["tool"]["forge"]["debian"][name])


def done_marker(path: Path) -> Path:
    return path / ".forge-complete"


def is_complete(path: Path) -> bool:
    return done_marker(path).exists()
