"""The gateway's engine client (runner/gateway/upstream.py) against a real loopback server that misbehaves on
purpose: kept-alive connections reused, a connection the engine closed without saying so, chunked answers,
nothing listening, no answer in time, an engine that dies mid-answer. Runs in the gateway venv (httptools)."""
import json
import subprocess

from runner import env

SCRIPT = r'''
import asyncio, json
from runner.gateway import upstream

accepted, seen = [], []

async def handle(reader, writer):
    accepted.append(1)
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        path = lines[0].split()[1]
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        body = await reader.readexactly(int(headers["content-length"]))
        seen.append((path, headers.get("x-request-id"), json.loads(body)))
        out = json.dumps({"path": path, "echo": json.loads(body)}).encode()
        if path == "/slow":
            await asyncio.sleep(5)
        if path == "/die":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
            await writer.drain()
            writer.close()
            return
        if path == "/chunked":
            half = len(out) // 2
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, out[:half], len(out) - half, out[half:]))
        else:
            writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (404 if path == "/missing" else 200, len(out), out))
        await writer.drain()
        if path == "/hangup":   # closes a kept-alive connection without saying so, as an idle timeout does
            writer.close()
            return

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = upstream.Pool(f"http://127.0.0.1:{port}")
    res = {}
    answers = [await pool.post("/v1/chat/completions", json.dumps({"n": i}).encode(), {"X-Request-Id": f"r{i}"})
               for i in range(3)]
    res["keep"] = [[(s, b.decode()) for s, b in answers], len(accepted), seen[:3]]
    s, b = await pool.post("/chunked", b'{"a": 1}')
    res["chunked"] = [s, b.decode()]
    res["missing"] = [(await pool.post("/missing", b"{}"))[0]]
    before = len(accepted)
    res["hangup"] = [(await pool.post("/hangup", b"{}"))[0]]
    await asyncio.sleep(0.1)   # the engine's close has arrived: the connection is known dead, a new one is made
    res["hangup"].append((await pool.post("/v1/chat/completions", b"{}"))[0])
    res["hangup"].append(len(accepted) - before)
    for path, timeout in (("/slow", 0.5), ("/die", 5)):
        try:
            await pool.post(path, b"{}", timeout_s=timeout)
            res[path] = "answered"
        except upstream.UpstreamError as e:
            res[path] = [type(e).__name__, e.kind]
    res["after"] = (await pool.post("/v1/chat/completions", b"{}"))[0]   # the pool still works
    srv.close()
    await srv.wait_closed()
    try:
        await upstream.Pool(f"http://127.0.0.1:{port}").post("/x", b"{}")
        res["refused"] = "answered"
    except upstream.UpstreamError as e:
        res["refused"] = [type(e).__name__, e.kind]
    pool.close()
    print(json.dumps(res))

asyncio.run(main())
'''


def test_engine_client_reuses_connections_and_reports_each_failure_kind():
    r = subprocess.run([env.venv("gateway").python, "-c", SCRIPT], cwd=env.REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(env.REPO)}, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    answers, connections, seen = res["keep"]
    assert [(s, json.loads(b)) for s, b in answers] == [
        (200, {"path": "/v1/chat/completions", "echo": {"n": i}}) for i in range(3)]
    assert connections == 1                                              # one kept-alive connection for all three
    assert seen == [["/v1/chat/completions", f"r{i}", {"n": i}] for i in range(3)]   # headers and body as sent
    assert res["chunked"][0] == 200 and json.loads(res["chunked"][1]) == {"path": "/chunked", "echo": {"a": 1}}
    assert res["missing"][0] == 404                                      # a 4xx is an answer, not a failure
    assert res["hangup"] == [200, 200, 1]                                # a closed connection is not reused
    assert res["/slow"] == ["TimedOut", "timeout"]
    assert res["/die"] == ["Broken", "transport"]
    assert res["after"] == 200
    assert res["refused"] == ["ConnectFailed", "connect"]
