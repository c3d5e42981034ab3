"""OpenAI-style upstreams for the gateway tests, each a real HTTP server on loopback: deterministic where the tiny
model is too fast (to fill a queue) or too random (to pass a task's contract)."""
import contextlib
import http.server
import json
import threading

VALID_INVOICE = {"invoice_number": "INV-1", "invoice_date": "2024-01-02", "due_date": "2024-02-01",
                 "seller": "Acme", "buyer": "Beta", "currency": "EUR", "subtotal": 10.0, "tax": 2.0, "total": 12.0}


class ChatEngine(http.server.BaseHTTPRequestHandler):
    """Answers every POST as llama-server's /v1/chat/completions does, with `answer(request)` as the content."""

    def answer(self, request: dict) -> str:
        return "ok"

    def do_POST(self):
        content = self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running(handler):
    """The handler served on a free loopback port until the block ends; yields its base URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
