"""Outbound-connection check for the tests: run a command under `strace -f -e trace=connect` (every process it
starts, native tools included) and list every connect() whose address is not loopback. A DNS lookup shows up
too: the resolver connects to its name server."""
from __future__ import annotations

import ipaddress
import re
import shutil
from pathlib import Path

ADDRESS = re.compile(r'sa_family=(AF_INET6?)\b.*?(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')


def traced(cmd: list, trace: Path) -> list[str]:
    """`cmd` wrapped so that each connect() of it and its children is written to `trace`."""
    if not shutil.which("strace"):
        raise RuntimeError("the egress check needs strace (apt-get install strace)")
    return ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-e", "signal=none", "-o", str(trace),
            *map(str, cmd)]


def outbound(trace: Path) -> list[str]:
    """The trace lines that connect (or try to) anywhere but this machine's loopback."""
    bad = []
    for line in trace.read_text(errors="replace").splitlines():
        m = ADDRESS.search(line)
        if not m:
            continue  # AF_UNIX, AF_NETLINK, AF_UNSPEC (a UDP socket being disconnected), a resumed call
        addr = ipaddress.ip_address(m.group(2) or m.group(3))
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if not addr.is_loopback:
            bad.append(line.strip())
    return bad
