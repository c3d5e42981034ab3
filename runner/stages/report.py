"""report: render the run's evidence pack (runner/reports/pack.py) from the other stages' artifacts."""
from __future__ import annotations

from runner.reports import pack
from runner.stage import Context, Result

SECTIONS = ("report", "name", "loadtest")
INPUTS = pack.READS
TOOLS = ("core",)


def run(ctx: Context) -> Result:
    path = pack.render(ctx.inputs, ctx.recipe, ctx.out, ctx.section("report")["charts"])
    arts = {"readme": path.name}
    if (ctx.out / "loss.png").exists():
        arts["loss_chart"] = "loss.png"
    return Result(metrics={"files": sorted(p.name for p in ctx.out.iterdir())}, artifacts=arts)
