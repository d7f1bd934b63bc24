#!/usr/bin/env bash
# Runs ../shared/bench/compare.sh with gatehouse as a contender beside nginx and
# HAProxy. Builds the release binary first. Every compare.sh knob works:
#   bench/run.sh                                  one token per algorithm: cache hits
#   TOKEN_POOL=20000 bench/run.sh                 20,000 tokens: the smallcache rows miss
#   CHECK_ONLY=1 bench/run.sh                     start and check every contender only
#   ONLY=nginx-proxy,gatehouse-hs256 bench/run.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=${BENCH_HARNESS:-$repo/../shared/bench}
cargo build --release --locked --manifest-path "$repo/Cargo.toml"
# The `floor` contender: a bare hyper proxy to compare gatehouse with.
cargo build --release --locked --manifest-path "$repo/bench/floor/Cargo.toml"
export GATEHOUSE_REPO=$repo GATEHOUSE_BIN=$repo/target/release/gatehouse
export EXTRA_FILE=${EXTRA_FILE:-$repo/bench/gatehouse.contenders}
export RESULTS_DIR=${RESULTS_DIR:-$repo/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
exec "$bench/compare.sh" "$@"
