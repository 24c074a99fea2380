#!/usr/bin/env bash
# The MySQL proxy benchmark: `sysbench oltp_read_only` (per transaction: BEGIN, ten
# primary-key SELECTs, four range SELECTs, COMMIT; prepared statements, i.e. the
# binary protocol) at 1 and 8 threads, direct to MariaDB, through Warden (audit,
# recording and masking on; `warden` syncs each audit batch to disk, `warden-os`
# hands it to the OS) and through HAProxy relaying TCP (one thread: a proxy that
# parses nothing, the floor for any relay), in the same run. Prints transactions and
# statements per second, the ratio to direct, p50 / average latency with what each
# proxy adds, each proxy's CPU time per statement, then the repeatable figure:
# instructions per statement under callgrind, Warden's and HAProxy's
# (`BENCH_INSTRUCTIONS=0` skips it).
#
#   scripts/bench-mysql.sh                  # 15 s per run
#   BENCH_SECONDS=30 BENCH_CLIENTS="1 8 16" scripts/bench-mysql.sh
#
# Not a test: nothing here asserts on time. Installs sysbench when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CLIENTS:-"1 8"}
table_size=${BENCH_TABLE_SIZE:-10000}
warden_port=${BENCH_WARDEN_PORT:-18306}
api_port=${BENCH_API_PORT:-18019}
haproxy_port=${BENCH_HAPROXY_PORT:-16306}

ensure_packages sysbench sysbench curl curl mysql mariadb-client haproxy haproxy
setup_mariadb
log "building warden (release)"
cargo build --release -q -p warden

bench_work_dir

mariadb_host=${WARDEN_TEST_MYSQL_HOSTPORT%:*}
mariadb_port=${WARDEN_TEST_MYSQL_HOSTPORT##*:}
# Connector/C loads an authentication plugin on first use, and sysbench threads that
# connect at once race on it ("mysql_clear_password could not be loaded: it is already
# loaded", one run in five here); loading it when the library starts avoids that.
sb() {
  LIBMYSQL_PLUGINS=mysql_clear_password sysbench oltp_read_only --db-driver=mysql --tables=4 --table-size="$table_size" "$@"
}
mysql -h"$mariadb_host" -P"$mariadb_port" -uroot -e \
  "DROP DATABASE IF EXISTS warden_t_bench; CREATE DATABASE warden_t_bench"
log "sysbench prepare (4 tables x $table_size rows)"
sb --mysql-host="$mariadb_host" --mysql-port="$mariadb_port" --mysql-user=warden_t_native \
  --mysql-password=native-pw-1 --mysql-db=warden_t_bench prepare >/dev/null

admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# start_warden NAME API_PORT MYSQL_PORT JOURNAL_SYNC → prints an API key for `bench`
start_warden() {
  start_bench_warden "$1" "$2" "[pg]
enabled = false
[mysql]
listen = \"127.0.0.1:$3\"" "$4" "{\"name\":\"bench\",\"kind\":\"mysql\",
    \"target\":\"$WARDEN_TEST_MYSQL_HOSTPORT/warden_t_bench\",
    \"username\":\"warden_t_native\",\"secret\":\"native-pw-1\",\"allowed_groups\":[\"bench\"],
    \"policies\":{\"guardrails\":[\"no-drops\"],\"masking\":[\"pii\"]},\"tls\":{\"mode\":\"disable\"}}"
}
token=$(start_warden warden "$api_port" "$warden_port" true)
os_token=$(start_warden warden-os $((api_port + 1)) $((warden_port + 1)) false)
start_haproxy "$haproxy_port" "$WARDEN_TEST_MYSQL_HOSTPORT" >"$work/haproxy.pid"

# run NAME THREADS HOST PORT USER PASSWORD DB → "tps qps p50_ms avg_ms"
run() {
  local name=$1 c=$2 out pid="" cpu_before
  [ "$name" = direct ] || pid=$(cat "$work/$name.pid")
  [ -z "$pid" ] || cpu_before=$(cpu_us "$pid")
  out=$(sb --mysql-host="$3" --mysql-port="$4" --mysql-user="$5" --mysql-password="$6" \
    --mysql-db="$7" --threads="$c" --time="$seconds" --percentile=50 run 2>&1) || {
    echo "sysbench $name failed:" >&2
    echo "$out" >&2
    exit 1
  }
  local tps qps p50 avg
  tps=$(echo "$out" | sed -n 's/.*transactions: .*(\([0-9.]*\) per sec.*/\1/p')
  qps=$(echo "$out" | sed -n 's/.*queries: .*(\([0-9.]*\) per sec.*/\1/p')
  p50=$(echo "$out" | sed -n 's/.*50th percentile: *\([0-9.]*\).*/\1/p')
  avg=$(echo "$out" | sed -n 's/.*avg: *\([0-9.]*\).*/\1/p')
  # Warden's CPU time (user + system) per statement.
  local per_stmt=-
  if [ -n "$pid" ]; then
    local statements
    statements=$(echo "$out" | sed -n 's/^ *total: *\([0-9]*\)$/\1/p' | head -1)
    per_stmt=$(awk -v a="$cpu_before" -v b="$(cpu_us "$pid")" -v n="$statements" 'BEGIN { printf "%.0f", (b - a) / n }')
  fi
  echo "$tps $qps $p50 $avg $per_stmt"
}

printf '\nsysbench oltp_read_only, %ss per run, 4 tables x %s rows, 16 statements per transaction\n' \
  "$seconds" "$table_size"
printf '%-8s %-10s %9s %10s %7s %11s %11s %13s %12s\n' threads path tps statements/s ratio p50_ms avg_ms +p50_us/stmt cpu_us/stmt
for c in $clients; do
  read -r d_tps d_qps d_p50 d_avg _ < <(run direct "$c" "$mariadb_host" "$mariadb_port" warden_t_native native-pw-1 warden_t_bench)
  read -r w_tps w_qps w_p50 w_avg w_cpu < <(run warden "$c" 127.0.0.1 "$warden_port" bench "$token" bench)
  read -r o_tps o_qps o_p50 o_avg o_cpu < <(run warden-os "$c" 127.0.0.1 $((warden_port + 1)) bench "$os_token" bench)
  read -r h_tps h_qps h_p50 h_avg h_cpu < <(run haproxy "$c" 127.0.0.1 "$haproxy_port" warden_t_native native-pw-1 warden_t_bench)
  printf '%-8s %-10s %9.0f %10.0f %7s %11s %11s %13s %12s\n' "$c" direct "$d_tps" "$d_qps" "1.00" "$d_p50" "$d_avg" - -
  for row in "warden $w_tps $w_qps $w_p50 $w_avg $w_cpu" "warden-os $o_tps $o_qps $o_p50 $o_avg $o_cpu" \
    "haproxy $h_tps $h_qps $h_p50 $h_avg $h_cpu"; do
    read -r name tps qps p50 avg cpu <<<"$row"
    printf '%-8s %-10s %9.0f %10.0f %7.2f %11s %11s %13.0f %12s\n' "$c" "$name" "$tps" "$qps" \
      "$(awk -v a="$tps" -v b="$d_tps" 'BEGIN { print a / b }')" "$p50" "$avg" \
      "$(awk -v a="$p50" -v b="$d_p50" 'BEGIN { print (a - b) * 1000 / 16 }')" "$cpu"
  done
done
# --- instructions per statement: the repeatable figure ---------------------------
# Warden again, under callgrind (about 50 times slower: only counts matter here), in
# both journal modes: sysbench with 4 threads, 20 and 20 + CG_TRANSACTIONS (60)
# transactions of 16 statements, the difference divided by the statements it added.
if [ "${BENCH_INSTRUCTIONS:-1}" = 1 ]; then
  ensure_packages valgrind valgrind
  log "instructions per statement (callgrind)"
  cg_port=$((warden_port + 10))
  cg_user=bench cg_db=bench
  sysbench_statements() { # TRANSACTIONS → statements run
    local out
    out=$(sb --mysql-host=127.0.0.1 --mysql-port="$cg_port" --mysql-user="$cg_user" \
      --mysql-password="$cg_token" --mysql-db="$cg_db" --threads=4 --time=0 --events="$1" run 2>&1)
    echo "$out" | sed -n 's/^ *total: *\([0-9]*\)$/\1/p' | head -1
  }
  cg_warden() { # NAME SYNC → instructions per statement
    local pid
    cg_token=$(BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$work/cg.$1.%p" \
      start_warden "$1" $((api_port + 10)) "$cg_port" "$2")
    pid=$(cat "$work/$1.pid")
    callgrind_per_unit "$pid" "$work/cg.$1" sysbench_statements 20 $((20 + ${CG_TRANSACTIONS:-60}))
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  }
  # The peer the same way, logging in to MariaDB itself through it.
  cg_haproxy() {
    local pid
    sed "s/bind 127.0.0.1:$haproxy_port/bind 127.0.0.1:$cg_port/" "$work/haproxy.cfg" >"$work/haproxy-cg.cfg"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.haproxy.%p" \
      haproxy -f "$work/haproxy-cg.cfg" -db >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >>"$work/pids"
    for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$cg_port") 2>/dev/null && break; sleep 0.1; done
    cg_user=warden_t_native cg_token=native-pw-1 cg_db=warden_t_bench
    callgrind_per_unit "$pid" "$work/cg.haproxy" sysbench_statements 20 $((20 + ${CG_TRANSACTIONS:-60}))
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  }
  cg_w=$(cg_warden cg-warden true)
  cg_o=$(cg_warden cg-warden-os false)
  cg_h=$(cg_haproxy)
  printf '\ninstructions per statement (callgrind, 4 threads x %s transactions of 16 statements)\n' \
    "${CG_TRANSACTIONS:-60}"
  # No ratio: callgrind counts user space only, and most of what a relay costs is the
  # kernel's (see the README).
  printf '%-10s %12s\n' path instructions
  printf '%-10s %12s\n' warden "$cg_w" warden-os "$cg_o" haproxy "$cg_h"
fi

for port in "$api_port" $((api_port + 1)); do
  verify=$(curl -fsS -H "Authorization: Bearer $admin_token" "http://127.0.0.1:$port/api/audit/verify")
  printf '\naudit log of the Warden with API port %s: %s events, intact: %s\n' "$port" \
    "$(echo "$verify" | grep -o '"events_checked":[0-9]*' | cut -d: -f2)" \
    "$(echo "$verify" | grep -o '"ok":[a-z]*' | cut -d: -f2)"
done
mysql -h"$mariadb_host" -P"$mariadb_port" -uroot -e "DROP DATABASE IF EXISTS warden_t_bench"
