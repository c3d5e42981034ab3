"""Quality: served evaluation, statistics over lm-eval's per-sample logs, and the gates judged on them."""
