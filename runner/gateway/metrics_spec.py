"""The gateway's Prometheus histogram buckets, in one place: the gateway observes into them and the generated
alerting rules (runner/adapters/prometheus.py) are unit-tested against them. Stdlib only."""

LATENCY_BUCKETS = (.05, .1, .25, .5, 1, 2, 4, 8, 15, 30, 60, 120)
TTFT_BUCKETS = (.05, .1, .25, .5, 1, 2, 4, 8, 15, 30)
