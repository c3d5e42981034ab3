"""Commands: validate, run, iterate, status, report, compare, serve, replay, test (see the justfile)."""
from __future__ import annotations

import argparse
import json
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
    extra = {}
    if a.capture:
        extra["capture"] = {"path": str(Path(a.capture).resolve()), "share": a.capture_share}
    try:
        with contextlib.ExitStack() as stack:
            if a.shadow:   # the candidate's deployed model on its own engine; the gateway mirrors to it
                from runner import manifest
                cand_dir = manifest.find_run(a.shadow)
                cand = deploy.load(cand_dir / "stages" / "serve" / "serving.json")
                cand = {**cand, "replicas": 1, "fallbacks": [], "fallback": None, "cheap": None, "gateway": None,
                        "threads": a.shadow_threads or cand["threads"]}
                eps = stack.enter_context(deploy.start(cand, logs / "shadow"))
                extra["shadow"] = {"url": eps[0].url, "model": eps[0].model, "name": cand_dir.name,
                                   "share": a.shadow_share, "max_in_flight": a.shadow_max_in_flight,
                                   "log": str(logs / "shadow.jsonl")}
                print(f"shadow  {eps[0].url}  ({cand_dir.name}, {cand.get('model_type')}: {a.shadow_share:.0%} of task "
                      f"requests mirrored, at most {a.shadow_max_in_flight} at once; log: {logs / 'shadow.jsonl'})")
            dep = stack.enter_context(deploy.up(serving, logs, api_key=key, port=a.port or gw.get("port"),
                                                gateway_extra=extra))
            for e in dep.endpoints:
                print(f"engine  {e.role:<8} {e.url}  ({e.model}, ready in {e.ready_s:.1f}s)")
            if dep.gateway_url:
                route = (serving.get("task") or {}).get("route")
                print(f"gateway {dep.gateway_url}  (POST /v1/chat/completions, "
                      + (f"POST {route}, " if route else "") + f"/readyz, /metrics); logs: {logs}")
            if a.capture:
                print(f"capture {a.capture}  ({a.capture_share:.0%} of task requests, documents redacted by the "
                      "output policy; `just replay` reads it)")
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


def cmd_replay(a) -> int:
    """Compare a candidate with production on captured traffic (sent now to the candidate's deployment) or on a
    shadow log (already mirrored by the gateway); write replay.md into the candidate run's evidence pack."""
    import shutil
    import time

    from runner import manifest, pipeline, replay
    from runner.reports import replay as page
    from runner.serving import deploy
    from runner.stage import StageError
    r = _load_or_exit(a.recipe)
    task = replay.task_of(r.data)
    if bool(a.log) == bool(a.shadow_log):
        print("replay: give exactly one of --log CAPTURE (with --candidate RUN) or --shadow-log FILE", file=sys.stderr)
        return 2
    cand_dir = manifest.find_run(a.candidate) if a.candidate else None
    source = Path(a.shadow_log or a.log)
    if not source.is_file():
        print(f"replay: no such file: {source}", file=sys.stderr)
        return 2
    lines = replay.read_log(source)
    if not lines:
        print(f"replay: {source} holds no requests", file=sys.stderr)
        return 2
    if a.shadow_log:
        pairs = replay.pairs_from_shadow(lines[:a.limit] if a.limit else lines)
        meta = {"source": "shadow", "log": str(source), "candidate": a.candidate or pairs[0]["candidate"]["model"]}
    else:
        if not cand_dir:
            print("replay: --log needs --candidate RUN (the run whose deployment answers the captured requests)",
                  file=sys.stderr)
            return 2
        captured = [x for x in lines if x.get("document")][:a.limit or None]
        serving = deploy.load(cand_dir / "stages" / "serve" / "serving.json")
        logs = cand_dir / "logs" / ("replay-" + time.strftime("%Y%m%d-%H%M%S"))
        print(f"replay: {len(captured)} captured requests to {cand_dir.name}'s deployment (logs: {logs})")
        try:
            with deploy.up(serving, logs) as dep:
                answers = replay.send(dep.gateway_url, dep.api_key, serving["task"]["route"], captured,
                                      a.concurrency, a.timeout)
        except StageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        pairs = replay.pairs_from_capture(captured, answers, task.scorer, task.spec)
        redacted = [t for x in captured for t in x.get("redacted") or []]
        meta = {"source": "capture", "log": str(source), "candidate": cand_dir.name,
                "redacted_documents": sum(1 for x in captured if x.get("redacted")),
                "redacted_types": {t: redacted.count(t) for t in sorted(set(redacted))},
                "candidate_model": f"{serving.get('model_type')} of {serving['primary']['gguf'].rsplit('/', 1)[-1]}"}
    cached_data = None if cand_dir else pipeline.cached_stage(r.data, "data")
    data_dir = cand_dir / "stages" / "data" if cand_dir else cached_data.dir if cached_data else None
    gold = replay.gold_by_hash([data_dir / f"{s}.jsonl" for s in ("train", "eval", "test", "ood")]) if data_dir else {}
    result = replay.compare(pairs, task, gold, {"min_agreement": a.min_agreement, "max_drop": a.max_drop})
    out = (cand_dir / "report") if cand_dir else (env.runs_root() / r.name / ("replay-" + time.strftime("%Y%m%d-%H%M%S")))
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.md").write_text(page.render(result, meta))
    (out / "replay.json").write_text(json.dumps({"meta": meta, **result}, indent=1, ensure_ascii=False) + "\n")
    published = env.reports_root() / cand_dir.parent.name / cand_dir.name if cand_dir else None
    if cand_dir:   # the pack's README links the page: re-render it, and the published copy with it
        from runner.reports import pack
        pack.render_run(cand_dir)
        if published and published.is_dir():
            shutil.copytree(cand_dir / "report", published, dirs_exist_ok=True)
    ag = result["agreement"]
    print(f"replay: {result['requests']} requests, agreement {ag['agree']}/{ag['n']}, gate "
          f"{'passed' if result['gate']['passed'] else 'FAILED'}: {out / 'replay.md'}"
          + (f" (and {published / 'replay.md'})" if published and published.is_dir() else ""))
    return 3 if a.fail_on_gate and not result["gate"]["passed"] else 0


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
    sv.add_argument("--capture", metavar="FILE", help="write task requests (PII-redacted) and answers here for "
                                                     "`just replay --log FILE`")
    sv.add_argument("--capture-share", type=float, default=1.0, help="share of task requests captured")
    sv.add_argument("--shadow", metavar="RUN", help="mirror task requests to this run's deployed model (shadow mode: "
                                                    "never answered to the client); `just replay --shadow-log`")
    sv.add_argument("--shadow-share", type=float, default=0.1, help="share of task requests mirrored")
    sv.add_argument("--shadow-max-in-flight", type=int, default=1, help="mirrors at once; more are skipped")
    sv.add_argument("--shadow-threads", type=int, default=None, help="the candidate engine's threads")
    sv.set_defaults(fn=cmd_serve)
    rp = sub.add_parser("replay", help="a candidate run against production on captured or shadowed traffic")
    rp.add_argument("recipe")
    rp.add_argument("--log", help="a capture file the gateway wrote (serve.capture)")
    rp.add_argument("--candidate", help="the run (id or folder) whose deployment answers the captured requests; "
                                        "its evidence pack gets replay.md")
    rp.add_argument("--shadow-log", help="a shadow log the gateway wrote (serve.shadow): compare, send nothing")
    rp.add_argument("--limit", type=int, default=0, help="at most this many requests (0: all)")
    rp.add_argument("--concurrency", type=int, default=4)
    rp.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    rp.add_argument("--min-agreement", type=float, default=0.8, help="gate: the share of answers that must agree")
    rp.add_argument("--max-drop", type=float, default=0.02, help="gate: the task metric's allowed drop (labelled "
                                                                 "requests; the interval's lower bound)")
    rp.add_argument("--fail-on-gate", action="store_true", help="exit 3 when the gate fails")
    rp.set_defaults(fn=cmd_replay)
    t = sub.add_parser("test", help="run the test suite (pytest)")
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_test)
    a = ap.parse_args(argv)
    return a.fn(a)
