"""Upstream selection for the gateway: a circuit breaker per upstream and least-outstanding-requests routing
across the primary replicas, with the fallback models behind them (each for the routes it serves). Pure Python (no web framework), so it is
unit-tested without a server."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class CircuitBreaker:
    """closed -> open after `threshold` consecutive failures; open -> half-open after `reset_s`; one trial
    request in half-open closes it on success or re-opens it on failure."""
    threshold: int = 3
    reset_s: float = 10.0
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False
    clock: callable = field(default=time.monotonic, repr=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        s = self.state
        if s == "closed":
            return True
        if s == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.trial_in_flight = 0, None, False

    def failure(self) -> None:
        self.trial_in_flight = False
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()


@dataclass
class Upstream:
    name: str           # e.g. primary-0, fallback
    role: str           # primary | fallback
    url: str
    model: str          # the alias the engine serves
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outstanding: int = 0
    routes: tuple[str, ...] = ("chat", "task")  # which routes it serves (a fallback may do only one)
    weights: str | None = None   # the model file behind it (None: unknown); same file, same greedy answer

    def info(self) -> dict:
        return {"name": self.name, "role": self.role, "model": self.model, "circuit": self.breaker.state,
                "outstanding": self.outstanding, "routes": list(self.routes)}


class Router:
    """Order in which to try upstreams for one request: the primaries whose circuit lets a request through,
    least outstanding first (ties by name), then the fallbacks."""

    def __init__(self, upstreams: list[Upstream]):
        self.upstreams = upstreams

    def by_role(self, role: str) -> list[Upstream]:
        return [u for u in self.upstreams if u.role == role]

    def candidates(self, roles: tuple[str, ...] = ("primary", "fallback"), route: str | None = None) -> list[Upstream]:
        """route: only upstreams that serve it (the breaker's half-open trial is not spent on the others)."""
        order = []
        for role in roles:
            ups = sorted((u for u in self.by_role(role) if route is None or route in u.routes),
                         key=lambda u: (u.outstanding, u.name))
            order += [u for u in ups if u.breaker.allow()]
        return order
