"""Recipe loading: schema errors name file, line and YAML path; extends; defaults come from the schemas."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import recipe

REPO = Path(__file__).resolve().parent.parent
BROKEN = REPO / "tests" / "recipes" / "broken"


@pytest.mark.parametrize("name, line, path, expected", [
    ("bad_type.yaml", 5, "train.lora.r", "expected integer, found 'sixteen' (string)"),
    ("unknown_key.yaml", 4, "train.learning_rat", "did you mean 'learning_rate'?"),
    ("missing_required.yaml", 1, "name", "required key is missing"),
    ("bad_enum.yaml", 4, "quantize.types[1]", "found 'q4_k_xl' (string)"),
    ("bad_extends.yaml", 1, "extends", "expected an existing recipe file"),
    ("unknown_task.yaml", 3, "task", "unknown task 'support_tickets' (expected one of: invoice_extraction, support_normalize, support_routing;"),
])
def test_broken_recipes_name_file_line_and_path(name, line, path, expected):
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(BROKEN / name)
    hits = [p for p in e.value.problems if f"{name}:{line}: {path}:" in p]
    assert hits, e.value.problems
    assert expected in hits[0]


def test_validate_command_reports_every_broken_recipe():
    files = sorted(BROKEN.glob("*.yaml"))
    r = subprocess.run([sys.executable, "-m", "runner", "validate", *(str(f.relative_to(REPO)) for f in files)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1
    for f in files:
        assert f"INVALID tests/recipes/broken/{f.name}" in r.stderr


def test_every_shipped_recipe_is_valid():
    recipes = sorted((REPO / "recipes").rglob("*.yaml")) + [REPO / "tests" / "recipes" / "tiny.yaml"]
    assert recipes
    for p in recipes:
        recipe.load(p)


def test_missing_required_reports_conditional_requirement():
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(BROKEN / "missing_required.yaml")
    assert any("missing_required.yaml:3: base_model.path: required key is missing" in p for p in e.value.problems)


def test_defaults_come_from_the_schema(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: minimal\ntask: invoice_extraction\n")
    r = recipe.load(p)
    schema = json.loads((REPO / "schemas" / "train.schema.json").read_text())
    assert r.data["train"]["learning_rate"] == schema["$defs"]["hyper"]["properties"]["learning_rate"]["default"]
    assert r.data["train"]["lora"]["r"] == schema["$defs"]["hyper"]["properties"]["lora"]["properties"]["r"]["default"]
    assert r.data["seed"] == 42 and r.data["serve"]["engine"] == "llama-server"
    assert r.data["train"]["variants"] == {}


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntask: invoice_extraction\ntrain:\n  max_steps: 7\n  lora: {r: 4, alpha: 8}\n"
                                        "quantize:\n  types: [q8_0, q4_k_m]\n")
    (tmp_path / "exp.yaml").write_text("extends: base.yaml\nname: exp\ntrain:\n  lora: {r: 32}\n"
                                       "quantize:\n  types: [q5_k_m]\n")
    r = recipe.load(tmp_path / "exp.yaml")
    assert r.name == "exp"
    assert r.data["train"]["max_steps"] == 7
    assert r.data["train"]["lora"]["r"] == 32 and r.data["train"]["lora"]["alpha"] == 8
    assert r.data["quantize"]["types"] == ["q5_k_m"]
    assert [f.name for f in r.files] == ["exp.yaml", "base.yaml"]


def test_error_in_parent_names_the_parent_file(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\neval:\n  limit: -3\n")
    (tmp_path / "exp.yaml").write_text("extends: base.yaml\nname: exp\n")
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(tmp_path / "exp.yaml")
    assert "base.yaml:3: eval.limit: expected a number >= 0, found -3 (integer)" in str(e.value)


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(recipe.RecipeError, match="cycle"):
        recipe.load(tmp_path / "a.yaml")


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntrain:\n  max_steps: [1, 2\n")
    with pytest.raises(recipe.RecipeError, match=r"bad.yaml:\d+: not valid YAML"):
        recipe.load(p)


def test_variant_unknown_key_and_reserved_name(tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text("name: v\ntrain:\n  variants:\n    tuned-v2:\n      learning_rat: 0.1\n    base:\n      max_steps: 3\n")
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(p)
    text = str(e.value)
    assert "v.yaml:5: train.variants.tuned-v2.learning_rat: unknown key" in text
    assert "did you mean 'learning_rate'" in text
    assert "train.variants.base: name not allowed" in text


def test_recipe_hash_changes_with_content(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("name: x\ntask: invoice_extraction\ntrain: {max_steps: 5}\n")
    b.write_text("name: x\ntask: invoice_extraction\ntrain: {max_steps: 6}\n")
    assert recipe.load(a).hash != recipe.load(b).hash
    assert recipe.load(a).hash == recipe.load(a).hash
