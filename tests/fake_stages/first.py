"""A fake stage for the runner's own tests: writes its section to a file, counts its runs."""
import json
import os

from runner.stage import Result

SECTIONS = ("first", "seed")
INPUTS = ()


def run(ctx):
    (ctx.out / "value.json").write_text(json.dumps(ctx.section("first")))
    counter = os.environ["FAKE_COUNTER"]
    with open(counter, "a") as f:
        f.write("first\n")
    return Result(metrics={"value": ctx.section("first")["value"], "dataset_version": "v-fake"},
                  artifacts={"value": "value.json"})
