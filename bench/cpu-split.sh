#!/usr/bin/env bash
# User-space and kernel CPU per request, apart: gatehouse (HS256, one
# token, so every request a cache hit), `floor` (bench/floor, a bare hyper
# proxy) and nginx as a plain proxy, under compare.sh's load: wrk (1
# thread, 64 connections) and the nginx upstream on core 0, the proxy
# alone on core 1. Each proxy's utime/stime from /proc (nginx: its master
# and worker) over a 5 s window inside a 7 s wrk run.
#   bench/cpu-split.sh [ROUNDS]     (default 2; proxies alternate)
# compare.sh reports only the sum; this says which side a difference is on.
# Needs ../shared/bench/run (keys, tokens, the upstream's config): run
# bench/run.sh once first, and not while compare.sh runs (the upstream is
# the one it renders). Sends traffic to 127.0.0.1 only.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run=${BENCH_RUN:-$repo/../shared/bench/run}
rounds=${1:-2}
for f in keys/hs256.secret tokens/hs256.valid conf/upstream.nginx.conf conf/nginx-proxy.conf; do
  [[ -f $run/$f ]] || { echo "cpu-split.sh: no $run/$f: run bench/run.sh once first" >&2; exit 1; }
done
for tool in wrk nginx taskset; do
  command -v "$tool" >/dev/null || { echo "cpu-split.sh: $tool is not installed" >&2; exit 1; }
done
cargo build --release --locked --manifest-path "$repo/Cargo.toml" -q
cargo build --release --locked --manifest-path "$repo/bench/floor/Cargo.toml" -q

upstream_port=$(grep -oP 'listen 127\.0\.0\.1:\K[0-9]+' "$run/conf/upstream.nginx.conf")
nginx_port=$(grep -oP 'listen 127\.0\.0\.1:\K[0-9]+' "$run/conf/nginx-proxy.conf")
gh_port=18120 floor_port=18121
state=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

taskset -c 0 nginx -p "$run/state" -c "$run/conf/upstream.nginx.conf" -e "$state/upstream.err" \
  -g 'daemon off;' &
pids+=($!)

# The same configuration bench/gatehouse-bench.sh renders for compare.sh.
BENCH_RUN=$state BENCH_NAME=gatehouse BENCH_PORT=$gh_port \
  BENCH_UPSTREAM=http://127.0.0.1:$upstream_port \
  BENCH_HS256_SECRET=$(<"$run/keys/hs256.secret") GATEHOUSE_BIN=$repo/target/release/gatehouse \
  taskset -c 1 "$repo/bench/gatehouse-bench.sh" hs256 >"$state/gatehouse.log" 2>&1 &
gh=$!
pids+=("$gh")
taskset -c 1 "$repo/bench/floor/target/release/floor" 127.0.0.1:$floor_port 127.0.0.1:$upstream_port &
floor=$!
pids+=("$floor")

taskset -c 1 nginx -p "$run/state" -c "$run/conf/nginx-proxy.conf" -e "$state/nginx.err" \
  -g 'daemon off;' &
nginx=$!
pids+=("$nginx")

token=$(<"$run/tokens/hs256.valid")
for port in $gh_port $floor_port $nginx_port; do
  for _ in $(seq 50); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$port/" || true)
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || { echo "cpu-split.sh: no 200 from 127.0.0.1:$port" >&2; exit 1; }
done

ticks=$(getconf CLK_TCK)
# cpu PID: user and kernel ticks of PID and its children (nginx's worker).
cpu() {
  local p
  # shellcheck disable=SC2046 # one pid per word
  for p in "$1" $(pgrep -P "$1" || true); do cat "/proc/$p/stat"; done |
    awk '{u += $14; s += $15} END {print u, s}'
}
# measure NAME PID PORT: one 7 s wrk run, CPU counted over its middle 5 s.
measure() {
  local name=$1 pid=$2 port=$3 u0 s0 u1 s1 w
  taskset -c 0 wrk -t1 -c64 -d7s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" \
    >"$state/wrk.out" &
  w=$!
  sleep 1.5
  read -r u0 s0 < <(cpu "$pid")
  sleep 5
  read -r u1 s1 < <(cpu "$pid")
  wait "$w"
  grep -q "Non-2xx\|Socket errors" "$state/wrk.out" && { cat "$state/wrk.out" >&2; exit 1; }
  awk -v n="$name" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$ticks" \
    -v r="$(awk '/Requests\/sec/{print $2}' "$state/wrk.out")" 'BEGIN {
      k = 1e6 / (hz * 5 * r)
      printf "%-10s %7.0f req/s  user %5.2f  kernel %5.2f  total %5.2f us/req\n", n, r, u * k, s * k, (u + s) * k
    }'
}
# gatehouse-bench.sh execs the binary: its pid is the gateway's.
for ((i = 1; i <= rounds; i++)); do
  measure gatehouse "$gh" $gh_port
  measure floor "$floor" $floor_port
  measure nginx "$nginx" "$nginx_port"
done
