#!/usr/bin/env bash
# The network agent benchmark: one gateway, two connections to each target, one
# dialed directly and one through a `warden agent` (its tunnel over TLS to the API
# port, as deployed), in the same run:
#   - `pgbench -S` (one primary-key SELECT per transaction) at 1 and 8 clients;
#   - scp of a 256 MiB file up and down (SFTP) through the SSH proxy.
# Prints each figure, the ratio agent / direct, and the agent's CPU time per
# statement and per MiB; then the repeatable figure: the agent's instructions per
# statement under callgrind (`BENCH_INSTRUCTIONS=0` skips it).
#
#   scripts/bench-agent.sh
#   BENCH_SECONDS=30 BENCH_MIB=512 scripts/bench-agent.sh
#
# Gateway and agent share this machine's loopback (and its two cores with pgbench,
# PostgreSQL and OpenSSH): the figures are what the extra hop costs, not a network's.
# Not a test: nothing here asserts on time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CLIENTS:-"1 8"}
mib=${BENCH_MIB:-256}
pg_port=${BENCH_WARDEN_PORT:-18532}
ssh_port=${BENCH_SSH_PORT:-12322}
api_port=${BENCH_API_PORT:-18109}

ensure_packages psql postgresql-client pgbench postgresql-client curl curl \
  openssl openssl python3 python3
setup_postgres
setup_sshd
log "building warden (release)"
cargo build --release -q -p warden

bench_work_dir "/tmp/warden-bench-agent-$$"

admin_url=$WARDEN_TEST_PG_URL
psql "$admin_url" -qc "DROP DATABASE IF EXISTS warden_bench" >/dev/null
psql "$admin_url" -qc "CREATE DATABASE warden_bench OWNER warden_t_scram" >/dev/null
log "pgbench -i -s 5"
PGPASSWORD=scram-pw-1 pgbench -q -i -s 5 -h 127.0.0.1 -U warden_t_scram warden_bench 2>/dev/null

# The API on TLS, as an agent needs it off this machine.
(cd "$work" && {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days 2 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout gw.key \
    -out gw.csr -subj /CN=gw
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >gw.ext
  openssl x509 -req -in gw.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out gw.pem \
    -days 2 -extfile gw.ext
}) >/dev/null 2>&1

admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
pg_connection() {
  printf '{"name":"%s","kind":"postgres","target":"127.0.0.1:5432/warden_bench",
    "username":"warden_t_scram","secret":"scram-pw-1","allowed_groups":["bench"],
    "policies":{"guardrails":["no-drops"],"masking":["pii"]},"tls":{"mode":"disable"}%s}' "$1" "$2"
}
export WARDEN_API__TLS_CERT=$work/gw.pem WARDEN_API__TLS_KEY=$work/gw.key BENCH_API_CA=$work/ca.pem
token=$(start_bench_warden warden "$api_port" "[pg]
listen = \"127.0.0.1:$pg_port\"
[mysql]
enabled = false
[ssh]
listen = \"127.0.0.1:$ssh_port\"" true "$(pg_connection direct '')")
unset WARDEN_API__TLS_CERT WARDEN_API__TLS_KEY
api=https://127.0.0.1:$api_port
curl_admin() { curl -fsS --cacert "$work/ca.pem" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' "$@"; }
agent_key=$(curl_admin -d '{"name":"bench-agent"}' "$api/api/agents" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
curl_admin -d "$(pg_connection via-agent ',"agent":"bench-agent"')" "$api/api/connections" >/dev/null
for name in box-direct box-agent; do
  python3 - "$WARDEN_TEST_SSHD_DIR" "$WARDEN_TEST_SSHD_PORT" "$name" >"$work/ssh.json" <<'PY'
import json, sys
d, port, name = sys.argv[1], sys.argv[2], sys.argv[3]
conn = {"name": name, "kind": "ssh", "target": f"127.0.0.1:{port}", "username": "warden_t",
        "secret": open(f"{d}/warden_t_key").read(), "allowed_groups": ["bench"],
        "ssh": {"host_key": open(f"{d}/host_ed25519.pub").read()}}
if name == "box-agent":
    conn["agent"] = "bench-agent"
print(json.dumps(conn))
PY
  curl_admin -d @"$work/ssh.json" "$api/api/connections" >/dev/null
done

# start_agent [WRAPPER...]: the agent on this machine (TLS to the API, its CA pinned),
# allowed only the two targets.
start_agent() {
  WARDEN_AGENT_KEY=$agent_key "$@" target/release/warden agent --gateway "$api" --ca "$work/ca.pem" \
    --allow "127.0.0.1:5432,127.0.0.1:$WARDEN_TEST_SSHD_PORT" >"$work/agent.out" 2>"$work/agent.err" &
  echo $! >>"$work/pids"
  echo $! >"$work/agent.pid"
  for _ in $(seq 1 600); do
    curl_admin "$api/api/agents/bench-agent" | grep -q '"status":"online"' && return
    sleep 0.1
  done
  cat "$work/agent.err" >&2
  exit 1
}
start_agent
agent_pid=$(cat "$work/agent.pid")

# pg DBNAME CLIENTS → "tps p50_us agent_cpu_us_per_statement"
pg() {
  local before out tps done_tx p50 prefix="$work/log-$1-$2"
  before=$(cpu_us "$agent_pid")
  out=$(cd "$work" && PGPASSWORD=$token pgbench -n -S -T "$seconds" -c "$2" -j "$2" \
    -h 127.0.0.1 -p "$pg_port" -U bench -l --log-prefix="$prefix" "$1" 2>&1) || {
    echo "pgbench $1 failed: $out" >&2
    exit 1
  }
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)
  done_tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  p50=$(cat "$prefix".* | awk '{print $3}' | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.5) + 1] }')
  rm -f "$prefix".*
  echo "$tps $p50 $(awk -v a="$before" -v b="$(cpu_us "$agent_pid")" -v n="$done_tx" 'BEGIN { printf "%.1f", (b - a) / n }')"
}

printf '\npgbench -S through the gateway, direct vs through the agent (%s s each)\n' "$seconds"
printf '%-8s %10s %10s %7s %11s %11s %9s %16s\n' clients direct_tps agent_tps ratio direct_p50us agent_p50us added_us agent_cpu_us/stmt
for c in $clients; do
  read -r d_tps d_p50 _ <<<"$(pg direct "$c")"
  read -r a_tps a_p50 a_cpu <<<"$(pg via-agent "$c")"
  printf '%-8s %10.0f %10.0f %7.2f %11s %11s %9s %16s\n' "$c" "$d_tps" "$a_tps" \
    "$(awk -v a="$a_tps" -v d="$d_tps" 'BEGIN { print a / d }')" "$d_p50" "$a_p50" \
    "$((a_p50 - d_p50))" "$a_cpu"
done

# --- scp --------------------------------------------------------------------------
head -c $((mib * 1024 * 1024)) /dev/urandom >"$work/big"
remote=/tmp/warden-bench-agent-$$
opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o PubkeyAuthentication=no -o BatchMode=no -P "$ssh_port")
now() { date +%s.%N; }
timed() { local t0; t0=$(now); SSHPASS=$token sshpass -e "$@" >/dev/null; awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }'; }
rate() { awk -v s="$1" -v m="$mib" 'BEGIN { printf "%.0f", m / s }'; }
printf '\nscp of %s MiB through the SSH proxy, direct vs through the agent\n' "$mib"
printf '%-8s %10s %12s %17s %19s\n' path up_MiB/s down_MiB/s agent_ms/MiB_up agent_ms/MiB_down
declare -A up down
for conn in box-direct box-agent; do
  before=$(cpu_us "$agent_pid")
  t=$(timed scp "${opts[@]}" "$work/big" "$conn@127.0.0.1:$remote"); up[$conn]=$(rate "$t")
  mid=$(cpu_us "$agent_pid")
  t=$(timed scp "${opts[@]}" "$conn@127.0.0.1:$remote" "$work/back"); down[$conn]=$(rate "$t")
  after=$(cpu_us "$agent_pid")
  cmp -s "$work/big" "$work/back" || { echo "scp $conn: the file changed" >&2; exit 1; }
  rm -f "$work/back" "$remote"
  printf '%-8s %10s %12s %17s %19s\n' "${conn#box-}" "${up[$conn]}" "${down[$conn]}" \
    "$(awk -v a="$before" -v b="$mid" -v m="$mib" 'BEGIN { printf "%.1f", (b - a) / 1000 / m }')" \
    "$(awk -v a="$mid" -v b="$after" -v m="$mib" 'BEGIN { printf "%.1f", (b - a) / 1000 / m }')"
done
printf '%-8s %10.2f %12.2f\n' ratio "$(awk -v a="${up[box-agent]}" -v d="${up[box-direct]}" 'BEGIN { print a / d }')" \
  "$(awk -v a="${down[box-agent]}" -v d="${down[box-direct]}" 'BEGIN { print a / d }')"

# --- the repeatable figure: the agent's instructions per statement ------------------
if [ "${BENCH_INSTRUCTIONS:-1}" != 0 ]; then
  ensure_packages valgrind valgrind
  kill "$agent_pid" 2>/dev/null || true
  sleep 0.5
  start_agent valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p"
  CG_PG=("$pg_port" via-agent bench "$token")
  per=$(callgrind_per_unit "$(cat "$work/agent.pid")" "$work/cg" pgbench_statements 100 600)
  printf '\nagent instructions per statement (pgbench -S, 4 clients, callgrind): %s\n' "$per"
fi
