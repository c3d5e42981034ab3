"""Commands: validate, run, iterate, status, report, compare, serve, test (see the justfile)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from runner import recipe as recipes
from runner import env
from runner.env import REPO


def cmd_validate(a) -> int:
    bad = 0
    for path in a.recipes:
        try:
            r = recipes.load(path)
        except recipes.RecipeError as e:
            bad += 1
            print(f"INVALID {path}", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
            continue
        print(f"ok      {path}  (recipe {r.name}, hash {r.hash[:12]})")
    return 1 if bad else 0


def _load_or_exit(path: str) -> recipes.Recipe:
    try:
        return recipes.load(path)
    except recipes.RecipeError as e:
        print(f"INVALID {path}", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(2)


def _sigterm_as_interrupt(*_):
    raise KeyboardInterrupt  # a killed run still records its stages as interrupted


def cmd_run(a) -> int:
    import signal

    from runner import pipeline
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    r = _load_or_exit(a.recipe)
    try:
        pipeline.execute(r, only=a.only, start=a.start, force=a.force, until=a.until)
    except pipeline.RunFailed as e:
        print(f"\nrun {e.status}: {e}", file=sys.stderr)
        return 3 if e.status == "gated" else 1
    return 0


def cmd_iterate(a) -> int:
    """The recipe's run with its iterate section on: data and train (cached when unchanged), then the loop; the
    pack (iteration.md and what the run has) is published like a run's."""
    import signal

    from runner import pipeline
    from runner.reports import pack
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    r = _load_or_exit(a.recipe)
    r.data["iterate"]["enabled"] = True
    try:
        run_dir = pipeline.execute(r, stages=("data", "train", "iterate"))
    except pipeline.RunFailed as e:
        print(f"\nrun {e.status}: {e}", file=sys.stderr)
        return 3 if e.status == "gated" else 1
    rcfg = r.data["report"]
    if rcfg.get("publish"):
        # under reports/iterations/<recipe>/: the recipe's own packs (report.keep) stay as they are
        print(f"evidence pack: {pack.publish(run_dir, env.reports_root() / 'iterations', rcfg['keep'])}")
    return 0


def cmd_status(a) -> int:
    from runner import status
    print(status.render(status.check(_load_or_exit(a.recipe))))
    return 0


def cmd_report(a) -> int:
    from runner import manifest
    from runner.reports import pack
    run_dir = manifest.find_run(a.run)
    out = pack.render_run(run_dir)
    print(f"report: {out}")
    return 0


def cmd_compare(a) -> int:
    from runner.reports import compare
    text, failed = compare.render(a.run_a, a.run_b, iters=a.iters)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
        print(f"comparison: {a.out}")
    else:
        print(text)
    return 3 if failed and a.fail_on_gate else 0


def cmd_serve(a) -> int:
    """Start the deployment a recipe's last serve stage described (engines + gateway) and keep it up until
    Ctrl-C. API keys come from the gateway's api_keys_env; without one a key is made up and printed."""
    import os
    import secrets
    import signal
    import time

    import contextlib

    from runner import pipeline
    from runner.serving import deploy, monitoring
    from runner.stage import StageError
    r = _load_or_exit(a.recipe)
    out = pipeline.cached_stage(r.data, "serve")
    if not out:
        print(f"no serve stage output for {a.recipe} at its current key: run `just run {a.recipe}` first "
              f"(or `--until serve`)", file=sys.stderr)
        return 1
    serving = deploy.load(out.path("serving"))
    gw = serving.get("gateway") or {}
    key = os.environ.get(gw.get("api_keys_env", "FORGE_API_KEYS"), "").split(",")[0].strip() or None
    if gw and not key:
        key = secrets.token_urlsafe(24)
        print(f"no ${gw.get('api_keys_env', 'FORGE_API_KEYS')} set: using a key made up for this session: {key}")
    logs = env.runs_root() / r.name / ("serve-" + time.strftime("%Y%m%d-%H%M%S"))
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        with deploy.up(serving, logs, api_key=key, port=a.port or gw.get("port")) as dep, \
                contextlib.ExitStack() as stack:
            for e in dep.endpoints:
                print(f"engine  {e.role:<8} {e.url}  ({e.model}, ready in {e.ready_s:.1f}s)")
            if dep.gateway_url:
                route = (serving.get("task") or {}).get("route")
                print(f"gateway {dep.gateway_url}  (POST /v1/chat/completions, "
                      + (f"POST {route}, " if route else "") + f"/readyz, /metrics); logs: {logs}")
            if a.monitor:
                mon = r.data["monitoring"]
                rules = monitoring.checked_rules(logs / "prometheus", r.data["loadtest"]["slo"], serving, mon)
                srv = stack.enter_context(monitoring.watching(dep, logs / "prometheus" / rules["rules_file"],
                                                              logs / "prometheus", mon["scrape_interval_s"],
                                                              port=mon["port"]))
                print(f"prometheus {srv.url}  ({len(rules['alerts'])} alerts from the SLO, checked and unit-tested "
                      f"by promtool: {logs / 'prometheus' / rules['rules_file']})")
            print("serving; engines that exit are restarted (with backoff); Ctrl-C stops everything")
            seen = 0
            while True:
                time.sleep(1)
                events = dep.restarts()
                for ev in events[seen:]:
                    print(f"engine  {ev['engine']} exited (code {ev['exit_code']}): " +
                          (f"restarted, serving again after {ev['recovered_s']} s" if "recovered_s" in ev
                           else f"restart failed: {ev.get('error')}"), flush=True)
                seen = len(events)
    except KeyboardInterrupt:
        print("stopped")
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_test(a) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *a.args], cwd=REPO)


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv[:1] == ["test"]:  # everything after `test` is pytest's, options first included (`just test -x -q`)
        return subprocess.call([sys.executable, "-m", "pytest", *argv[1:]], cwd=REPO)
    ap = argparse.ArgumentParser(prog="forge", description="Recipe-driven fine-tune -> eval -> quantize -> serve lifecycle.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate recipes against schemas/")
    v.add_argument("recipes", nargs="+")
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("run", help="run a recipe's lifecycle")
    r.add_argument("recipe")
    r.add_argument("--only", metavar="STAGE", help="run just this stage (its inputs must be cached)")
    r.add_argument("--from", dest="start", metavar="STAGE", help="re-run this stage and everything after it")
    r.add_argument("--until", metavar="STAGE", help="stop after this stage")
    r.add_argument("--force", action="store_true", help="ignore the cache")
    r.set_defaults(fn=cmd_run)
    it = sub.add_parser("iterate", help="tuned-v2 from tuned's failures: mine a pool, retrain, judge, keep or not")
    it.add_argument("recipe")
    it.set_defaults(fn=cmd_iterate)
    st = sub.add_parser("status", help="per stage: cached, or stale and which recipe section, input or file changed")
    st.add_argument("recipe")
    st.set_defaults(fn=cmd_status)
    rep = sub.add_parser("report", help="re-render a run's report from its stored artifacts")
    rep.add_argument("run", help="run folder or run id")
    rep.set_defaults(fn=cmd_report)
    c = sub.add_parser("compare", help="markdown diff of two runs: config, data, quality with CIs, gates, performance")
    c.add_argument("run_a", help="run folder, run id or evidence-pack folder (the 'before')")
    c.add_argument("run_b", help="the 'after'")
    c.add_argument("--out", help="write the markdown here (default: print it)")
    c.add_argument("--iters", type=int, default=1000, help="paired bootstrap resamples")
    c.add_argument("--fail-on-gate", action="store_true", help="exit 3 when run B failed a gate")
    c.set_defaults(fn=cmd_compare)
    sv = sub.add_parser("serve", help="start a recipe's deployment (engines + gateway) in the foreground")
    sv.add_argument("recipe")
    sv.add_argument("--port", type=int, default=None, help="gateway port (default: serve.gateway.port)")
    sv.add_argument("--monitor", action="store_true",
                    help="also start Prometheus (monitoring.port) scraping the gateway and engines, with the "
                         "recipe's alerting rules")
    sv.set_defaults(fn=cmd_serve)
    t = sub.add_parser("test", help="run the test suite (pytest)")
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_test)
    a = ap.parse_args(argv)
    return a.fn(a)
