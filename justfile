# Every recipe below goes through `python3 -m runner`, which sets up what it needs on first use
# (venvs, llama.cpp tools, the base model, all in the user cache; see runner/setup.py).
set shell := ["bash", "-euo", "pipefail", "-c"]

export HF_HUB_OFFLINE := env_var_or_default("HF_HUB_OFFLINE", "1")
export AXOLOTL_DO_NOT_TRACK := "1"

# List the commands
default:
    @just --list

# Run a recipe: data, train, eval, quantize, serve, loadtest, report (--only/--from/--until STAGE, --force)
run recipe *flags:
    python3 -m runner run {{recipe}} {{flags}}

# tuned-v2 from tuned's failures: mine a generated pool, retrain from the same base, judge against tuned, keep or not
iterate recipe:
    python3 -m runner iterate {{recipe}}

# Per stage: cached, or stale and which recipe section, input, file or tool changed (like `dvc status`)
status recipe:
    python3 -m runner status {{recipe}}

# Validate recipes against schemas/ (file, line and YAML path for every problem)
validate +recipes:
    python3 -m runner validate {{recipes}}

# Run the test suite (unit tests and the tiny end-to-end run of every stage)
test *args:
    python3 -m runner test {{args}}

# Build or check the venvs, llama.cpp tools and base model in the user cache (idempotent)
setup *parts:
    python3 -m runner setup {{parts}}

# Re-render a run's report from its stored artifacts (run folder or run id)
report run:
    python3 -m runner report {{run}}

# Compare two runs (run ids, run folders or reports/ folders): config, data, quality with CIs, gates, performance
compare run_a run_b *flags:
    python3 -m runner compare {{run_a}} {{run_b}} {{flags}}

# Start a recipe's deployment (llama-server engines + gateway; --monitor: + Prometheus) from its last run; Ctrl-C stops it
serve recipe *flags:
    python3 -m runner serve {{recipe}} {{flags}}

# A candidate run against production on real traffic: --log CAPTURE --candidate RUN (replayed), or --shadow-log FILE
replay recipe *flags:
    python3 -m runner replay {{recipe}} {{flags}}
