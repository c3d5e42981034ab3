"""perf_cost.md and its plots, from the loadtest stage's measurements only: throughput and latency per level,
the SLO ceiling, the bottleneck with its evidence, the gateway's overhead, the before/after optimization, the
cost per 1M output tokens, and the fault drills."""
from __future__ import annotations

from pathlib import Path

from runner.reports import fmt
from runner.serving.perf_analysis import VERDICTS


def _ms(v_s) -> str:
    return "–" if v_s is None else f"{v_s * 1000:.0f}"


def chart(metrics: dict, out: Path) -> str | None:
    rows, direct = metrics["levels"], metrics.get("direct_levels")
    if not rows:
        return None
    path = out / "perf_cost.png"
    with fmt.figure(path, 1, 4, figsize=(17, 3.8), dpi=110) as (fig, axes):
        x = [r["streams"] for r in rows]
        a, b, c, d = axes
        for series, label, style in ((rows, metrics["through"], "-o"), (direct, "direct", "--s")):
            if not series:
                continue
            if label == "direct" and metrics["through"] == "direct":
                continue
            xs = [r["streams"] for r in series]
            a.plot(xs, [r["output_tokens_per_s"] or 0 for r in series], style, label=f"{label}: output tok/s")
            for q, col in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
                b.plot(xs, [r["latency_s"].get(q) for r in series], style, color=col, label=f"{label} {q}",
                       alpha=1 if label != "direct" else 0.5)
                c.plot(xs, [(r["ttft_ms"].get(q) or 0) / 1000 for r in series], style, color=col, label=f"{label} {q}",
                       alpha=1 if label != "direct" else 0.5)
        slo = metrics["slo"]
        b.axhline(slo["p99_latency_s"], color="tab:red", lw=0.8, ls=":", label="SLO p99")
        c.axhline(slo["p95_ttft_s"], color="tab:orange", lw=0.8, ls=":", label="SLO p95 TTFT")
        a.set_title("throughput")
        b.set_title("request latency (s)")
        c.set_title("time to first token (s)")
        for ax in (a, b, c):
            ax.set_xlabel("concurrent streams")
            ax.set_xticks(x)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        # resources per level
        names = sorted({n for r in rows for n, v in r.get("resources", {}).items()
                        if isinstance(v, dict) and "cpu_pct" in v})
        width = 0.8 / max(1, len(names) + 1)
        for i, n in enumerate(names):
            d.bar([j + i * width for j in range(len(rows))],
                  [r.get("resources", {}).get(n, {}).get("cpu_pct", {}).get("mean", 0) for r in rows], width, label=n)
        d.bar([j + len(names) * width for j in range(len(rows))],
              [r.get("bottleneck", {}).get("other_cpu_pct", 0) for r in rows], width, label="load generator + rest")
        d.axhline(100 * (metrics.get("cores") or 1), color="k", lw=0.8, ls=":", label="all cores")
        d.set_xticks([j + width * len(names) / 2 for j in range(len(rows))], [str(s) for s in x])
        d.set_xlabel("concurrent streams")
        d.set_title("CPU % (100 = one core)")
        d.legend(fontsize=7)
    return path.name


def _level_table(rows: list[dict], price: float) -> list[str]:
    L = ["| streams | req/s | output tok/s | latency p50 / p95 / p99 (s) | TTFT p50 / p95 / p99 (ms) | ITL p50 (ms) "
         "| errors | SLO | $ per 1M output tokens | prompt tokens from cache |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat, tt = r["latency_s"], r["ttft_ms"]
        L.append(f"| {r['streams']} | {fmt.num(r['requests_per_s'], 2)} | {fmt.num(r['output_tokens_per_s'], 1)} | "
                 f"{fmt.num(lat.get('p50'), 2)} / {fmt.num(lat.get('p95'), 2)} / {fmt.num(lat.get('p99'), 2)} | "
                 f"{fmt.num(tt.get('p50'), 0)} / {fmt.num(tt.get('p95'), 0)} / {fmt.num(tt.get('p99'), 0)} | "
                 f"{fmt.num(r['itl_ms'].get('p50'), 1)} | {r['requests']['errored'] or 0}/{r['requests']['total'] or 0} | "
                 f"{'meets' if r['meets_slo'] else '**misses**'} | {fmt.num(r.get('usd_per_1m_output_tokens'), 3)} | "
                 f"{fmt.num(r.get('cached_prompt_ratio'), 2)} |")
    return L


def _resources_table(rows: list[dict]) -> list[str]:
    L = ["| streams | machine CPU % | engine CPU % | gateway CPU % | load gen + rest % | engine RSS MB (max) "
         "| gateway RSS MB (max) | slots busy | deferred | gateway queue | bottleneck |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, res = r.get("bottleneck", {}), r.get("resources", {})
        rss = sum((res.get(n, {}).get("rss_mb") or {}).get("max", 0) for n in res if n.startswith("primary-"))
        grss = (res.get("gateway", {}).get("rss_mb") or {}).get("max")
        L.append(f"| {r['streams']} | {fmt.num(b.get('machine_cpu_pct'), 0)} | {fmt.num(b.get('engine_cpu_pct'), 0)} | "
                 f"{fmt.num(b.get('gateway_cpu_pct'), 0)} | {fmt.num(b.get('other_cpu_pct'), 0)} | {fmt.num(float(rss), 0)} | "
                 f"{fmt.num(grss, 0)} | {fmt.num(b.get('slots_busy'), 1)} | {fmt.num(b.get('requests_deferred'), 1)} | "
                 f"{fmt.num(b.get('gateway_queued'), 1)} | {b.get('verdict', '–')} |")
    return L


def _fresh_engines(ladders: dict) -> list[str]:
    """What each ladder's primary engine had processed when its ladder began and ended (its own counters)."""
    if not ladders:
        return []
    L = ["| ladder | primary pid | prompt tokens at start (cached) | at end (cached) | generated at start / end |",
         "|---|---|---|---|---|"]
    for name, e in ladders.items():
        a, z = e["at_start"].get("primary-0", {}), e["at_end"].get("primary-0", {})
        L.append(f"| {name} | {a.get('pid')} | {fmt.num(a.get('prompt_tokens'), 0)} ({fmt.num(a.get('prompt_tokens_cached'), 0)})"
                 f" | {fmt.num(z.get('prompt_tokens'), 0)} ({fmt.num(z.get('prompt_tokens_cached'), 0)}) | "
                 f"{fmt.num(a.get('tokens_predicted'), 0)} / {fmt.num(z.get('tokens_predicted'), 0)} |")
    return L + ["", "A fresh engine starts each ladder having processed only its readiness probe.", ""]


def render(metrics: dict, chart_name: str | None) -> str:
    rows, slo, price = metrics["levels"], metrics["slo"], metrics["price_per_hour_usd"]
    s = metrics.get("serving", {})
    ceiling = metrics["concurrency_ceiling"]
    L = ["# Performance and cost", "",
         f"- deployment: {s.get('engine')} x{s.get('replicas')} (`--parallel {s.get('parallel')}`, "
         f"{s.get('threads')} threads, model `{metrics.get('model_type')}`) behind the gateway; "
         f"{metrics.get('cores')} CPU cores shared with the load generator (GuideLLM).",
         f"- SLO: p99 latency ≤ {slo['p99_latency_s']} s, p95 TTFT ≤ {slo['p95_ttft_s']} s, "
         f"errors ≤ {slo['max_error_rate']:.0%}; price ${price}/hour.", ""]
    L += ["## Answer", "",
          f"- **Concurrency ceiling** (highest level meeting the SLO, through {metrics['through']}): "
          + (f"**{ceiling} concurrent stream{'s' if ceiling != 1 else ''}**, at "
             f"${fmt.num(metrics['usd_per_1m_output_tokens_at_ceiling'], 3)} per 1M output tokens."
             if ceiling is not None else "**none**: no level meets the SLO."),
          f"- **Throughput** peaks at {fmt.num(metrics['peak_output_tokens_per_s'], 1)} output tok/s at "
          f"{metrics['peak_at_streams']} streams; " +
          (f"it stops growing (< 10% per step) after {metrics['throughput_knee_streams']} streams."
           if metrics.get("throughput_knee_streams") else "it was still growing at the top of the ladder."),
          f"- **Bottleneck** at {metrics['bottleneck'].get('at_streams')} streams: "
          f"{VERDICTS.get(metrics['bottleneck'].get('verdict'), metrics['bottleneck'].get('verdict'))}."]
    for e in metrics["bottleneck"].get("evidence", []):
        L.append(f"  - {e}")
    tl = metrics.get("task_ladder")
    if tl:
        best, cal = tl.get("best_at_slo"), tl["calibration"]
        L.append(f"- **The task route** (`{tl['route']}`, test documents, the product's workload): " + (
            f"**{fmt.num(best['documents_per_s'], 2)} valid documents/s** within the latency SLO at {best['streams']} "
            f"stream(s) ({fmt.num(best['x_one_stream'], 2)}x one stream; {fmt.num(best['valid_share'], 3)} of requests "
            f"got an answer that passes the contract), ${fmt.num(best['usd_per_1k_documents'], 4)} per 1,000 valid "
            "documents" + (f"; the engine alone, the same batch in lockstep, finishes "
                           f"{fmt.num(best['engine_x_one'], 2)}x its one-sequence rate (llama-batched-bench)"
                           if best.get("engine_x_one") else "")
            if best else "**no level kept the latency SLO**")
            + ("; the full SLO, counting contract failures as errors, held at "
               + (", ".join(map(str, tl["meets_slo_streams"])) + " stream(s)" if tl.get("meets_slo_streams") else "no level"))
            + "; calibration: one stream decoded at "
            + (f"{cal['speed_vs_bench']:.0%} of llama-bench's speed"
               + (" (**contended**: below 80%, so these figures understate the machine)" if cal["contended"] else "")
               if cal.get("speed_vs_bench") is not None else "no calibration point")
            + " ([below](#the-task-route-the-products-workload)).")
    if metrics.get("routing"):
        L.append(f"- **Routing** (the cascade against each of its models alone, the same {metrics['routing']['documents']} "
                 f"test documents): {routing_verdict(metrics['routing'])} ([below](#routing-the-cascade-against-each-of-"
                 "its-models-alone)).")
    L.append("")
    if chart_name:
        L += [f"![throughput, latency, TTFT and CPU per level]({chart_name})", ""]
    L += [f"## Levels through the {metrics['through']}", ""] + _level_table(rows, price) + [""]
    cc = metrics.get("chat_calibration")
    if cc:
        L += [f"Calibration: at one stream a request took {fmt.num(cc['measured_p50_s'], 2)} s (median) where "
              f"llama-bench's speeds for the same model and threads predict {fmt.num(cc['predicted_s'], 2)} s "
              f"({fmt.num(cc['prompt_tokens'], 0)} uncached prompt tokens, {fmt.num(cc['answer_tokens'], 0)} answer "
              f"tokens): **{cc['speed_vs_bench']:.0%} of llama-bench's speed** through the stack and the load "
              "generator" + (f" (below {cc['min']:.0%}: **the measurement was contended**, something else held the "
                             "cores; these levels understate the machine)" if cc["contended"] else
                             f" (at least {cc['min']:.0%}: the generator's share of the cores cost little)") + ".", ""]
    L += ["## Resources per level (sampled every second with psutil and both /metrics endpoints)", ""]
    L += _resources_table(rows) + [""]
    if metrics.get("direct_levels"):
        L += ["## Gateway overhead (same run, straight to the primary engine)", ""]
        L += _level_table(metrics["direct_levels"], price) + [""]
        L += ["| streams | added latency p50 (ms) | added latency p95 (ms) | throughput gateway / direct |",
              "|---|---|---|---|"]
        for o in metrics["gateway_overhead"] or []:
            L.append(f"| {o['streams']} | {fmt.num(o['added_latency_p50_ms'], 1)} | {fmt.num(o['added_latency_p95_ms'], 1)} | "
                     f"{fmt.num(o['throughput_ratio'], 3)} |")
        L += ["", "Each ladder runs against a deployment started for it (cold prompt caches, the same seeded prompts); "
              "both share the machine with GuideLLM, so differences of a few percent are run-to-run noise on two "
              "cores.", ""]
    L += _fresh_engines(metrics.get("ladder_engines") or {})
    b = metrics.get("baseline")
    if b:
        L += [f"## Optimization, measured in this run: {b['label']} → the recipe's settings", "",
              f"Before: engine alone with {b['before_settings']}; after: {b.get('after', 'the direct ladder')} with "
              f"{b['after_settings']}. Same model, same prompts, same load.", "",
              "| streams | output tok/s before → after | gain | latency p95 (s) before → after | "
              "TTFT p95 (ms) before → after |", "|---|---|---|---|---|"]
        for c in b["comparison"]:
            bf, af = c["before"], c["after"]
            L.append(f"| {c['streams']} | {fmt.num(bf['output_tokens_per_s'], 1)} → {fmt.num(af['output_tokens_per_s'], 1)} | "
                     f"{fmt.num(c['throughput_gain'], 2)}x | {fmt.num(bf['latency_p95_s'], 2)} → {fmt.num(af['latency_p95_s'], 2)} | "
                     f"{fmt.num(bf['ttft_p95_ms'], 0)} → {fmt.num(af['ttft_p95_ms'], 0)} |")
        for r in b["levels"]:
            if r.get("bottleneck"):
                L.append("")
                L.append(f"Baseline at {r['streams']} streams: " + "; ".join(r["bottleneck"]["evidence"][:2]) + ".")
        L.append("")
    if metrics.get("vegeta"):
        L += ["## Constant-rate attacks on the task endpoint (vegeta)", "",
              "| rate req/s | achieved | throughput | latency p50 / p95 / p99 (s) | success | status codes |",
              "|---|---|---|---|---|---|"]
        for v in metrics["vegeta"]:
            lat = v["latency_s"]
            L.append(f"| {v['rate_per_s']:g} | {fmt.num(v['achieved_rate'], 2)} | {fmt.num(v['throughput_per_s'], 2)} | "
                     f"{fmt.num(lat['p50'], 2)} / {fmt.num(lat['p95'], 2)} / {fmt.num(lat['p99'], 2)} | {fmt.num(v['success_ratio'], 2)} | "
                     + ", ".join(f"{c}: {n}" for c, n in sorted(v["status_codes"].items())) + " |")
        L.append("")
    L += _task_ladder(metrics.get("task_ladder"), price)
    L += routing_section(metrics.get("routing"))
    L += _drills(metrics.get("drills"), metrics.get("engine_restarts") or [])
    L += _prometheus((metrics.get("monitoring") or {}).get("cross_check"))
    L += ["## How cost is controlled", "",
          "- Cost per 1M output tokens = price per hour / (output tok/s × 3600) × 1e6, per level above; it falls "
          "as concurrency rises until the throughput knee, then only latency grows.",
          "- The gateway's admission limit (max_in_flight + a bounded queue, 429 beyond) keeps the engine at its "
          "efficient operating point instead of letting queues grow without bound.",
          "- `max_tokens` is capped at the gateway, so one request cannot hold a slot until the context is full.",
          ""]
    return "\n".join(L)


def _task_ladder(tl: dict | None, price: float) -> list[str]:
    if not tl:
        return []
    cal = tl["calibration"]
    b = cal.get("bench") or {}
    L = ["## The task route: the product's workload", "",
         f"`POST {tl['route']}` with {tl['documents']} test-split documents (cycled), from the project's asyncio driver "
         "in a process of its own (closed loop: each stream sends its next document when its answer arrives), "
         "one level per concurrency, climbing while the latency SLO holds (p99 of every answer, refusals included). "
         "A document counts as valid when the gateway returned an answer that passed the task's contract (HTTP 200; "
         "502: no model's answer passed it); valid documents/s counts those. The limit is "
         f"one stream at llama-bench's speeds for " + (f"`{b['model']}`" if b.get("model") else "the deployed model")
         + f" on {b.get('threads', '?')} threads (prompt "
         f"{fmt.num(b.get('prompt_tokens_per_s'), 0)} tok/s, generation {fmt.num(b.get('gen_tokens_per_s'), 1)} tok/s), "
         "weighted by each level's own prompt/answer token mix; batching several streams can exceed it.", "",
         "| streams | requests | valid | valid documents/s | answers/s | latency p50 / p95 / p99 (s), valid answers | "
         "p99 rests on | p99 all answers (s) | prompt / answer tokens | speed vs llama-bench | x single-stream limit | "
         "engine alone, same batch: documents/s (x one) | answers/s vs it | "
         "$ per 1k documents | generator CPU | bottleneck | latency SLO | SLO with contract failures |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in tl["levels"]:
        lat = r["latency_s"]
        L.append(f"| {r['streams']} | {r['requests']} | {fmt.num(r['valid_share'], 3)} | {fmt.num(r['documents_per_s'], 3)} | "
                 f"{fmt.num(r.get('answers_per_s'), 3)} | "
                 f"{fmt.num(lat['p50'], 2)} / {fmt.num(lat['p95'], 2)} / {fmt.num(lat['p99'], 2)} | "
                 f"{r['latency_samples']} answers | {fmt.num(r.get('p99_all_answered_s'), 2)} | "
                 f"{fmt.num(r['prompt_tokens_mean'], 0)} / {fmt.num(r['completion_tokens_mean'], 0)} | "
                 f"{fmt.num(r.get('speed_vs_bench'), 2)} | {fmt.num(r.get('x_single_stream_limit'), 2)} | "
                 + (f"{fmt.num(r['engine_documents_per_s'], 3)} ({fmt.num(r.get('engine_x_one'), 2)}x) at "
                    f"{r['engine_batch']} | {fmt.num(r.get('x_engine'), 2)} | " if r.get("engine_documents_per_s")
                    else "– | – | ") +
                 f"{fmt.num(r['usd_per_1k_documents'], 4)} | {fmt.num((r['driver_cpu_share'] or 0) * 100, 1)}% | "
                 f"{(r.get('bottleneck') or {}).get('verdict', '–')} | {'meets' if r['latency_ok'] else '**misses**'} | "
                 f"{'meets' if r['meets_slo'] else '**misses**'} |")
    L += ["", "Speed vs llama-bench: per valid answer, the time llama-bench's speeds predict for its own prompt and "
          "answer tokens over its latency through the stack (median; an answer that needed the constrained retry "
          "took two generations). x single-stream limit: valid documents/s over what one stream at llama-bench's "
          "speeds would finish; answers that failed the contract cost generations and count for nothing."]
    L += _engine_ceiling(tl.get("engine"), tl.get("best_at_slo"))
    if cal.get("speed_vs_bench") is not None:
        L += ["", f"Calibration: one stream through the whole stack decoded at {cal['speed_vs_bench']:.0%} of "
              f"llama-bench's speed" + (f" (below {cal['min']:.0%}: **the measurement was contended**, something "
                                        "else held the cores)" if cal["contended"] else
                                        f" (at least {cal['min']:.0%}: the stack and the generator cost little)") + "."]
    rep = tl.get("best_repeated")
    if rep:
        lat = rep["latency_s"]
        L += ["", f"The best level ({rep['streams']} streams) ran {rep['runs']} times on the same deployment: valid "
              f"documents/s {', '.join(fmt.num(d, 3) for d in rep['documents_per_s'])} (spread "
              f"{fmt.num(rep['documents_per_s_spread'], 3)}: a gain smaller than that is noise); over all "
              f"{rep['requests']} requests, valid answers' latency p50 / p95 / p99 {fmt.num(lat['p50'], 2)} / "
              f"{fmt.num(lat['p95'], 2)} / {fmt.num(lat['p99'], 2)} s (p99 rests on {rep['latency_samples']} answers)."]
    if tl.get("stopped_by") == "max_streams" and tl["levels"]:
        L += ["", f"The ladder stopped at `loadtest.task_ladder.max_streams` ({tl['max_streams']}) with the latency "
              f"SLO still held at {tl['levels'][-1]['streams']} streams: the ceiling is at least that, not found "
              "(raise max_streams to climb further, at one more level's time)."]
    statuses = {}
    for r in tl["levels"]:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    L += ["", "Status codes over the ladder: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
          + " (502: no model produced an answer that passes the contract, after the constrained retries).", ""]
    return L


def _signed(d: dict | None, nd: int = 3) -> str:
    """A paired difference as +0.012 [-0.010, +0.031], p 0.28."""
    if not d or d.get("diff") is None:
        return "–"
    ci = f" [{d['low']:+.{nd}f}, {d['high']:+.{nd}f}]" if d.get("low") is not None else ""
    return f"{d['diff']:+.{nd}f}{ci}" + (f", p {d['p']:.2f}" if d.get("p") is not None else "")


def _significant(d: dict | None) -> int:
    """-1 / +1 when the paired interval lies wholly below / above zero, else 0."""
    if not d or d.get("low") is None:
        return 0
    return -1 if d["high"] < 0 else 1 if d["low"] > 0 else 0


def routing_verdict(r: dict) -> str:
    """The cascade against the deployed model alone, in one sentence, from the paired comparison."""
    v, ref = r["variants"], r["variants"][r["reference"]]
    c = v.get("cascade")
    if not c:
        return "the cascade was not measured"
    speed = (c["documents_per_s"] / ref["documents_per_s"]) if c["documents_per_s"] and ref["documents_per_s"] else None
    cost = (c["usd_per_1k_documents"] / ref["usd_per_1k_documents"]) \
        if c["usd_per_1k_documents"] and ref["usd_per_1k_documents"] else None
    head = (c.get("vs_" + r["reference"]) or {}).get(r["headline"])
    sig = _significant(head)
    side = {-1: "**significantly lower** than", 0: "not distinguishable from", 1: "**significantly higher** than"}
    spread = r.get("relative_spread")
    if cost is None:
        pays = ""
    elif spread is None or abs(cost - 1) <= spread:
        pays = ("; one pass each, " + (f"and the cost differs by less than the {spread:.0%} run-to-run spread the "
                                       "task ladder measured: no saving or loss is shown" if spread is not None else
                                       "no spread measured: the cost difference is not a claimed saving or loss"))
    elif cost >= 1:
        pays = "; it costs more per valid document than the deployed model alone, so on these cores it does not pay"
    else:
        pays = ("; it is cheaper per valid document" + (f" but loses {r['headline']}" if sig < 0 else
                                                          f" at no significant loss of {r['headline']}"))
    return (f"{r['labels']['cascade']} answered {fmt.num(speed, 2)}x the valid documents/s of "
            f"{r['labels'][r['reference']]} at {fmt.num(cost, 2)}x its cost per 1,000 valid documents "
            f"(p95 {fmt.num(c['latency_s']['p95'], 2)} s against {fmt.num(ref['latency_s']['p95'], 2)} s); its "
            f"{r['headline']} is {side[sig]} the deployed model's alone ({_signed(head)}, paired on "
            f"{r['documents']} documents){pays}")


def routing_section(r: dict | None) -> list[str]:
    if not r:
        return []
    names = r["metrics"]
    L = ["## Routing: the cascade against each of its models alone", "",
         f"Every one of {r['documents']} test documents once through `POST {r['route']}` of three deployments in "
         f"turn ({r['streams']} streams, closed loop, the project's driver, no fallback engines): each model alone "
         "on the whole machine, then the cascade as deployed (the cheap tier first; the gateway escalates to the "
         "deployed model when the cheap answer fails the task's contract or every cheap slot is busy). Every answer "
         "is scored against its gold, no answer as wrong; differences are paired on the same documents against "
         f"{r['labels'][r['reference']]} (95% bootstrap interval, p).", "",
         "| variant | valid answers | " + " | ".join(names) + " | valid documents/s | latency p50 / p95 / p99 (s) | "
         "$ per 1k valid documents | who answered |",
         "|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    for key, label in r["labels"].items():
        v = r["variants"][key]
        lat = v["latency_s"]
        who = ", ".join(f"{t} {n}" for t, n in (v.get("tiers") or {}).items())
        if v.get("escalations"):
            who += " (escalated: " + ", ".join(f"{k} {n}" for k, n in v["escalations"].items()) + ")"
        L.append(f"| {label} | {v['answered_valid']} / {v['documents']} | "
                 + " | ".join(fmt.num(v.get(m), 3) for m in names) + f" | {fmt.num(v['documents_per_s'], 3)} | "
                 f"{fmt.num(lat['p50'], 2)} / {fmt.num(lat['p95'], 2)} / {fmt.num(lat['p99'], 2)} | "
                 f"{fmt.num(v['usd_per_1k_documents'], 4)} | {who or '–'} |")
    L.append("")
    for key, label in r["labels"].items():
        diffs = r["variants"][key].get("vs_" + r["reference"])
        if diffs:
            L.append(f"- {label} − {r['labels'][r['reference']]}: "
                     + "; ".join(f"{m} {_signed(diffs.get(m))}" for m in names) + ".")
    verdict = routing_verdict(r)
    L += ["", verdict[0].upper() + verdict[1:] + ".", ""]
    return L


def _engine_ceiling(engine: dict | None, best: dict | None) -> list[str]:
    """What batching alone gives the deployed model on these cores, and where the task route's gain over one
    stream went."""
    if not engine:
        return []
    rows = sorted(engine["rows"], key=lambda e: e["sequences"])
    p, g = rows[0]["prompt_tokens"], rows[0]["gen_tokens"]
    L = ["", "Engine alone, same batch: `llama-batched-bench` on " + (f"`{engine['model']}`" if engine.get("model")
                                                                      else "the deployed model")
         + " after the ladder (nothing else "
         f"running), B sequences of {p} prompt + {g} answer tokens (the ladder's means) prefilled together, then "
         f"decoded together, B capped at the engine's {engine['slots']} slots; it finishes B documents in its time. "
         "It measures what batching alone gains on these cores for this model and shape. It is not a ceiling for "
         "the server: continuous batching puts one stream's decoding into another's prompt batch, where it costs "
         "little, so answers/s can exceed it; an answer that failed the contract took a second generation.", "",
         "| sequences | prefill s | decode s | prompt tok/s | decode tok/s | documents/s | x one sequence |",
         "|---|---|---|---|---|---|---|"]
    one = rows[0]["documents_per_s"] if rows[0]["sequences"] == 1 else None
    for e in rows:
        L.append(f"| {e['sequences']} | {fmt.num(e['prompt_s'], 2)} | {fmt.num(e['gen_s'], 2)} | "
                 f"{fmt.num(e['prompt_tokens_per_s'], 0)} | {fmt.num(e['gen_tokens_per_s'], 1)} | "
                 f"{fmt.num(e['documents_per_s'], 3)} | {fmt.num(e['documents_per_s'] / one, 2) if one else '–'}x |")
    if best and best.get("engine_x_one") is not None and best.get("x_one_stream") is not None:
        L += ["", f"At the best level the route gained {fmt.num(best['x_one_stream'], 2)}x over one stream in valid "
              f"documents/s; the engine alone gains {fmt.num(best['engine_x_one'], 2)}x from that batch in lockstep "
              f"(at most {fmt.num(engine['max_x_one'], 2)}x over the batches above). The gain over one stream comes "
              "from the batch: at a batch where the engine gains little, more streams only queue, so slots pay where "
              "the rows above grow, up to the latency SLO; the server's continuous batching can add to the lockstep "
              "gain."]
    return L


def _prometheus(cross: dict | None) -> list[str]:
    """The gateway ladder as a Prometheus server scraping the deployment saw it, beside the load generator."""
    if not cross:
        return []
    L = [f"## The same ladder seen by Prometheus (scraped every {cross['scrape_interval_s']:g} s)", "",
         f"Requests on the `{cross['route']}` route counted by the gateway's `forge_requests_total` between each "
         "level's start and end, latency quantiles estimated from its histogram buckets (interpolated inside a "
         "bucket, so coarse), and peaks of the gauges:", "",
         "| streams | requests (generator: sent / completed) | requests (Prometheus) | p50 s generator / Prometheus | "
         "p99 s generator / Prometheus | in flight peak | queued peak | engine slots busy peak |",
         "|---|---|---|---|---|---|---|---|"]
    for r in cross["levels"]:
        L.append(f"| {r['streams']} | {r['requests_generator']} / {r['requests_generator_completed']} | "
                 f"{r['requests_prometheus']} | {fmt.num(r['p50_s_generator'], 2)} / {fmt.num(r['p50_s_prometheus'], 2)} | "
                 f"{fmt.num(r['p99_s_generator'], 2)} / {fmt.num(r['p99_s_prometheus'], 2)} | "
                 f"{fmt.num(r['in_flight_peak'], 0)} | {fmt.num(r['queued_peak'], 0)} | "
                 f"{fmt.num(r['engine_slots_busy_peak'], 0)} |")
    seen = cross.get("alerts_seen") or []
    down = [t for t, up in (cross.get("targets_up") or {}).items() if not up]
    L += ["", "Alerts pending or firing during the ladder (the recipe's rules, evaluated by this Prometheus): "
          + (", ".join(f"`{a['alert']}` ({a['state']})" for a in seen) if seen else "none") + ". Targets down at "
          "the end: " + (", ".join(down) if down else "none") + ".", ""]
    return L


def _drills(drills: dict | None, restarts: list[dict]) -> list[str]:
    if not drills:
        return []
    L = ["## Fault drills (automated, against the live deployment)", ""]
    k = drills.get("kill_primary")
    if k and "skipped" not in k:
        rounds = k.get("rounds", 1)
        L += [f"- **Kill the primary engine under load** ({'passed' if k['passed'] else '**failed**'}"
              + (f", {rounds} kills, times are the slowest" if rounds > 1 else "") + "): "
              f"{k['requests']} requests from {k.get('workers', '?')} clients, {k['errors_after_kill']} errors after the kill; "
              f"{k['answered_by_fallback']} answered by the fallback model, the first "
              f"{fmt.num(k['first_fallback_answer_s'], 2)} s after the kill; the supervisor had the engine serving again "
              f"after {fmt.num(k['engine_restarted_s'], 2)} s; the primary answered through the gateway again after "
              f"{fmt.num(k['primary_answers_again_s'], 2)} s (its circuit half-opens after breaker.reset_s); circuit "
              f"afterwards: {k['circuit_after']}."]
    elif k:
        L += [f"- Kill the primary engine: skipped ({k['skipped']})."]
    o = drills.get("overload")
    if o:
        per = "; ".join(f"{r['sent']} sent → " + ", ".join(f"{n}× {s}" for s, n in sorted(r["statuses"].items()))
                        for r in o["bursts"])
        L += [f"- **Overload past the admission limit** ({'passed' if o['passed'] else '**failed**'}): capacity "
              f"{o['capacity']} (in flight + queue); {per}. Every 429 carried Retry-After: "
              f"{all(r['429_with_retry_after'] == r['statuses'].get('429', 0) for r in o['bursts'])}. Gateway RSS "
              f"{' → '.join(f'{v:.0f}' for v in o['gateway_rss_mb'])} MB (growth after the first burst "
              f"{o['rss_growth_after_first_burst_mb']} MB); healthy afterwards: {o['healthy_after']}."]
    m = drills.get("malformed")
    if m:
        bad = [r for r in m["requests"] if not r["passed"]]
        L += [f"- **Malformed requests** ({'passed' if m['passed'] else '**failed**'}): {len(m['requests'])} kinds, "
              f"statuses " + ", ".join(f"{r['request']} {r['status']}" for r in m["requests"]) +
              f"; {len(bad)} without a 4xx JSON error; afterwards /healthz {m['healthz_after']}, /readyz "
              f"{m['readyz_after']}, a good request {m['good_request_after']}."]
    if restarts:
        L += ["- Engine restarts recorded by the supervisor: " + "; ".join(
            f"{r['engine']} exit {r['exit_code']}, backoff {r['backoff_s']} s, "
            + (f"serving after {r['recovered_s']} s" if "recovered_s" in r else f"failed: {r.get('error')}")
            for r in restarts) + "."]
    return L + [""]


def write(page: fmt.Page) -> dict[str, str]:
    out, metrics = page.out, page.metrics
    name = chart(metrics, out)
    (out / "perf_cost.md").write_text(render(metrics, name) + "\n")
    arts = {"perf_cost": "perf_cost.md"}
    if name:
        arts["perf_cost_png"] = name
    return arts
