"""A fake stage at the end of the chain; its gate can fail."""
import os

from runner.stage import Result

SECTIONS = ("third",)
INPUTS = ("second",)


def run(ctx):
    total = int(ctx.inputs["second"].path("sum").read_text())
    with open(os.environ["FAKE_COUNTER"], "a") as f:
        f.write("third\n")
    (ctx.out / "out.txt").write_text(str(total * 2))
    gated = total * 2 < ctx.section("third")["min"]
    return Result(metrics={"double": total * 2, "gate_summary": f"double {total * 2} < min {ctx.section('third')['min']}"},
                  artifacts={"out": "out.txt"}, status="gated" if gated else "ok")
