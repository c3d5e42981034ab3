"""A light, bounded load driver: one process, one asyncio loop, the standard library only (no per-request
Python objects beyond a socket and a few timestamps), so the load generator takes little of the CPU the engine
needs. Open loop at a constant rate (requests start on schedule whether or not earlier ones finished, as
users arrive) or closed loop with N streams; every request is bounded in time, and the total in flight too.
Each request opens its own loopback connection (`Connection: close`) and reads the response to its end,
recording the status, the time to the first body byte and to the last."""
from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
from dataclasses import dataclass


@dataclass
class Sample:
    sent_at: float          # time.time() when the request was written
    status: int             # 0: no answer (connection refused, timeout)
    first_byte_s: float | None
    latency_s: float | None
    body: bytes = b""
    error: str | None = None
    index: int = 0          # which request of the run (its target is targets[index % len(targets)])


def request_bytes(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    """(host, port, the raw HTTP/1.1 POST) for a JSON body."""
    u = urllib.parse.urlparse(url)
    data = json.dumps(body).encode()
    head = [f"POST {u.path or '/'} HTTP/1.1", f"Host: {u.netloc}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", "Connection: close", *[f"{k}: {v}" for k, v in (headers or {}).items()]]
    return u.hostname or "127.0.0.1", u.port or 80, ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def one(host: str, port: int, raw: bytes, timeout_s: float, keep_body: bool = False) -> Sample:
    t0, wall = time.perf_counter(), time.time()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError) as e:
        return Sample(wall, 0, None, None, error=type(e).__name__)
    try:
        writer.write(raw)
        await writer.drain()
        deadline = t0 + timeout_s
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.01, deadline - time.perf_counter()))
        first = time.perf_counter() - t0
        status = int(head.split(b" ", 2)[1])
        chunks = []
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.perf_counter()))
            if not chunk:
                break
            if keep_body:
                chunks.append(chunk)
        return Sample(wall, status, first, time.perf_counter() - t0, b"".join(chunks))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        return Sample(wall, 0, None, None, error=type(e).__name__)
    finally:
        writer.close()


async def constant_rate(targets: list[tuple[str, int, bytes]], rate: float, count: int, timeout_s: float = 30,
                        max_outstanding: int = 512) -> list[Sample]:
    """`count` requests, one every 1/rate s (cycling through `targets`), at most `max_outstanding` open."""
    gate = asyncio.Semaphore(max_outstanding)
    start = time.perf_counter()

    async def at(i: int) -> Sample:
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        async with gate:
            host, port, raw = targets[i % len(targets)]
            return await one(host, port, raw, timeout_s)

    return list(await asyncio.gather(*(at(i) for i in range(count))))


async def streams(targets: list[tuple[str, int, bytes]], n: int, timeout_s: float = 60) -> list[Sample]:
    """`n` requests started at once (e.g. n concurrent streams)."""
    return list(await asyncio.gather(*(one(*targets[i % len(targets)], timeout_s) for i in range(n))))


async def closed_loop(targets: list[tuple[str, int, bytes]], streams: int, count: int, max_seconds: float,
                      timeout_s: float = 120, keep_body: bool = True) -> list[Sample]:
    """`streams` clients, each sending its next request when its last one is answered (cycling through
    `targets`), until `count` requests were sent or `max_seconds` passed (requests in flight then finish)."""
    out: list[Sample] = []
    sent = 0
    stop_at = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal sent
        while sent < count and time.perf_counter() < stop_at:
            i = sent
            sent += 1
            sample = await one(*targets[i % len(targets)], timeout_s, keep_body)
            sample.index = i
            out.append(sample)

    await asyncio.gather(*(client() for _ in range(streams)))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m runner.serving.async_driver SPEC OUT`: SPEC is JSON {"targets": [{"url", "body"}], "streams",
    "count", "max_seconds", "timeout_s"}; an Authorization header comes from $FORGE_DRIVER_AUTH (never a file);
    OUT gets one JSON line per request: index, sent_at, status, first_byte_s, latency_s, usage (from a JSON
    answer) and, with "keep_responses", the JSON response itself."""
    import os
    import sys
    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(open(spec_path).read())
    auth = os.environ.get("FORGE_DRIVER_AUTH")
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    targets = [request_bytes(t["url"], t["body"], headers) for t in spec["targets"]]
    samples = asyncio.run(closed_loop(targets, spec["streams"], spec["count"], spec["max_seconds"],
                                      spec.get("timeout_s", 120)))
    with open(out_path, "w") as f:
        for x in samples:
            try:
                response = json.loads(x.body) if x.body else None
            except ValueError:
                response = None
            # a 502 from the task route says what its failed generations cost
            usage = response.get("usage") if x.status in (200, 502) and isinstance(response, dict) else None
            row = {"index": x.index, "sent_at": round(x.sent_at, 4), "status": x.status, "first_byte_s": x.first_byte_s,
                   "latency_s": x.latency_s, "usage": usage, "error": x.error}
            if spec.get("keep_responses"):
                row["response"] = response
            f.write(json.dumps(row) + "\n")
    return 0


def quantiles(values: list[float], qs=(0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """Nearest-rank quantiles of the values (None when there are none)."""
    v = sorted(values)
    return {f"p{round(q * 100)}": (v[max(0, math.ceil(len(v) * q) - 1)] if v else None) for q in qs}


if __name__ == "__main__":
    raise SystemExit(main())
