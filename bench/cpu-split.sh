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
export LC_ALL=C # $EPOCHREALTIME with a decimal point
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run=${BENCH_RUN:-$repo/../shared/bench/run}
rounds=${1:-2}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/cpu-split.sh [ROUNDS, 1 or more]" >&2; exit 2; }
for f in keys/hs256.secret tokens/hs256.valid conf/upstream.nginx.conf conf/nginx-proxy.conf; do
  [[ -f $run/$f ]] || { echo "cpu-split.sh: no $run/$f: run bench/run.sh once first" >&2; exit 1; }
done
for tool in wrk nginx taskset curl pgrep ss timeout; do
  command -v "$tool" >/dev/null || { echo "cpu-split.sh: $tool is not installed" >&2; exit 1; }
done
cargo build --release --locked --manifest-path "$repo/Cargo.toml" -q
cargo build --release --locked --manifest-path "$repo/bench/floor/Cargo.toml" -q

state=$(mktemp -d)
pids=()
wrk_pid=
die() {
  echo "cpu-split.sh: $*" >&2
  for log in "$state"/*.log; do
    [[ -s $log ]] && { echo "--- ${log##*/}" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}
alive() { # any of the processes started here still running
  local p
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}
# Everything started here is stopped by pid: SIGTERM, then SIGKILL after 5 s.
cleanup() {
  local p i
  [[ -n $wrk_pid ]] && pids+=("$wrk_pid")
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    alive || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

listen_port() { # the port a config rendered by compare.sh listens on
  local port
  port=$(grep -oP 'listen 127\.0\.0\.1:\K[0-9]+' "$1" | head -n 1)
  [[ -n $port ]] || die "no 'listen 127.0.0.1:PORT' in $1"
  echo "$port"
}
upstream_port=$(listen_port "$run/conf/upstream.nginx.conf")
nginx_port=$(listen_port "$run/conf/nginx-proxy.conf")
gh_port=18120 floor_port=18121
for port in $upstream_port $nginx_port $gh_port $floor_port; do
  # Another process answering on one of these would be measured instead.
  [[ -z $(ss -Htln "sport = :$port") ]] || die "port $port is in use (compare.sh running?)"
done

taskset -c 0 nginx -p "$run/state" -c "$run/conf/upstream.nginx.conf" -e "$state/upstream.log" \
  -g 'daemon off;' &
pids+=($!)
# The same configuration bench/gatehouse-bench.sh renders for compare.sh;
# taskset and the script exec, so this pid is the gateway's.
BENCH_RUN=$state BENCH_NAME=gatehouse BENCH_PORT=$gh_port \
  BENCH_UPSTREAM=http://127.0.0.1:$upstream_port \
  BENCH_HS256_SECRET=$(<"$run/keys/hs256.secret") GATEHOUSE_BIN=$repo/target/release/gatehouse \
  taskset -c 1 "$repo/bench/gatehouse-bench.sh" hs256 >"$state/gatehouse.log" 2>&1 &
gh=$!
pids+=("$gh")
taskset -c 1 "$repo/bench/floor/target/release/floor" 127.0.0.1:$floor_port \
  127.0.0.1:$upstream_port >"$state/floor.log" 2>&1 &
floor=$!
pids+=("$floor")
taskset -c 1 nginx -p "$run/state" -c "$run/conf/nginx-proxy.conf" -e "$state/nginx.log" \
  -g 'daemon off;' &
nginx=$!
pids+=("$nginx")

token=$(<"$run/tokens/hs256.valid")
for port in $gh_port $floor_port $nginx_port; do
  for _ in $(seq 50); do
    code=$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' \
      -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" || true)
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || die "no 200 from 127.0.0.1:$port"
done

ticks=$(getconf CLK_TCK)
# cpu PID: user and kernel ticks of PID and its children (nginx's worker);
# nothing when PID is gone.
cpu() {
  local p
  # shellcheck disable=SC2046 # one pid per word
  for p in "$1" $(pgrep -P "$1" || true); do cat "/proc/$p/stat" 2>/dev/null; done |
    awk '{u += $14; s += $15; n++} END {if (n) print u, s}'
}
# measure NAME PID PORT: one 7 s wrk run, CPU counted over its middle 5 s
# (timed: the window is what the clock says, not what `sleep` asked for).
measure() {
  local name=$1 pid=$2 port=$3 u0='' s0='' u1='' s1='' t0 t1
  timeout -k 5 30 taskset -c 0 wrk -t1 -c64 -d7s -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/" >"$state/wrk.log" 2>&1 &
  wrk_pid=$!
  sleep 1.5
  t0=$EPOCHREALTIME
  read -r u0 s0 < <(cpu "$pid") || true
  sleep 5
  read -r u1 s1 < <(cpu "$pid") || true
  t1=$EPOCHREALTIME
  [[ -n $u0 && -n $u1 ]] || die "$name (pid $pid) is gone"
  wait "$wrk_pid" || die "wrk failed against $name: $(cat "$state/wrk.log")"
  wrk_pid=
  ! grep -q "Non-2xx\|Socket errors" "$state/wrk.log" || die "errors from $name: $(cat "$state/wrk.log")"
  awk -v n="$name" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$ticks" -v t0="$t0" -v t1="$t1" \
    -v r="$(awk '/Requests\/sec/{print $2}' "$state/wrk.log")" 'BEGIN {
      k = 1e6 / (hz * (t1 - t0) * r)
      printf "%-10s %7.0f req/s  user %5.2f  kernel %5.2f  total %5.2f us/req\n", n, r, u * k, s * k, (u + s) * k
    }'
}
for ((i = 1; i <= rounds; i++)); do
  measure gatehouse "$gh" $gh_port
  measure floor "$floor" $floor_port
  measure nginx "$nginx" "$nginx_port"
done
