#!/usr/bin/env bash
# Start command for gatehouse as a compare.sh contender (../shared/bench/README.md).
#   bench/gatehouse-bench.sh hs256|rs256 [CACHE_MAX_ENTRIES]
# Renders a gateway.toml for this run from the variables compare.sh exports
# (BENCH_PORT, BENCH_UPSTREAM, BENCH_RS256_PUB, BENCH_HS256_SECRET, ...) and
# runs gatehouse in the foreground with one tokio worker thread (compare.sh has
# already pinned it to the proxy core).
#
# The project's copy of ../shared/bench/examples/gatehouse-bench.sh: the
# rendered config is the same (gatehouse accepts that file as written).
# GATEHOUSE_BIN names the binary (required: the project's
# target/release/gatehouse, as an absolute path). ROUTE_AUTH sets the
# route's `auth` (default `required`; bench/experiments uses `none`).
set -euo pipefail
alg=${1:?usage: gatehouse-bench.sh hs256|rs256 [CACHE_MAX_ENTRIES]}
entries=${2:-100000}   # SPEC default
route_auth=${ROUTE_AUTH:-required}
case $route_auth in required|optional|none) ;; *) echo "gatehouse-bench.sh: ROUTE_AUTH must be required, optional or none" >&2; exit 2 ;; esac
bin=${GATEHOUSE_BIN:?set GATEHOUSE_BIN to the absolute path of target/release/gatehouse}
[[ -x $bin ]] || { echo "gatehouse-bench.sh: no gatehouse binary at $bin (cargo build --release first)" >&2; exit 1; }

dir=$BENCH_RUN/state/$BENCH_NAME
mkdir -p "$dir"
case $alg in
  hs256) keys='[[keys]]
id = "bench-hs256"
algorithm = "HS256"
secret_env = "BENCH_HS256_SECRET"
sign = true'
    issuer_keys='["bench-hs256"]'; algs='["HS256"]' ;;
  rs256) keys="[[keys]]
id = \"bench-rs256\"
algorithm = \"RS256\"
public_key = \"$BENCH_RS256_PUB\""
    issuer_keys='["bench-rs256"]'; algs='["RS256"]' ;;
  *) echo "gatehouse-bench.sh: alg must be hs256 or rs256" >&2; exit 2 ;;
esac
cat >"$dir/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$BENCH_PORT"
admin_listen = ""
log_format = "json"

[state]
backend = "embedded"
path = "$dir/state"

$keys

[[issuers]]
issuer = "bench"
keys = $issuer_keys
audiences = ["bench"]
algorithms = $algs

[cache]
max_entries = $entries

[[upstreams]]
name = "bench"
targets = ["$BENCH_UPSTREAM"]

[[routes]]
path_prefix = "/"
upstream = "bench"
auth = "$route_auth"
TOML

export TOKIO_WORKER_THREADS=1 RUST_LOG=${RUST_LOG:-warn}
exec "$bin" serve -c "$dir/gateway.toml"
