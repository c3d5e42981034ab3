"""A fake stage reading the first one's artifact; crashes when its section says so."""
import json
import os

from runner.stage import Result

SECTIONS = ("second",)
INPUTS = ("first",)


def run(ctx):
    if ctx.section("second").get("crash"):
        (ctx.out / "partial.txt").write_text("half-written")
        raise RuntimeError("second stage crashed on purpose")
    upstream = json.loads(ctx.inputs["first"].path("value").read_text())
    with open(os.environ["FAKE_COUNTER"], "a") as f:
        f.write("second\n")
    (ctx.out / "sum.txt").write_text(str(upstream["value"] + ctx.section("second")["add"]))
    return Result(metrics={"sum": upstream["value"] + ctx.section("second")["add"]}, artifacts={"sum": "sum.txt"})
