#!/usr/bin/env bash
# Where a statement's cost goes: the same load through Warden with its stages added
# one at a time, beside the direct path and a peer proxy, in one run.
# `BENCH_PROTOCOL=pg` (the default) runs `pgbench -S`; `BENCH_PROTOCOL=mysql` runs
# `sysbench oltp_read_only` against MariaDB (prepared statements, 16 per transaction).
# The rows:
#
#   direct      the load against the database itself (TPS and latency only)
#   pgbouncer   the peer for PostgreSQL (session pooling)
#   haproxy     the peer for MySQL: HAProxy relaying TCP (one thread), which parses
#               nothing, so its CPU is about the floor any relay pays in the kernel
#   relay       Warden with no policies and the journal and recording left out
#   +policies   guardrails and masking (the benchmark's `no-drops` and `pii`)
#   +journal    each statement's audit event journaled before it goes on (handed to
#               the OS), and its outcome after
#   +store      the journal shipped into the store's hash chain (SQLite)
#   +recording  everything: Warden with `journal_sync = false`
#   synced      everything, the journal synced to disk (the default)
#
# Leaving stages out needs a build with the `ablation` feature (`WARDEN_ABLATE`, see
# `warden_core::ablation`), made here in target/ablation; every Warden rung runs that
# one binary, so the rungs differ only in what they do. The rows take turns for
# BENCH_ROUNDS rounds, so the machine's drift reaches each alike, and each figure is
# the median of its rounds: TPS (transactions: one statement each for pgbench, 16 for
# sysbench) and its ratio to direct, the median latency per statement and what it
# adds to direct's, the proxy's CPU time (user + system) per statement and the
# kernel's part of it (system calls and the loopback's TCP work), its context
# switches and (where perf counts them) `fdatasync` calls per statement. Then the
# repeatable figure per rung, instructions per statement under callgrind
# (`BENCH_INSTRUCTIONS=0` skips it), and the floor under the synced rung: the CPU time
# one `pwrite` + `fdatasync` costs on the disk the journal is on, measured alone.
#
#   scripts/bench-ladder.sh                     # pgbench, 8 clients, 3 rounds of 10 s
#   BENCH_CLIENTS=1 BENCH_ROUNDS=5 scripts/bench-ladder.sh
#   BENCH_PROTOCOL=mysql scripts/bench-ladder.sh
#
# Not a test: nothing here asserts on time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seconds=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-8}
rounds=${BENCH_ROUNDS:-3}
protocol=${BENCH_PROTOCOL:-pg}
scale=${BENCH_SCALE:-5}
table_size=${BENCH_TABLE_SIZE:-10000}
port=${BENCH_WARDEN_PORT:-18452}
api_port=${BENCH_API_PORT:-18029}
peer_port=${BENCH_PEER_PORT:-16442}

case $protocol in
  pg)
    ensure_packages psql postgresql-client pgbench postgresql-client pgbouncer pgbouncer
    setup_postgres
    ;;
  mysql)
    ensure_packages sysbench sysbench mysql mariadb-client haproxy haproxy
    setup_mariadb
    ;;
  *)
    echo "BENCH_PROTOCOL is pg or mysql, not $protocol" >&2
    exit 2
    ;;
esac
ensure_packages curl curl python3 python3
log "building warden with the ablation feature (target/ablation)"
cargo build --release -q -p warden --features ablation --target-dir target/ablation
export WARDEN_BIN=target/ablation/release/warden

bench_work_dir

# Connector/C loads an authentication plugin on first use, and sysbench threads that
# connect at once race on it (see bench-mysql.sh); loading it at start avoids that.
sb() {
  LIBMYSQL_PLUGINS=mysql_clear_password sysbench oltp_read_only --db-driver=mysql --tables=4 \
    --table-size="$table_size" "$@"
}
if [ "$protocol" = pg ]; then
  psql "$WARDEN_TEST_PG_URL" -qc "DROP DATABASE IF EXISTS warden_bench" >/dev/null
  psql "$WARDEN_TEST_PG_URL" -qc "CREATE DATABASE warden_bench OWNER warden_t_scram" >/dev/null
  log "pgbench -i -s $scale"
  PGPASSWORD=scram-pw-1 pgbench -q -i -s "$scale" -h 127.0.0.1 -U warden_t_scram warden_bench 2>/dev/null
  direct=(127.0.0.1 5432 warden_bench warden_t_scram scram-pw-1)
  target='"target":"127.0.0.1:5432/warden_bench","username":"warden_t_scram","secret":"scram-pw-1"'
  kind=postgres
else
  mariadb_host=${WARDEN_TEST_MYSQL_HOSTPORT%:*}
  mariadb_port=${WARDEN_TEST_MYSQL_HOSTPORT##*:}
  mysql -h"$mariadb_host" -P"$mariadb_port" -uroot -e \
    "DROP DATABASE IF EXISTS warden_t_bench; CREATE DATABASE warden_t_bench"
  log "sysbench prepare (4 tables x $table_size rows)"
  sb --mysql-host="$mariadb_host" --mysql-port="$mariadb_port" --mysql-user=warden_t_native \
    --mysql-password=native-pw-1 --mysql-db=warden_t_bench prepare >/dev/null
  direct=("$mariadb_host" "$mariadb_port" warden_t_bench warden_t_native native-pw-1)
  target='"target":"'$WARDEN_TEST_MYSQL_HOSTPORT'/warden_t_bench","username":"warden_t_native","secret":"native-pw-1"'
  kind=mysql
fi

# The rungs: name, stages left out, policies, journal_sync.
rungs=(
  "relay journal,record none false"
  "+policies journal,record bench false"
  "+journal ship,record bench false"
  "+store record bench false"
  "+recording - bench false"
  "synced - bench true"
)
connection_json() {
  local policies='{}'
  [ "$1" = bench ] && policies='{"guardrails":["no-drops"],"masking":["pii"]}'
  echo '{"name":"bench","kind":"'$kind'",'"$target"',"allowed_groups":["bench"],
    "policies":'"$policies"',"tls":{"mode":"disable"}}'
}
# start_rung INDEX [WRAPPER] → an API key; the gateway's pid is in "$work/rung$INDEX.pid"
start_rung() {
  local name skip policies sync listeners
  read -r name skip policies sync <<<"${rungs[$1]}"
  [ "$skip" = - ] && skip=""
  if [ "$protocol" = pg ]; then
    listeners="[pg]
listen = \"127.0.0.1:$((port + $1))\"
[mysql]
enabled = false"
  else
    listeners="[pg]
enabled = false
[mysql]
listen = \"127.0.0.1:$((port + $1))\""
  fi
  WARDEN_ABLATE=$skip BENCH_WRAPPER=${2:-} start_bench_warden "rung$1" $((api_port + $1)) \
    "$listeners" "$sync" "$(connection_json "$policies")"
}

admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
tokens=()
for i in "${!rungs[@]}"; do tokens+=("$(start_rung "$i")"); done

# switches PID → context switches of all the process's threads so far
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}

# load HOST PORT DBNAME USER PASSWORD SECONDS → "tps p50_us_per_statement statements"
load() {
  local out
  if [ "$protocol" = pg ]; then
    local prefix="$work/latency"
    out=$(cd "$work" && PGPASSWORD=$5 pgbench -n -S -T "$6" -c "$clients" -j "$clients" \
      -h "$1" -p "$2" -U "$4" -l --log-prefix="$prefix" "$3" 2>&1) || {
      echo "pgbench through port $2 failed:" >&2
      echo "$out" >&2
      exit 1
    }
    # Per-transaction log: the third column is the latency in microseconds.
    echo "$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)" \
      "$(cat "$prefix".* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.5) + 1] }')" \
      "$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')"
    rm -f "$prefix".*
  else
    out=$(sb --mysql-host="$1" --mysql-port="$2" --mysql-user="$4" --mysql-password="$5" \
      --mysql-db="$3" --threads="$clients" --time="$6" --percentile=50 run 2>&1) || {
      echo "sysbench through port $2 failed:" >&2
      echo "$out" >&2
      exit 1
    }
    # A transaction's median latency (ms) over its 16 statements.
    echo "$(echo "$out" | sed -n 's/.*transactions: .*(\([0-9.]*\) per sec.*/\1/p')" \
      "$(echo "$out" | sed -n 's/.*50th percentile: *\([0-9.]*\).*/\1/p' | awk '{ printf "%d", $1 * 1000 / 16 }')" \
      "$(echo "$out" | sed -n 's/^ *total: *\([0-9]*\)$/\1/p' | head -1)"
  fi
}

# fdatasync calls per statement, counted by perf while a run goes, where it can.
syncs_counted=""
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_fdatasync true >/dev/null 2>&1; then
  syncs_counted=1
fi
# measure PID HOST PORT DBNAME USER PASSWORD →
#   "tps p50_us cpu_us/stmt switches/stmt fdatasync/stmt kernel_us/stmt"
# (PID "-": direct, no proxy to count)
measure() {
  local pid=$1 cpu=0 sw=0 c1=0 s1=0 k0=0 k1=0 syncs=- tps p50 n counter=""
  shift
  load "$@" 2 >/dev/null
  if [ "$pid" != - ]; then
    cpu=$(cpu_us "$pid")
    k0=$(sys_us "$pid")
    sw=$(switches "$pid")
    if [ -n "$syncs_counted" ]; then
      rm -f "$work/syncs"
      perf stat -x, -e syscalls:sys_enter_fdatasync -p "$pid" -o "$work/syncs" -- sleep "$seconds" \
        >/dev/null 2>&1 &
      counter=$!
    fi
  fi
  read -r tps p50 n < <(load "$@" "$seconds")
  if [ "$pid" != - ]; then
    c1=$(cpu_us "$pid")
    k1=$(sys_us "$pid")
    s1=$(switches "$pid")
    if [ -n "$syncs_counted" ]; then
      # Its own pid: the process substitution above has since set $!.
      wait "$counter" 2>/dev/null || true
      syncs=$(awk -F, -v n="$n" '/^#/ || NF < 3 { next } { printf "%.2f", $1 / n }' "$work/syncs" 2>/dev/null)
      [ -n "$syncs" ] || syncs=-
    fi
  fi
  awk -v tps="$tps" -v p50="$p50" -v c0="$cpu" -v c1="$c1" -v s0="$sw" -v s1="$s1" -v n="$n" \
    -v syncs="$syncs" -v k0="$k0" -v k1="$k1" 'BEGIN {
      printf "%.0f %d %.1f %.2f %s %.1f\n", tps, p50, (c1 - c0) / n, (s1 - s0) / n, syncs, (k1 - k0) / n }'
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Rows: direct, the peer, then the rungs; a target says how to reach each.
names=(direct) targets=("- ${direct[*]}")
if [ "$protocol" = pg ]; then
  peer_pid=$(start_pgbouncer "$peer_port")
  names+=(pgbouncer) targets+=("$peer_pid 127.0.0.1 $peer_port warden_bench warden_t_scram scram-pw-1")
else
  peer_pid=$(start_haproxy "$peer_port" "$WARDEN_TEST_MYSQL_HOSTPORT")
  names+=(haproxy) targets+=("$peer_pid 127.0.0.1 $peer_port ${direct[*]:2}")
fi
for i in "${!rungs[@]}"; do
  names+=("${rungs[$i]%% *}")
  targets+=("$(cat "$work/rung$i.pid") 127.0.0.1 $((port + i)) bench bench ${tokens[$i]}")
done
declare -A tps p50 cpu sw syncs kernel
for round in $(seq 1 "$rounds"); do
  log "round $round of $rounds"
  for i in "${!names[@]}"; do
    # shellcheck disable=SC2086
    read -r t l c s f k < <(measure ${targets[$i]})
    tps[$i]+="$t " p50[$i]+="$l " cpu[$i]+="$c " sw[$i]+="$s " syncs[$i]+="$f " kernel[$i]+="$k "
  done
done

if [ "$protocol" = pg ]; then what="pgbench -S"; else what="sysbench oltp_read_only"; fi
printf '\n%s, %s clients, %s rounds of %ss (medians; every Warden rung is the ablation build)\n' \
  "$what" "$clients" "$rounds" "$seconds"
printf '%-11s %8s %9s %8s %9s %12s %8s %10s %10s %9s %10s\n' row tps "x direct" p50_us +p50_us \
  cpu_us/stmt "x first" "step cpu" "of it kern" switches fdatasync
d_tps=$(echo "${tps[0]}" | median)
d_p50=$(echo "${p50[0]}" | median)
first_cpu=$(echo "${cpu[1]}" | median)
prev=""
for i in "${!names[@]}"; do
  t=$(echo "${tps[$i]}" | median) l=$(echo "${p50[$i]}" | median)
  c=- ratio=- step=- s=- f=- k=-
  if [ "$i" -ge 1 ]; then
    c=$(echo "${cpu[$i]}" | median) s=$(echo "${sw[$i]}" | median) f=$(echo "${syncs[$i]}" | median)
    k=$(echo "${kernel[$i]}" | median)
    ratio=$(awk -v a="$c" -v b="$first_cpu" 'BEGIN { printf "%.2f", a / b }')
    [ -z "$prev" ] || step=$(awk -v a="$c" -v b="$prev" 'BEGIN { printf "%+.1f", a - b }')
    prev=$c
  fi
  printf '%-11s %8s %9s %8s %9s %12s %8s %10s %10s %9s %10s\n' "${names[$i]}" "$t" \
    "$(awk -v a="$t" -v b="$d_tps" 'BEGIN { printf "%.2f", a / b }')" "$l" "$((l - d_p50))" \
    "$c" "$ratio" "$step" "$k" "$s" "$f"
done
echo "(tps: transactions per second; latency and CPU per statement; x first: CPU against the"
echo " first proxy row's; step: CPU against the row above; of it kern: the part of the CPU"
echo " spent in the kernel, which the proxy's own code does not count under callgrind)"

# --- instructions per statement per rung: the repeatable figure --------------------
if [ "${BENCH_INSTRUCTIONS:-1}" = 1 ]; then
  ensure_packages valgrind valgrind
  for i in "${!rungs[@]}"; do kill "$(cat "$work/rung$i.pid")" 2>/dev/null || true; done
  printf '\ninstructions per statement (callgrind, user space only, 4 clients)\n'
  printf '%-11s %12s\n' rung instructions
  sysbench_statements() { # TRANSACTIONS → statements run (through $cg_port with $cg_token)
    sb --mysql-host=127.0.0.1 --mysql-port="$cg_port" --mysql-user=bench --mysql-password="$cg_token" \
      --mysql-db=bench --threads=4 --time=0 --events="$1" run 2>&1 |
      sed -n 's/^ *total: *\([0-9]*\)$/\1/p' | head -1
  }
  for i in "${!rungs[@]}"; do
    rm -rf "$work/rung$i-data"
    cg_token=$(start_rung "$i" "valgrind --tool=callgrind --callgrind-out-file=$work/cg.$i.%p")
    cg_port=$((port + i))
    pid=$(cat "$work/rung$i.pid")
    if [ "$protocol" = pg ]; then
      n=$(callgrind_per_stmt "$pid" "$work/cg.$i" "$cg_port" bench bench "$cg_token")
    else
      n=$(callgrind_per_unit "$pid" "$work/cg.$i" sysbench_statements 20 $((20 + ${CG_TRANSACTIONS:-60})))
    fi
    printf '%-11s %12s\n' "${rungs[$i]%% *}" "$n"
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  done
fi

# --- what one flush costs this disk ------------------------------------------------
# A synced journal pays one pwrite + fdatasync per group of statements; this is that
# pair alone, on the filesystem the journals are on, in a loop (Python's own share of
# the CPU is the `pwrite alone` line's, at most).
printf '\nwhat a flush costs here (%s)\n' "$(df --output=fstype "$work" | tail -1)"
python3 - "$work/flush-probe" <<'PY'
import os, resource, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b"\0" * (4 << 20), 0)
os.fsync(fd)
line = b"x" * 1023 + b"\n"
for sync in (False, True):
    n = 2000
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for i in range(n):
        os.pwrite(fd, line, i * len(line))
        if sync:
            os.fdatasync(fd)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n * 1e6
    wall = (t1 - t0) / n * 1e6
    what = "pwrite + fdatasync" if sync else "pwrite alone      "
    print(f"{what} of 1 KiB: {cpu:6.1f} us of CPU, {wall:6.0f} us of wall time each")
PY
