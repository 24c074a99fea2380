#!/usr/bin/env bash
# Where a statement's cost goes: `pgbench -S` through PgBouncer and through Warden with
# its stages added one at a time, all in one run. The rungs:
#
#   direct      pgbench to PostgreSQL itself (TPS and latency only)
#   pgbouncer   the peer (session pooling)
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
# one binary, so the rungs differ only in what they do. The rungs take turns for
# BENCH_ROUNDS rounds, so the machine's drift reaches each alike, and each figure is
# the median of its rounds: TPS and its ratio to direct, the median latency and what
# it adds to direct's, the proxy's CPU time (user + system) per statement, its context
# switches and (where perf counts them) `fdatasync` calls per statement. Then the repeatable figure per rung,
# instructions per statement under callgrind (`BENCH_INSTRUCTIONS=0` skips it), and
# the floor of the synced rung: the CPU time one `pwrite` + `fdatasync` costs on the
# disk the journal is on, measured alone.
#
#   scripts/bench-ladder.sh                     # 8 clients, 3 rounds of 10 s
#   BENCH_CLIENTS=1 BENCH_ROUNDS=5 scripts/bench-ladder.sh
#
# Not a test: nothing here asserts on time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seconds=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-8}
rounds=${BENCH_ROUNDS:-3}
scale=${BENCH_SCALE:-5}
port=${BENCH_WARDEN_PORT:-18452}
api_port=${BENCH_API_PORT:-18029}
bouncer_port=${BENCH_PGBOUNCER_PORT:-16442}

ensure_packages psql postgresql-client pgbench postgresql-client pgbouncer pgbouncer \
  curl curl python3 python3
setup_postgres
log "building warden with the ablation feature (target/ablation)"
cargo build --release -q -p warden --features ablation --target-dir target/ablation
export WARDEN_BIN=target/ablation/release/warden

work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
  for p in $(cat "$work/pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

admin_url=$WARDEN_TEST_PG_URL
psql "$admin_url" -qc "DROP DATABASE IF EXISTS warden_bench" >/dev/null
psql "$admin_url" -qc "CREATE DATABASE warden_bench OWNER warden_t_scram" >/dev/null
log "pgbench -i -s $scale"
PGPASSWORD=scram-pw-1 pgbench -q -i -s "$scale" -h 127.0.0.1 -U warden_t_scram warden_bench 2>/dev/null

# The rungs: name, stages left out, policies, journal_sync.
rungs=(
  "relay journal,record none false"
  "+policies journal,record bench false"
  "+journal ship,record bench false"
  "+store record bench false"
  "+recording - bench false"
  "synced - bench true"
)
policies_json() {
  case $1 in
    none) echo '{}' ;;
    bench) echo '{"guardrails":["no-drops"],"masking":["pii"]}' ;;
  esac
}
connection_json() {
  echo '{"name":"bench","kind":"postgres","target":"127.0.0.1:5432/warden_bench",
    "username":"warden_t_scram","secret":"scram-pw-1","allowed_groups":["bench"],
    "policies":'"$(policies_json "$1")"',"tls":{"mode":"disable"}}'
}
# start_rung INDEX [WRAPPER] → an API key; the gateway's pid is in "$work/rung$INDEX.pid"
start_rung() {
  local name skip policies sync
  read -r name skip policies sync <<<"${rungs[$1]}"
  [ "$skip" = - ] && skip=""
  WARDEN_ABLATE=$skip BENCH_WRAPPER=${2:-} start_bench_warden "rung$1" $((api_port + $1)) "[pg]
listen = \"127.0.0.1:$((port + $1))\"
[mysql]
enabled = false" "$sync" "$(connection_json "$policies")"
}

admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
tokens=()
for i in "${!rungs[@]}"; do tokens+=("$(start_rung "$i")"); done

cat >"$work/pgbouncer.ini" <<EOF
[databases]
warden_bench = host=127.0.0.1 port=5432 dbname=warden_bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $work/pgbouncer.log
EOF
echo '"warden_t_scram" "scram-pw-1"' >"$work/userlist.txt"
chmod 644 "$work/pgbouncer.ini" "$work/userlist.txt"
if [ "$(id -u)" = 0 ]; then
  chown postgres "$work"
  runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
else
  pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
fi
echo $! >>"$work/pids"
for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p "$bouncer_port" && break; sleep 0.1; done
bouncer_pid=$(pgrep -n -f "pgbouncer $work/pgbouncer.ini")

# switches PID → context switches of all the process's threads so far
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}
# Counted with perf while a run goes, when it can: fdatasync calls per statement.
syncs_counted=""
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_fdatasync true >/dev/null 2>&1; then
  syncs_counted=1
fi
# measure PID PORT DBNAME USER PASSWORD → "tps p50_us cpu_us/stmt switches/stmt fdatasync/stmt"
# (PID "-": direct, no proxy to count)
measure() {
  local pid=$1 out cpu=0 sw=0 tx p50 syncs=- prefix="$work/latency"
  PGPASSWORD=$5 pgbench -n -S -T 2 -c "$clients" -j "$clients" -h 127.0.0.1 -p "$2" -U "$4" "$3" \
    >/dev/null 2>&1 || true
  if [ "$pid" != - ]; then
    cpu=$(cpu_us "$pid")
    sw=$(switches "$pid")
    if [ -n "$syncs_counted" ]; then
      perf stat -x, -e syscalls:sys_enter_fdatasync -p "$pid" -o "$work/syncs" -- sleep "$seconds" \
        >/dev/null 2>&1 &
    fi
  fi
  out=$(cd "$work" && PGPASSWORD=$5 pgbench -n -S -T "$seconds" -c "$clients" -j "$clients" \
    -h 127.0.0.1 -p "$2" -U "$4" -l --log-prefix="$prefix" "$3" 2>&1) || {
    echo "pgbench through port $2 failed:" >&2
    echo "$out" >&2
    exit 1
  }
  # Per-transaction log: the third column is the latency in microseconds.
  p50=$(cat "$prefix".* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.5) + 1] }')
  rm -f "$prefix".*
  tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  if [ "$pid" != - ] && [ -n "$syncs_counted" ]; then
    wait $! 2>/dev/null || true
    syncs=$(awk -F, -v n="$tx" '/^#/ || NF < 3 { next } { printf "%.2f", $1 / n }' "$work/syncs")
  fi
  local c1=$cpu s1=$sw
  if [ "$pid" != - ]; then c1=$(cpu_us "$pid") s1=$(switches "$pid"); fi
  awk -v tps="$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)" -v p50="$p50" \
    -v c0="$cpu" -v c1="$c1" -v s0="$sw" -v s1="$s1" -v n="$tx" -v syncs="$syncs" \
    'BEGIN { printf "%.0f %d %.1f %.2f %s\n", tps, p50, (c1 - c0) / n, (s1 - s0) / n, syncs }'
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

names=(direct pgbouncer)
for r in "${rungs[@]}"; do names+=("${r%% *}"); done
declare -A tps p50 cpu sw syncs
for round in $(seq 1 "$rounds"); do
  log "round $round of $rounds"
  for i in "${!names[@]}"; do
    case $i in
      0) read -r t l c s f < <(measure - 5432 warden_bench warden_t_scram scram-pw-1) ;;
      1) read -r t l c s f < <(measure "$bouncer_pid" "$bouncer_port" warden_bench warden_t_scram scram-pw-1) ;;
      *) read -r t l c s f < <(measure "$(cat "$work/rung$((i - 2)).pid")" $((port + i - 2)) bench bench \
        "${tokens[$((i - 2))]}") ;;
    esac
    tps[$i]+="$t " p50[$i]+="$l " cpu[$i]+="$c " sw[$i]+="$s " syncs[$i]+="$f "
  done
done

printf '\npgbench -S, %s clients, %s rounds of %ss (medians; every Warden rung is the ablation build)\n' \
  "$clients" "$rounds" "$seconds"
printf '%-11s %8s %9s %8s %9s %12s %10s %10s %9s %10s\n' rung tps "x direct" p50_us +p50_us \
  cpu_us/stmt "x bouncer" "step cpu" switches fdatasync
d_tps=$(echo "${tps[0]}" | median)
d_p50=$(echo "${p50[0]}" | median)
b_cpu=$(echo "${cpu[1]}" | median)
prev=""
for i in "${!names[@]}"; do
  t=$(echo "${tps[$i]}" | median) l=$(echo "${p50[$i]}" | median)
  c=- ratio=- step=- s=- f=-
  if [ "$i" -ge 1 ]; then
    c=$(echo "${cpu[$i]}" | median) s=$(echo "${sw[$i]}" | median) f=$(echo "${syncs[$i]}" | median)
    ratio=$(awk -v a="$c" -v b="$b_cpu" 'BEGIN { printf "%.2f", a / b }')
    [ -z "$prev" ] || step=$(awk -v a="$c" -v b="$prev" 'BEGIN { printf "%+.1f", a - b }')
    prev=$c
  fi
  printf '%-11s %8s %9s %8s %9s %12s %10s %10s %9s %10s\n' "${names[$i]}" "$t" \
    "$(awk -v a="$t" -v b="$d_tps" 'BEGIN { printf "%.2f", a / b }')" "$l" "$((l - d_p50))" \
    "$c" "$ratio" "$step" "$s" "$f"
done

# --- instructions per statement per rung: the repeatable figure --------------------
if [ "${BENCH_INSTRUCTIONS:-1}" = 1 ]; then
  ensure_packages valgrind valgrind
  for i in "${!rungs[@]}"; do kill "$(cat "$work/rung$i.pid")" 2>/dev/null || true; done
  printf '\ninstructions per statement (callgrind, user space only, 4 clients x %s statements)\n' \
    "${CG_STATEMENTS:-500}"
  printf '%-11s %12s\n' rung instructions
  for i in "${!rungs[@]}"; do
    rm -rf "$work/rung$i-data"
    t=$(start_rung "$i" "valgrind --tool=callgrind --callgrind-out-file=$work/cg.$i.%p")
    pid=$(cat "$work/rung$i.pid")
    printf '%-11s %12s\n' "${rungs[$i]%% *}" "$(callgrind_per_stmt "$pid" "$work/cg.$i" $((port + i)) bench bench "$t")"
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  done
fi

# --- what one flush costs this disk ------------------------------------------------
# A synced journal pays one pwrite + fdatasync per group of statements; this is that
# pair alone, on the filesystem the journals are on, in a loop (Python's own share of
# the CPU is the `pwrite alone` line's, at most).
printf '\nwhat a flush costs here (%s)\n' "$(df --output=fstype "$work" | tail -1)"
python3 - "$work/flush-probe" <<'EOF'
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
EOF
