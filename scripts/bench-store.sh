#!/usr/bin/env bash
# What chaining audit events into the embedded SQLite store costs, per event: the
# process's CPU time over many shipments of 256 statement and outcome events (noisy on
# a shared machine), then the repeatable figure, instructions per event under
# callgrind (two runs of 20 and 60 shipments, differenced so that opening the store
# and building the events are left out). The store's share of each audited statement is twice this (its
# statement and its outcome are chained); see the README's benchmark section.
#
#   scripts/bench-store.sh
#
# Not a test: nothing here asserts on time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_packages valgrind valgrind
log "building the store benchmark (release)"
cargo build --release -q -p warden-store --example audit_ship_cost
bin=target/release/examples/audit_ship_cost
"$bin" "${BENCH_SHIPMENTS:-200}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() { # SHIPMENTS → instructions callgrind counted
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" "$bin" "$1" >"$work/out.$1" 2>&1 ||
    { echo "the benchmark failed under valgrind:" >&2; cat "$work/out.$1" >&2; exit 1; }
  awk '/^summary:/ { print $2 }' "$work/cg.$1"
}
small=$(count 20)
big=$(count 60)
awk -v a="$small" -v b="$big" 'BEGIN { printf "instructions per chained event (callgrind): %.0f\n", (b - a) / (40 * 256) }'
