"""Load a recipe: follow `extends`, validate against schemas/, fill the schemas' defaults.

Errors name the file, the line, the YAML path, what was expected and what was found.
Code downstream reads the resolved recipe only; defaults are never restated in code.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from runner import tasks
from runner.env import REPO

SCHEMA_DIR = REPO / "schemas"
ROOT_SCHEMA = "recipe.schema.json"


class RecipeError(Exception):
    """One or more problems with a recipe; str() is the full, printable report."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Recipe:
    path: Path
    data: dict  # resolved: extends merged, defaults filled
    files: list[Path] = field(default_factory=list)  # this file and every file it extends

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def hash(self) -> str:
        return content_hash(self.data)


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- YAML with line numbers

def _compose(path: Path):
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError([f"{path}: cannot read recipe: {e.strerror}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"{path}:1: (top level): expected a mapping of recipe sections, found {_kind(data)}"])
    lines: dict[tuple, int] = {}

    def walk(n, p):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = p + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[p + (i,)] = v.start_mark.line + 1
                walk(v, p + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


def _merge(base: dict, over: dict, base_origin: dict, over_origin: dict, path=()) -> tuple[dict, dict]:
    """Deep-merge mappings; lists and scalars in `over` replace. Origins map YAML path -> (file, line)."""
    out = dict(base)
    origin = dict(base_origin)
    for k, v in over.items():
        p = path + (k,)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k], origin = _merge(out[k], v, origin, over_origin, p)
        else:
            out[k] = v
            origin = {q: o for q, o in origin.items() if q[: len(p)] != p}
        origin.update({q: o for q, o in over_origin.items() if q[: len(p)] == p})
    return out, origin


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict, list[Path]]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise RecipeError([f"{seen[-1]}: extends: cycle: {chain}"])
    data, lines = _compose(path)
    origin = {p: (path, ln) for p, ln in lines.items()}
    parent = data.pop("extends", None)
    if parent is None:
        return data, origin, [path]
    if not isinstance(parent, str):
        raise RecipeError([f"{_shown(path)}:{lines.get(('extends',), 1)}: extends: expected a path to another recipe, "
                           f"found {_kind(parent)}"])
    parent_path = (path.parent / parent)
    if not parent_path.exists():
        raise RecipeError([f"{_shown(path)}:{lines.get(('extends',), 1)}: extends: expected an existing recipe file, "
                           f"found '{parent}' (no such file: {_shown(parent_path)})"])
    base, base_origin, files = _load_chain(parent_path, seen + (path,))
    merged, merged_origin = _merge(base, data, base_origin, origin)
    return merged, merged_origin, [path] + files


# ---------------------------------------------------------------- schemas

def _schemas() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.schema.json"))}


def _registry(schemas: dict[str, dict]) -> Registry:
    return Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in schemas.values()]
    )


def validator() -> Draft202012Validator:
    schemas = _schemas()
    return Draft202012Validator(schemas[ROOT_SCHEMA], registry=_registry(schemas))


def _resolve(schema: dict, base: dict, schemas: dict[str, dict]) -> tuple[dict, dict]:
    """Follow a $ref (file.schema.json, #/$defs/x or both); returns (schema, the document it lives in)."""
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        doc_name, _, frag = ref.partition("#")
        doc = schemas[doc_name] if doc_name else base
        target = doc
        for part in [p for p in frag.split("/") if p]:
            target = target[part]
        schema, base = target, doc
    return schema, base


def _properties(schema: dict, base: dict, schemas) -> dict[str, tuple[dict, dict]]:
    """Every property a schema declares, through $ref and allOf."""
    schema, base = _resolve(schema, base, schemas)
    props = {k: (v, base) for k, v in schema.get("properties", {}).items()}
    for sub in schema.get("allOf", []):
        for k, v in _properties(sub, base, schemas).items():
            props.setdefault(k, v)
    return props


def fill_defaults(instance: dict, schema: dict, base: dict, schemas) -> dict:
    """Add every schema default the instance leaves out (mappings of named entries get none)."""
    for key, (sub, sub_base) in _properties(schema, base, schemas).items():
        resolved, resolved_base = _resolve(sub, sub_base, schemas)
        has_default = "default" in sub or (isinstance(resolved, dict) and "default" in resolved)
        default = sub.get("default", resolved.get("default") if isinstance(resolved, dict) else None)
        if key not in instance and has_default:
            instance[key] = copy.deepcopy(default)
        if isinstance(instance.get(key), dict) and isinstance(resolved, dict):
            fill_defaults(instance[key], resolved, resolved_base, schemas)
        elif isinstance(instance.get(key), list) and isinstance(resolved, dict) and isinstance(resolved.get("items"), dict):
            for item in instance[key]:
                if isinstance(item, dict):
                    fill_defaults(item, resolved["items"], resolved_base, schemas)
    return instance


# ---------------------------------------------------------------- error messages

def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (boolean)"
    if isinstance(v, (int, float)):
        return f"{v!r} ({'integer' if isinstance(v, int) else 'number'})"
    if isinstance(v, str):
        return f"'{v}' (string)"
    if isinstance(v, list):
        return f"a list of {len(v)} items"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _dotted(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _expected(err) -> str:
    v, s = err.validator, err.schema
    if v in ("anyOf", "oneOf", "allOf", "not") and "x-expected" in s:
        return s["x-expected"]
    if v == "type":
        t = s["type"]
        return f"{t if isinstance(t, str) else ' or '.join(t)}"
    if v == "enum":
        return "one of " + ", ".join(json.dumps(x) for x in s["enum"])
    if v == "const":
        return json.dumps(s["const"])
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"a number {op} {s[v]}"
    if v == "pattern":
        return f"a string matching {s['pattern']}"
    if v == "minItems":
        return f"at least {s['minItems']} item(s)"
    if v == "uniqueItems":
        return "items without repeats"
    if v == "minLength":
        return f"a string of at least {s['minLength']} character(s)"
    return err.message


def _contains(node, target) -> bool:
    if node is target:
        return True
    if isinstance(node, dict):
        return any(_contains(v, target) for v in node.values())
    if isinstance(node, list):
        return any(_contains(v, target) for v in node)
    return False


def _candidates(err, schemas) -> list[str]:
    """The keys the failing mapping may have (for 'unknown key' and did-you-mean)."""
    doc = next((d for d in schemas.values() if _contains(d, err.schema)), schemas[ROOT_SCHEMA])
    return sorted(_properties(err.schema, doc, schemas))


def _problems(data: dict, origin: dict, main_file: Path) -> list[str]:
    schemas = _schemas()
    v = Draft202012Validator(schemas[ROOT_SCHEMA], registry=_registry(schemas))
    out: list[str] = []

    def where(path) -> str:
        path = tuple(path)
        while path and path not in origin:
            path = path[:-1]
        f, ln = origin.get(path, (main_file, 1))
        return f"{_shown(f)}:{ln}"

    for err in sorted(v.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(err.absolute_path)
        if err.validator in ("additionalProperties", "unevaluatedProperties"):
            known = _candidates(err, schemas)
            extra = [k for k in err.instance if k not in known] if isinstance(err.instance, dict) else []
            # unevaluatedProperties also names keys whose own value failed: those are reported below
            for k in extra:
                hint = difflib.get_close_matches(k, known, n=1)
                mean = f"; did you mean '{hint[0]}'?" if hint else ""
                out.append(f"{where(path + [k])}: {_dotted(path + [k])}: unknown key '{k}' "
                           f"(expected one of: {', '.join(known)}){mean}")
        elif err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            out.append(f"{where(path)}: {_dotted(path + [missing])}: required key is missing")
        elif "propertyNames" in err.relative_schema_path:
            rule = err.schema.get("pattern") or (f"not one of {err.schema['not']['enum']}" if "not" in err.schema else "")
            out.append(f"{where(path + [err.instance])}: {_dotted(path + [err.instance])}: "
                       f"name not allowed (expected a name {'matching ' if 'pattern' in err.schema else ''}{rule})")
        else:
            out.append(f"{where(path)}: {_dotted(path)}: expected {_expected(err)}, found {_kind(err.instance)}")
    paths = data.get("task_paths") if isinstance(data.get("task_paths"), list) else []
    paths = tuple(p for p in paths if isinstance(p, str))
    if isinstance(data.get("task"), str):
        try:
            tasks.get(data["task"], paths)
        except tasks.UnknownTask:
            out.append(f"{where(['task'])}: task: unknown task '{data['task']}' (expected one of: "
                       f"{', '.join(tasks.available(paths)) or 'none'}; a task is a folder <name>/ whose <name>.yaml "
                       f"has a metadata.forge block, in evals/ or a recipe's task_paths)")
        except tasks.TaskError as e:
            out.append(f"{where(['task'])}: task: '{data['task']}' is not usable: {e}")
    return out


# ---------------------------------------------------------------- entry points

# Recipe values that are file paths: resolved against the directory of the recipe file that set them.
PATH_KEYS = (("base_model", "path"), ("data", "sources", "*", "path"), ("data", "sources", "*", "debian", "folder"),
             ("task_paths", "*"))


def _resolve_paths(data: dict, origin: dict, main_file: Path) -> None:
    def walk(node, pattern, path):
        if not pattern:
            return
        head, rest = pattern[0], pattern[1:]
        if head == "*":
            keys = range(len(node)) if isinstance(node, list) else []
        else:
            keys = [head] if isinstance(node, dict) and head in node else []
        for k in keys:
            if not rest and isinstance(node[k], str):
                src = origin.get(path + (k,), origin.get(path, (main_file, 0)))[0]
                p = Path(node[k]).expanduser()
                node[k] = str(p if p.is_absolute() else (Path(src).parent / p).resolve())
            elif rest:
                walk(node[k], rest, path + (k,))
    for pattern in PATH_KEYS:
        walk(data, pattern, ())


def load(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError([f"{path}: no such recipe file"])
    data, origin, files = _load_chain(path)
    _resolve_paths(data, origin, path.resolve())  # first: the task check searches the resolved task_paths
    problems = _problems(data, origin, path.resolve())
    if problems:
        raise RecipeError(problems)
    schemas = _schemas()
    resolved = fill_defaults(copy.deepcopy(data), schemas[ROOT_SCHEMA], schemas[ROOT_SCHEMA], schemas)
    errors = list(validator().iter_errors(resolved))
    if errors:  # a default that breaks its own schema is our bug, not the user's
        raise RecipeError([f"schemas/: defaults do not validate: {e.message}" for e in errors])
    return Recipe(path=path.resolve(), data=resolved, files=files)
