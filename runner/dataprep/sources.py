"""Read the user's own data (JSONL, CSV, Parquet, or a hub dataset when online) through a field mapping.

Every problem names the file and the line (or row) and what was expected; nothing is half-read."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from runner.dataprep import faq
from runner.stage import StageError

COLUMNS = ("input", "output", "id", "group")  # the mapping keys that are not slice columns


def _format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "jsonl")


def _rows(path: Path, fmt: str):
    """(line or row number, dict) pairs."""
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise StageError(f"{path}:{n}: malformed JSON line ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise StageError(f"{path}:{n}: expected a JSON object per line, found {type(row).__name__}")
                yield n, row
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield n, row
    else:
        import pyarrow.parquet as pq
        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield n, row


def load(source: dict, parse_gold=lambda v: v, tally: dict | None = None) -> list[dict]:
    """`source["path"]` is absolute: recipe loading resolves it against the recipe file that set it.
    `parse_gold` turns an output cell into the task kind's gold (extraction: JSON text -> object). `tally`, when
    given, receives what was read: `rows`, `filtered_out` (by `where`), `no_output` (rows whose output field is
    null: skipped, so counted), `records`, and for Debian sources each package's provenance and question count."""
    t = tally if tally is not None else {}
    t.update(rows=0, filtered_out=0, no_output=0, records=0)
    m = source["mapping"]
    if "hub_id" in source:
        recs = _load_hub(source, parse_gold)
        t.update(rows=len(recs), records=len(recs))
        return recs
    if "debian" in source:
        t["packages"] = []
        return _mapped(_where(debian_rows(source["debian"], t["packages"]), source.get("where") or {}, t), m,
                       parse_gold, t)
    path = Path(source["path"])
    if not path.exists():
        raise StageError(f"data.sources: {path}: no such file")
    try:
        path.open("rb").close()
    except OSError as e:
        raise StageError(f"data.sources: {path}: cannot read ({e.strerror})") from None
    fmt = _format(path, source["format"])
    rows = ((f"{path}:{n}", f"{path.stem}-{n}", row) for n, row in _rows(path, fmt))
    return _mapped(_where(rows, source.get("where") or {}, t), m, parse_gold, t)


def _where(rows, keep: dict[str, list[str]], tally: dict):
    """Only the rows whose field holds one of the listed values (`data.sources[].where`)."""
    for where, default_id, row in rows:
        tally["rows"] += 1
        if all(str(row.get(field)) in values for field, values in keep.items()):
            yield where, default_id, row
        else:
            tally["filtered_out"] += 1


def _mapped(rows, m: dict, parse_gold, tally: dict) -> list[dict]:
    """(where, default id, row) triples through the mapping into records."""
    out = []
    for where, default_id, row in rows:
        for key in ("input", "output"):
            if m[key] not in row:
                raise StageError(f"{where}: mapping.{key} names field '{m[key]}', which this record lacks "
                                 f"(it has: {', '.join(sorted(row)) or 'no fields'})")
        if row[m["output"]] is None:   # e.g. a question with no English text to render it into
            tally["no_output"] += 1
            continue
        out.append({"id": str(row[m["id"]]) if "id" in m and m["id"] in row else default_id,
                    "document": str(row[m["input"]] or ""), "gold": parse_gold(row[m["output"]]),
                    **({"group": str(row.get(m["group"]))} if "group" in m else {}),
                    **_slices(row, m), "pii": [], "source": where})
    tally["records"] = len(out)
    return out


def debian_rows(deb: dict, packages: list | None = None):
    """(where, default id, row) for every question in the pinned packages (`data.sources[].debian`): each package
    fetched or taken from the folder and unpacked into the user cache (runner/setup.py), parsed by its parser.
    `packages`, when given, receives each package's provenance (name, version, sha256, licence, where the .deb came
    from) and how many questions its parser found."""
    from runner import setup   # the cache's Debian machinery (apt-get download, sha256, dpkg-deb -x)
    rows = []
    for p in deb["packages"]:
        try:
            pkg = setup.ensure_debian_package(p["name"], p["version"], p["sha256"], deb.get("folder"))
        except SystemExit as e:
            raise StageError(f"data.sources[].debian.packages: {p['name']}={p['version']}: "
                             f"{str(e).removeprefix('[setup] ')}") from None
        found = [{**r, "license": p["license"], "sha256": p["sha256"]}
                 for r in faq.PARSERS[p["parser"]](pkg.path / "root", p["name"], p["version"])]
        if not found:
            raise StageError(f"data.sources[].debian.packages: {p['name']}={p['version']}: the {p['parser']} parser "
                             f"found no questions in it (is it the right package for that parser?)")
        rows += found
        if packages is not None:
            origin = pkg.path / "source.json"
            got = json.loads(origin.read_text()) if origin.exists() else {}
            packages.append({"name": p["name"], "version": p["version"], "sha256": got.get("sha256", p["sha256"]),
                             "parser": p["parser"], "license": p["license"], "from": got.get("from", "?"),
                             "questions": len(found), "languages": sorted({r["language"] for r in found})})
    for r in faq.with_english(rows):
        yield f"{r['package']}:{r['file']}#{r['question_id'].split('#')[-1]}", r["id"], r


def _slices(row: dict, mapping: dict) -> dict:
    """The slice columns the mapping names (every key but input, output and id), read as text."""
    return {col: str(row.get(field, "?")) for col, field in mapping.items() if col not in COLUMNS}


def _load_hub(source: dict, parse_gold) -> list[dict]:  # pragma: no cover - needs network
    try:
        from datasets import load_dataset
    except ImportError:
        raise StageError("data.sources.hub_id needs the 'datasets' package and network access") from None
    m = source["mapping"]
    ds = load_dataset(source["hub_id"], split=source["split"])
    return [{"id": f"{source['hub_id']}-{i}", "document": str(r[m["input"]]), "gold": parse_gold(r[m["output"]]),
             **_slices(r, m), "pii": [], "source": f"{source['hub_id']}[{i}]"} for i, r in enumerate(ds)]
