"""The task registry (runner/tasks.py): a task is a folder of configuration, looked up by name."""
import json
import re
from pathlib import Path

import pytest

from runner import kinds, tasks

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def evals(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "EVALS", tmp_path / "evals")
    tasks.get.cache_clear()
    tasks.scoring.cache_clear()
    yield tmp_path / "evals"
    tasks.get.cache_clear()
    tasks.scoring.cache_clear()


PROMPT = "    system_prompt: Do the task.\n"


def task_folder(evals: Path, name: str, forge: str) -> Path:
    d = evals / name
    d.mkdir(parents=True)
    (d / f"{name}.yaml").write_text(f"task: {name}\nmetadata:\n  version: 1.0\n{forge}")
    return d


def test_the_invoice_task_resolves_from_its_folder():
    t = tasks.get("invoice_extraction")
    assert (t.kind, t.slices, t.route, t.train_task) == ("extraction", ("layout", "locale"),
                                                        "/v1/tasks/invoice_extraction", "invoice_extraction_train")
    assert t.schema == json.loads((REPO / "evals" / "invoice_extraction" / "schema.json").read_text())
    assert [r["check"] for r in t.spec["rules"]] == ["calendar_date", "not_before", "sum", "currency_code"]
    assert t.scorer is kinds.module("extraction") and not (t.folder / "utils.py").exists()  # configuration only
    assert tasks.available() == ["invoice_extraction", "support_normalize", "support_routing"]  # general_instructions: an extra lm-eval task
    assert tasks.scored_as("invoice_extraction_train") == "invoice_extraction"
    assert tasks.scored_as("general_instructions") == "general_instructions"
    # the lm-eval task is the kind's base config overridden by the task's YAML
    cfg = t.lm_eval_config()
    assert cfg["process_results"] == "extraction.process_results" and cfg["generation_kwargs"]["max_gen_toks"] == 256
    assert tasks.scoring("invoice_extraction_train").metrics["field_f1"] == "common.micro_f1"
    assert tasks.scoring("general_instructions").binary == {"accuracy", "answered_as_json"}


def test_a_task_of_each_kind_is_configuration_only(evals):
    task_folder(evals, "ticket_routing", f"  forge:\n    kind: classification\n    labels: [a, b]\n{PROMPT}"
                                         "    slices: [language]\n")
    task_folder(evals, "summaries", f"  forge:\n    kind: generation\n{PROMPT}")
    orders = task_folder(evals, "orders", f"  forge:\n    kind: extraction\n    schema: s.json\n{PROMPT}")
    (orders / "s.json").write_text('{"type": "object", "properties": {"n": {"type": "integer"}}}')
    t = tasks.get("ticket_routing")
    assert (t.kind, t.schema, t.slices, t.spec["labels"]) == ("classification", None, ("language",), ["a", "b"])
    assert tasks.get("summaries").spec["min_chrf"] == 50
    assert tasks.get("orders").schema["properties"]["n"]["type"] == "integer"
    assert tasks.available() == ["orders", "summaries", "ticket_routing"]


def test_task_paths_are_searched_before_evals(tmp_path):
    extra = tmp_path / "mine"
    task_folder(extra, "invoice_extraction", f"  forge:\n    kind: generation\n{PROMPT}")
    assert tasks.get("invoice_extraction", (str(extra),)).kind == "generation"  # the recipe's own folder wins
    assert tasks.get("invoice_extraction").kind == "extraction"
    assert tasks.get("ticket_routing", (str(REPO / "tests" / "tasks"),)).kind == "classification"


def test_unknown_and_broken_tasks_say_what_is_there_and_what_is_wrong(evals):
    task_folder(evals, "orders", f"  forge:\n    kind: extraction\n    schema: orders.schema.json\n{PROMPT}")
    task_folder(evals, "notes", "  forge:\n    kind: summarize\n")
    task_folder(evals, "plain", "")
    task_folder(evals, "routes", f"  forge:\n    kind: classification\n    labels: [only]\n{PROMPT}")
    task_folder(evals, "mute", "  forge:\n    kind: generation\n")
    rules = task_folder(evals, "rules", f"  forge:\n    kind: extraction\n    schema: s.json\n{PROMPT}"
                                         "    rules: [{check: sum, parts: [a, b], total: c}]\n")
    (rules / "s.json").write_text('{"type": "object", "properties": {"a": {}, "b": {}}}')
    with pytest.raises(tasks.UnknownTask, match=r"unknown task 'tickets': the tasks are mute, notes, orders, routes, "
                                                r"rules \(each a folder"):
        tasks.get("tickets")
    with pytest.raises(tasks.TaskError, match=r"orders\.yaml: metadata\.forge\.schema: an extraction task needs"):
        tasks.get("orders")
    with pytest.raises(tasks.TaskError, match=r"notes\.yaml: metadata\.forge\.kind: expected one of extraction, "
                                              r"classification, generation, found 'summarize'"):
        tasks.get("notes")
    with pytest.raises(tasks.TaskError, match=r"plain\.yaml: expected a mapping at metadata\.forge"):
        tasks.get("plain")
    with pytest.raises(tasks.TaskError, match=r"routes\.yaml: metadata\.forge\.labels: a classification task needs "
                                              r"a list of at least two"):
        tasks.get("routes")
    with pytest.raises(tasks.TaskError, match=r"mute\.yaml: metadata\.forge\.system_prompt: expected the task's"):
        tasks.get("mute")
    with pytest.raises(tasks.TaskError, match=r"rules\.yaml: metadata\.forge\.rules\[0\]: names 'c', not a property"):
        tasks.get("rules")


def test_no_runner_module_names_a_task():
    """Everything task-specific lives in evals/<task>/; the runner reads it through the registry. (The synthetic
    invoice generator, runner/datagen/, is a data source, not a task.)"""
    names = tasks.lm_eval_tasks() + ["/v1/tasks/invoice", "data.task"]
    assert "invoice_extraction" in names and "general_instructions" in names
    offenders = []
    for f in sorted((REPO / "runner").rglob("*.py")):
        if "datagen" in f.parts:
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if any(re.search(rf"{re.escape(n)}\b", line) for n in names):
                offenders.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []
