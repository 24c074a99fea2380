#!/usr/bin/env bash
# Soak: N pgbench clients (`-S`, one primary-key SELECT per transaction) through a
# release Warden (audit synced to disk, recording and masking on) against the real
# PostgreSQL for a bounded time, then the gateway idles. Prints what the issue that
# asked for it wants to know: peak and settled memory (RSS), peak open descriptors,
# and lost audit events (statements pgbench completed that have no `pg.query` event
# in the store once the journal has shipped).
#
#   scripts/soak.sh                                  # 40 clients, 60 s
#   SOAK_CLIENTS=200 SOAK_SECONDS=120 scripts/soak.sh
#   SOAK_ROUNDS=3 scripts/soak.sh                    # load, idle, three times over:
#                                                    # does settled memory stay flat?
#
# Not a test: nothing here asserts on time. Exit status 1 when an event was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

clients=${SOAK_CLIENTS:-40}
seconds=${SOAK_SECONDS:-60}
idle=${SOAK_IDLE_SECONDS:-15}
rounds=${SOAK_ROUNDS:-1}
scale=${SOAK_SCALE:-5}
api_port=${SOAK_API_PORT:-18109}
pg_port=${SOAK_PG_PORT:-18532}

ensure_packages psql postgresql-client pgbench postgresql-client curl curl
setup_postgres
log "building warden (release)"
cargo build --release -q -p warden

bench_work_dir

admin_url=$WARDEN_TEST_PG_URL
psql "$admin_url" -qc "DROP DATABASE IF EXISTS warden_soak" >/dev/null
psql "$admin_url" -qc "CREATE DATABASE warden_soak OWNER warden_t_scram" >/dev/null
log "pgbench -i -s $scale"
PGPASSWORD=scram-pw-1 pgbench -q -i -s "$scale" -h 127.0.0.1 -U warden_t_scram warden_soak 2>/dev/null

admin_token="soak-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
token=$(start_bench_warden soak "$api_port" "[pg]
listen = \"127.0.0.1:$pg_port\"
[mysql]
enabled = false" true '{"name":"soak","kind":"postgres","target":"127.0.0.1:5432/warden_soak",
    "username":"warden_t_scram","secret":"scram-pw-1","allowed_groups":["bench"],
    "policies":{"guardrails":["no-drops"],"masking":["pii"]},"tls":{"mode":"disable"}}')
pid=$(cat "$work/soak.pid")

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }

base_rss=$(rss_kb)
# Samples memory and descriptors every half second until told to stop.
(
  peak_rss=0 peak_fds=0
  while [ ! -e "$work/stop-sampling" ]; do
    r=$(rss_kb) f=$(fds)
    [ "$r" -gt "$peak_rss" ] && peak_rss=$r
    [ "$f" -gt "$peak_fds" ] && peak_fds=$f
    echo "$peak_rss $peak_fds" >"$work/peaks"
    sleep 0.5
  done
) &
echo $! >>"$work/pids"

statements=0 settled=()
for round in $(seq 1 "$rounds"); do
  log "round $round of $rounds: pgbench -S: $clients clients, $seconds s, through Warden"
  out=$(cd "$work" && PGPASSWORD=$token pgbench -n -S -T "$seconds" -c "$clients" -j 2 \
    -h 127.0.0.1 -p "$pg_port" -U soak soak 2>&1) || { echo "$out" >&2; exit 1; }
  done_now=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  statements=$((statements + done_now))
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1)
  log "idling $idle s"
  sleep "$idle"
  settled+=("$(($(rss_kb) / 1024))")
done
touch "$work/stop-sampling"
sleep 1
read -r peak_rss peak_fds <"$work/peaks"

# Everything journaled is shipped before the count: verify ships first.
curl -fsS -H "Authorization: Bearer $admin_token" "http://127.0.0.1:$api_port/api/audit/verify" \
  >"$work/verify.json"
events=$(python3 - "$work/soak-data/warden.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
n = db.execute(
    "SELECT count(*) FROM audit_events WHERE kind = 'pg.query' "
    "AND body LIKE '%SELECT abalance FROM pgbench_accounts WHERE aid%'"
).fetchone()[0]
print(n)
EOF
)
lost=$((statements > events ? statements - events : 0))

printf '\n%-28s %s\n' "clients" "$clients"
printf '%-28s %s x %s s (each then %s s idle)\n' "load" "$rounds" "$seconds" "$idle"
printf '%-28s %s (%s tps in the last round)\n' "statements completed" "$statements" "$tps"
printf '%-28s %s\n' "pg.query events stored" "$events"
printf '%-28s %s\n' "lost events" "$lost"
printf '%-28s %s MB\n' "RSS at start" "$((base_rss / 1024))"
printf '%-28s %s MB\n' "peak RSS under load" "$((peak_rss / 1024))"
printf '%-28s %s MB\n' "RSS after each idle" "${settled[*]}"
printf '%-28s %s\n' "peak open descriptors" "$peak_fds"
printf '%-28s %s\n' "audit verify" "$(grep -o '"ok":[a-z]*' "$work/verify.json")"
[ "$lost" -eq 0 ]
