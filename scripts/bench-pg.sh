#!/usr/bin/env bash
# The PostgreSQL proxy benchmark: `pgbench -S` (one primary-key SELECT per
# transaction) at 1 and 8 clients, direct to PostgreSQL, through Warden (audit,
# recording and masking on; `warden` syncs each audit batch to disk, `warden-os` hands
# it to the OS: `audit.journal_sync = false`) and through PgBouncer (session
# pooling), all in the same run. Prints TPS, the ratio to direct, p50/p99 latency with
# what each proxy adds, and each proxy's CPU time (user + system) per statement; then
# the repeatable figures: each proxy's system calls and context switches per statement
# at the most clients (perf's syscall tracepoints, counted during the timed runs;
# skipped without `perf`), and its instructions per statement under callgrind
# (`BENCH_INSTRUCTIONS=0` skips those).
#
#   scripts/bench-pg.sh                  # 15 s per run
#   BENCH_SECONDS=30 BENCH_CLIENTS="1 8 16" scripts/bench-pg.sh
#
# Not a test: nothing here asserts on time. Installs pgbouncer when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CLIENTS:-"1 8"}
scale=${BENCH_SCALE:-5}
warden_port=${BENCH_WARDEN_PORT:-18432}
api_port=${BENCH_API_PORT:-18009}
bouncer_port=${BENCH_PGBOUNCER_PORT:-16432}

ensure_packages psql postgresql-client pgbench postgresql-client pgbouncer pgbouncer \
  curl curl
setup_postgres
log "building warden (release)"
cargo build --release -q -p warden

bench_work_dir

# --- the database: owned by the SCRAM role that Warden and PgBouncer log in as ---
admin_url=$WARDEN_TEST_PG_URL
psql "$admin_url" -qc "DROP DATABASE IF EXISTS warden_bench" >/dev/null
psql "$admin_url" -qc "CREATE DATABASE warden_bench OWNER warden_t_scram" >/dev/null
log "pgbench -i -s $scale"
PGPASSWORD=scram-pw-1 pgbench -q -i -s "$scale" -h 127.0.0.1 -U warden_t_scram warden_bench 2>/dev/null

# --- Warden: twice, journal synced to disk (the default) and handed to the OS ------
admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# start_warden NAME API_PORT PG_PORT JOURNAL_SYNC → prints an API key for the `bench` connection
start_warden() {
  start_bench_warden "$1" "$2" "[pg]
listen = \"127.0.0.1:$3\"
[mysql]
enabled = false" "$4" '{"name":"bench","kind":"postgres","target":"127.0.0.1:5432/warden_bench",
    "username":"warden_t_scram","secret":"scram-pw-1","allowed_groups":["bench"],
    "policies":{"guardrails":["no-drops"],"masking":["pii"]},"tls":{"mode":"disable"}}'
}
token=$(start_warden warden "$api_port" "$warden_port" true)
os_token=$(start_warden warden-os $((api_port + 1)) $((warden_port + 1)) false)

# --- PgBouncer ------------------------------------------------------------------
start_pgbouncer "$bouncer_port" >/dev/null

# --- runs -------------------------------------------------------------------------
# run NAME CLIENTS PORT DBNAME USER PASSWORD → "tps p50_us p99_us"
run() {
  local name=$1 c=$2 port=$3 db=$4 user=$5 pass=$6 prefix="$work/log-$1-$2"
  local out pid cpu_before
  pid=$(proxy_pid "$name")
  [ -z "$pid" ] || cpu_before=$(cpu_us "$pid")
  local counted=""
  if [ -n "$pid" ] && [ "$c" = "$last_clients" ] && [ -n "$perf_events" ]; then
    counted="$work/calls-$name"
    perf stat -x, -e "$perf_events" -p "$pid" -o "$counted" -- sleep "$seconds" >/dev/null 2>&1 &
  fi
  out=$(cd "$work" && PGPASSWORD=$pass pgbench -n -S -T "$seconds" -c "$c" -j "$c" \
    -h 127.0.0.1 -p "$port" -U "$user" -l --log-prefix="$prefix" "$db" 2>&1) || {
    echo "pgbench $name failed:" >&2
    echo "$out" >&2
    exit 1
  }
  local tps
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)
  # Per-transaction log: the third column is the latency in microseconds.
  local pct
  pct=$(cat "$prefix".* | awk '{print $3}' | sort -n | awk '
    { v[NR] = $1 }
    END { p50 = v[int(NR * 0.50) + 1]; p99 = v[int(NR * 0.99) + 1]; print p50, p99 }')
  rm -f "$prefix".*
  # The proxy's CPU time per statement (one per transaction with -S).
  local per_stmt=-
  if [ -n "$pid" ]; then
    local done_tx
    done_tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    per_stmt=$(awk -v a="$cpu_before" -v b="$(cpu_us "$pid")" -v n="$done_tx" 'BEGIN { printf "%.0f", (b - a) / n }')
    if [ -n "$counted" ]; then
      wait $! 2>/dev/null || true
      # Counted over the run's seconds, divided by the statements of the whole run.
      # An event perf could not count is shown as "-", so the columns stay in place.
      awk -F, -v n="$done_tx" '/^#/ || NF < 3 { next }
        { if ($1 ~ /^[0-9.]+$/) printf "%.2f ", $1 / n; else printf "- " }' "$counted" >"$counted.per"
    fi
  fi
  echo "$tps $pct $per_stmt"
}

# proxy_pid NAME → the pid of the proxy a run goes through (none for direct).
proxy_pid() {
  case $1 in
    warden | warden-os) cat "$work/$1.pid" ;;
    pgbouncer) pgrep -n -f "pgbouncer $work/pgbouncer.ini" || true ;;
  esac
}

# System calls (the ones a statement's path makes) and context switches, counted by
# perf's tracepoints while the runs at the most clients go: counts do not move with the
# machine's load the way time does, and they show the kernel work callgrind cannot.
calls="futex pwrite64 write sendto recvfrom epoll_wait fdatasync"
perf_events=""
last_clients=${clients##* }
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_futex true >/dev/null 2>&1; then
  for call in $calls; do perf_events+="syscalls:sys_enter_$call,"; done
  perf_events+="context-switches"
else
  log "no perf with syscall tracepoints: system calls per statement not counted"
fi

printf '\npgbench -S, %ss per run, scale %s\n' "$seconds" "$scale"
printf '%-8s %-10s %10s %7s %9s %9s %10s %10s %12s\n' clients path tps ratio p50_us p99_us +p50_us +p99_us cpu_us/stmt
for c in $clients; do
  read -r d_tps d_p50 d_p99 _ < <(run direct "$c" 5432 warden_bench warden_t_scram scram-pw-1)
  read -r w_tps w_p50 w_p99 w_cpu < <(run warden "$c" "$warden_port" bench bench "$token")
  read -r o_tps o_p50 o_p99 o_cpu < <(run warden-os "$c" $((warden_port + 1)) bench bench "$os_token")
  read -r b_tps b_p50 b_p99 b_cpu < <(run pgbouncer "$c" "$bouncer_port" warden_bench warden_t_scram scram-pw-1)
  printf '%-8s %-10s %10.0f %7s %9s %9s %10s %10s %12s\n' "$c" direct "$d_tps" "1.00" "$d_p50" "$d_p99" - - -
  for row in "warden $w_tps $w_p50 $w_p99 $w_cpu" "warden-os $o_tps $o_p50 $o_p99 $o_cpu" "pgbouncer $b_tps $b_p50 $b_p99 $b_cpu"; do
    read -r name tps p50 p99 cpu <<<"$row"
    printf '%-8s %-10s %10.0f %7.2f %9s %9s %10s %10s %12s\n' "$c" "$name" "$tps" \
      "$(awk -v a="$tps" -v b="$d_tps" 'BEGIN { print a / b }')" "$p50" "$p99" "$((p50 - d_p50))" "$((p99 - d_p99))" "$cpu"
  done
done

if [ -n "$perf_events" ]; then
  printf '\nsystem calls and context switches per statement, %s clients (perf)\n' "$last_clients"
  printf '%-10s' path
  for call in $calls switches; do printf ' %10s' "$call"; done
  echo
  for name in warden warden-os pgbouncer; do
    printf '%-10s' "$name"
    for v in $(cat "$work/calls-$name.per" 2>/dev/null); do printf ' %10s' "$v"; done
    echo
  done
fi

# --- instructions per statement: the repeatable figure ---------------------------
# Each proxy again, under callgrind (about 50 times slower: only counts matter here).
if [ "${BENCH_INSTRUCTIONS:-1}" = 1 ]; then
  ensure_packages valgrind valgrind
  log "instructions per statement (callgrind)"
  cg_port=$((warden_port + 10))
  cg_warden() { # NAME SYNC → instructions per statement
    local t
    t=$(BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$work/cg.$1.%p" \
      start_bench_warden "$1" $((api_port + 10)) "[pg]
listen = \"127.0.0.1:$cg_port\"
[mysql]
enabled = false" "$2" '{"name":"bench","kind":"postgres","target":"127.0.0.1:5432/warden_bench",
    "username":"warden_t_scram","secret":"scram-pw-1","allowed_groups":["bench"],
    "policies":{"guardrails":["no-drops"],"masking":["pii"]},"tls":{"mode":"disable"}}')
    local pid
    pid=$(cat "$work/$1.pid")
    callgrind_per_stmt "$pid" "$work/cg.$1" "$cg_port" bench bench "$t"
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  }
  cg_w=$(cg_warden cg-warden true)
  cg_o=$(cg_warden cg-warden-os false)
  # PgBouncer runs as another user, whose process callgrind_control cannot reach:
  # it runs twice instead, for 100 and for 100 + CG_STATEMENTS statements per client,
  # and the difference of the totals it counted by its exit is the figure.
  sed "s/listen_port = $bouncer_port/listen_port = $((bouncer_port + 10))/;s|logfile = .*|logfile = $work/pgbouncer-cg.log|" \
    "$work/pgbouncer.ini" >"$work/pgbouncer-cg.ini"
  chmod 644 "$work/pgbouncer-cg.ini"
  cg_bouncer_total() { # STATEMENTS_PER_CLIENT → instructions PgBouncer counted
    local as=() pid
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    rm -f "$work"/cg.bouncer.*
    "${as[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.bouncer.%p" \
      pgbouncer "$work/pgbouncer-cg.ini" >/dev/null 2>&1 &
    for _ in $(seq 1 300); do pg_isready -q -h 127.0.0.1 -p $((bouncer_port + 10)) && break; sleep 0.1; done
    pid=$(pgrep -n -f "valgrind.* pgbouncer $work/pgbouncer-cg.ini")
    PGPASSWORD=scram-pw-1 pgbench -n -S -t "$1" -c 4 -j 4 -h 127.0.0.1 -p $((bouncer_port + 10)) \
      -U warden_t_scram warden_bench >/dev/null 2>&1
    kill -INT "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    awk '/^summary:/ { print $2 }' "$work/cg.bouncer.$pid"
  }
  b0=$(cg_bouncer_total 100)
  b1=$(cg_bouncer_total $((100 + ${CG_STATEMENTS:-500})))
  cg_b=$(awk -v a="$b0" -v b="$b1" -v n=$((4 * ${CG_STATEMENTS:-500})) 'BEGIN { printf "%.0f", (b - a) / n }')
  printf '\ninstructions per statement (callgrind, 4 clients x %s statements)\n' "${CG_STATEMENTS:-500}"
  # No ratio: callgrind counts user space only, and most of what PgBouncer does is in
  # the kernel (see the README).
  printf '%-10s %12s\n' path instructions
  for row in "warden $cg_w" "warden-os $cg_o" "pgbouncer $cg_b"; do
    read -r name n <<<"$row"
    printf '%-10s %12s\n' "$name" "$n"
  done
fi

for port in "$api_port" $((api_port + 1)); do
  verify=$(curl -fsS -H "Authorization: Bearer $admin_token" "http://127.0.0.1:$port/api/audit/verify")
  printf '\naudit log of the Warden with API port %s: %s events, intact: %s\n' "$port" \
    "$(echo "$verify" | grep -o '"events_checked":[0-9]*' | cut -d: -f2)" \
    "$(echo "$verify" | grep -o '"ok":[a-z]*' | cut -d: -f2)"
done
