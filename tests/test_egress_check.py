"""The egress check the end-to-end run is held to (tests/egress.py) sees a real connect attempt, from a child
process too, and lets loopback through."""
import socket
import subprocess
import sys
import threading

from tests import egress

ATTEMPT = """
import socket, subprocess, sys
s = socket.socket(); s.settimeout(0.3)
try: s.connect(("192.0.2.1", 9))   # TEST-NET-1: never routed; the attempt is what counts
except OSError: pass
subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
                "s.connect(('2001:db8::1', 53))"])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.close()
"""


def test_outbound_attempts_are_caught_and_loopback_is_not(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True).start()
    trace = tmp_path / "trace"
    cmd = egress.traced([sys.executable, "-c", ATTEMPT, listener.getsockname()[1]], trace)
    subprocess.run(cmd, check=True, timeout=60)
    listener.close()
    bad = egress.outbound(trace)
    assert len(bad) == 2 and '"192.0.2.1"' in bad[0] and '"2001:db8::1"' in bad[1]
    assert '"127.0.0.1"' in trace.read_text()
