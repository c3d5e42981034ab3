"""Read the user's own data (JSONL, CSV, Parquet, or a hub dataset when online) through a field mapping.

Every problem names the file and the line (or row) and what was expected; nothing is half-read."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from runner.stage import StageError

COLUMNS = ("document", "answer", "id")  # the mapping keys that are not slice columns


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


def _answer(value, where: str):
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # left for the label check to report
    return value


def load(source: dict) -> list[dict]:
    """`source["path"]` is absolute: recipe loading resolves it against the recipe file that set it."""
    m = source["mapping"]
    if "hub_id" in source:
        return _load_hub(source)
    path = Path(source["path"])
    if not path.exists():
        raise StageError(f"data.sources: {path}: no such file")
    try:
        path.open("rb").close()
    except OSError as e:
        raise StageError(f"data.sources: {path}: cannot read ({e.strerror})") from None
    fmt = _format(path, source["format"])
    out = []
    for n, row in _rows(path, fmt):
        where = f"{path}:{n}"
        for key in ("document", "answer"):
            if m[key] not in row:
                raise StageError(f"{where}: mapping.{key} names field '{m[key]}', which this record lacks "
                                 f"(it has: {', '.join(sorted(row)) or 'no fields'})")
        out.append({"id": str(row[m["id"]]) if "id" in m and m["id"] in row else f"{path.stem}-{n}",
                    "document": str(row[m["document"]] or ""), "gold": _answer(row[m["answer"]], where),
                    **_slices(row, m), "pii": [], "source": where})
    return out


def _slices(row: dict, mapping: dict) -> dict:
    """The slice columns the mapping names (every key but document, answer and id), read as text."""
    return {col: str(row.get(field, "?")) for col, field in mapping.items() if col not in COLUMNS}


def _load_hub(source: dict) -> list[dict]:  # pragma: no cover - needs network
    try:
        from datasets import load_dataset
    except ImportError:
        raise StageError("data.sources.hub_id needs the 'datasets' package and network access") from None
    m = source["mapping"]
    ds = load_dataset(source["hub_id"], split=source["split"])
    return [{"id": f"{source['hub_id']}-{i}", "document": str(r[m["document"]]), "gold": _answer(r[m["answer"]], ""),
             **_slices(r, m), "pii": [], "source": f"{source['hub_id']}[{i}]"} for i, r in enumerate(ds)]
