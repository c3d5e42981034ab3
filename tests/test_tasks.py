"""The task registry (runner/tasks.py): a task is a folder of configuration, looked up by name."""
import re
from pathlib import Path

import pytest

from runner import tasks

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def evals(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "EVALS", tmp_path / "evals")
    tasks.get.cache_clear()
    yield tmp_path / "evals"
    tasks.get.cache_clear()


def task_folder(evals: Path, name: str, forge: str) -> Path:
    d = evals / name
    d.mkdir(parents=True)
    (d / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\noutput_type: generate_until\n"
                                    f"doc_to_text: !function utils.doc_to_text\nmetadata:\n  version: 1.0\n{forge}")
    return d


def test_the_invoice_task_resolves_from_its_folder():
    t = tasks.get("invoice_extraction")
    assert (t.kind, t.slices, t.route, t.train_task) == ("extraction", ("layout", "locale"),
                                                        "/v1/tasks/invoice_extraction", "invoice_extraction_train")
    assert t.schema == REPO / "evals" / "invoice_extraction" / "schema.json" and t.schema_json()["type"] == "object"
    assert callable(t.utils().process_results)
    assert tasks.available() == ["invoice_extraction"]  # general_instructions is an extra lm-eval task, not a task
    assert tasks.scored_as("invoice_extraction_train") == "invoice_extraction"
    assert tasks.scored_as("general_instructions") == "general_instructions"


def test_a_task_of_a_known_kind_is_configuration_only(evals):
    task_folder(evals, "ticket_routing", "  forge:\n    kind: classification\n    slices: [language]\n")
    t = tasks.get("ticket_routing")
    assert (t.kind, t.schema, t.slices) == ("classification", None, ("language",))
    assert tasks.available() == ["ticket_routing"]


def test_unknown_and_broken_tasks_say_what_is_there_and_what_is_wrong(evals):
    task_folder(evals, "orders", "  forge:\n    kind: extraction\n    schema: orders.schema.json\n")
    task_folder(evals, "notes", "  forge:\n    kind: summarize\n")
    task_folder(evals, "plain", "")
    with pytest.raises(tasks.UnknownTask, match=r"unknown task 'tickets': the tasks are notes, orders \(each a folder"):
        tasks.get("tickets")
    with pytest.raises(tasks.TaskError, match=r"orders\.yaml: metadata\.forge\.schema: an extraction task needs"):
        tasks.get("orders")
    with pytest.raises(tasks.TaskError, match=r"notes\.yaml: metadata\.forge\.kind: expected one of extraction, "
                                              r"classification, generation, found 'summarize'"):
        tasks.get("notes")
    with pytest.raises(tasks.TaskError, match=r"plain\.yaml: expected a mapping at metadata\.forge"):
        tasks.get("plain")


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
