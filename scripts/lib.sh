# Shared by scripts/test.sh and scripts/bench-pg.sh: sourced, not run.
log() { printf '==> %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs the Debian packages named for each missing command: `ensure_packages cmd pkg ...`.
ensure_packages() {
  local missing=()
  while [ $# -ge 2 ]; do
    command -v "$1" >/dev/null || missing+=("$2")
    shift 2
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Starts the machine's PostgreSQL if needed, lets the postgres superuser in over
# loopback, and creates the password-auth roles the proxy tests and benchmark use.
setup_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    version=$(ls /etc/postgresql | sort -n | tail -1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
  export WARDEN_TEST_PG_URL="${WARDEN_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  if ! psql "$WARDEN_TEST_PG_URL" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    # A stock Debian cluster wants a password over TCP: trust the superuser on loopback
    # for the tests (they log in as the client tools do, with no password).
    log "allowing trust login for postgres on 127.0.0.1 (test cluster)"
    hba=$(as_root su postgres -c "psql -qAtc 'SHOW hba_file'")
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    as_root su postgres -c "psql -qc 'SELECT pg_reload_conf()'" >/dev/null
    sleep 1
    psql "$WARDEN_TEST_PG_URL" -qAtc 'SELECT 1' >/dev/null
  fi
  # Roles that make the server ask for each password method the PostgreSQL proxy must
  # speak to backends: SCRAM-SHA-256, md5 and cleartext (pg_hba rules first in the file).
  hba=$(psql "$WARDEN_TEST_PG_URL" -qAtc 'SHOW hba_file')
  if ! as_root grep -q 'warden_t_scram' "$hba"; then
    log "adding password-auth test roles to $hba"
    as_root sed -i '1i host all warden_t_scram 127.0.0.1/32 scram-sha-256\nhost all warden_t_md5 127.0.0.1/32 md5\nhost all warden_t_clear 127.0.0.1/32 password' "$hba"
    psql "$WARDEN_TEST_PG_URL" -qc 'SELECT pg_reload_conf()' >/dev/null
  fi
  psql "$WARDEN_TEST_PG_URL" -q >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'warden_t_scram') THEN CREATE ROLE warden_t_scram LOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'warden_t_md5') THEN CREATE ROLE warden_t_md5 LOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'warden_t_clear') THEN CREATE ROLE warden_t_clear LOGIN; END IF;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE warden_t_scram PASSWORD 'scram-pw-1';
ALTER ROLE warden_t_clear PASSWORD 'clear-pw-1';
SET password_encryption = 'md5';
ALTER ROLE warden_t_md5 PASSWORD 'md5-pw-1';
SQL
}

# Starts the machine's MariaDB if needed and creates the accounts the MySQL proxy
# tests and benchmark log in with: one per authentication plugin the proxy must
# speak to servers (mysql_native_password, MariaDB's ed25519).
setup_mariadb() {
  export WARDEN_TEST_MYSQL_HOSTPORT="${WARDEN_TEST_MYSQL_HOSTPORT:-127.0.0.1:3306}"
  if ! mysqladmin -h127.0.0.1 -uroot status >/dev/null 2>&1; then
    log "starting MariaDB"
    # A fresh install may not have its socket directory yet; without it mariadbd exits.
    as_root install -d -o mysql -g mysql /run/mysqld
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    for _ in $(seq 1 30); do mysqladmin -h127.0.0.1 -uroot status >/dev/null 2>&1 && break; sleep 1; done
  fi
  if ! mysql -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    # A stock Debian root logs in only through the socket as the system root: let it
    # in over loopback without a password too (test server only), as for PostgreSQL.
    log "allowing root on 127.0.0.1 without a password (test server)"
    for _ in $(seq 1 30); do as_root mysqladmin -uroot status >/dev/null 2>&1 && break; sleep 1; done
    as_root mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES"
  fi
  if [ "$(mysql -h127.0.0.1 -uroot -NBe "SELECT COUNT(*) FROM information_schema.plugins WHERE plugin_name = 'ed25519'")" = 0 ]; then
    mysql -h127.0.0.1 -uroot -e "INSTALL SONAME 'auth_ed25519'"
  fi
  mysql -h127.0.0.1 -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'warden_t_native'@'%';
ALTER USER 'warden_t_native'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('native-pw-1');
CREATE USER IF NOT EXISTS 'warden_t_ed'@'%';
ALTER USER 'warden_t_ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed-pw-1');
GRANT ALL ON `warden\_t%`.* TO 'warden_t_native'@'%';
GRANT ALL ON `warden\_t%`.* TO 'warden_t_ed'@'%';
CREATE DATABASE IF NOT EXISTS warden_t;
-- Values over 16 MiB must cross the proxy in several packets.
SET GLOBAL max_allowed_packet = 67108864;
SQL
}

# A second MariaDB that speaks TLS (the machine's own runs without), for the proxy's
# verified backend TLS: Debian's snakeoil certificate, as for PostgreSQL, on 3307,
# with an account that may only log in over TLS.
setup_mariadb_tls() {
  export WARDEN_TEST_MYSQL_TLS_HOSTPORT="${WARDEN_TEST_MYSQL_TLS_HOSTPORT:-127.0.0.1:3307}"
  local dir=/var/tmp/warden-test-mariadb-tls
  if ! mysqladmin -h127.0.0.1 -P3307 -uroot status >/dev/null 2>&1; then
    ensure_packages make-ssl-cert ssl-cert
    [ -f /etc/ssl/private/ssl-cert-snakeoil.key ] || as_root make-ssl-cert generate-default-snakeoil
    log "starting a TLS MariaDB on 127.0.0.1:3307"
    as_root rm -rf "$dir"
    as_root mkdir -p "$dir"
    as_root install -o mysql -m 600 /etc/ssl/private/ssl-cert-snakeoil.key "$dir/server.key"
    as_root install -o mysql -m 644 /etc/ssl/certs/ssl-cert-snakeoil.pem "$dir/server.pem"
    as_root chown mysql "$dir"
    as_root mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" \
      --auth-root-authentication-method=normal --skip-test-db >/dev/null
    as_root start-stop-daemon --start --background --pidfile "$dir/daemon.pid" --make-pidfile \
      --exec /usr/sbin/mariadbd -- \
      --no-defaults --user=mysql --datadir="$dir/data" --socket="$dir/mysqld.sock" \
      --pid-file="$dir/mysqld.pid" --port=3307 --bind-address=127.0.0.1 \
      --innodb-buffer-pool-size=16M --ssl-cert="$dir/server.pem" --ssl-key="$dir/server.key"
    for _ in $(seq 1 30); do mysqladmin -h127.0.0.1 -P3307 -uroot status >/dev/null 2>&1 && break; sleep 1; done
  fi
  mysql -h127.0.0.1 -P3307 -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'warden_t_tls'@'%';
ALTER USER 'warden_t_tls'@'%' IDENTIFIED BY 'tls-pw-1' REQUIRE SSL;
CREATE DATABASE IF NOT EXISTS warden_t;
GRANT ALL ON warden_t.* TO 'warden_t_tls'@'%';
SQL
}

# Starts an OpenSSH server for the SSH proxy tests on 127.0.0.1:2201 with its own
# config, host key and user `warden_t` (password ssh-pw-1; the key Warden holds,
# $dir/warden_t_key, is authorized). Idempotent: a running one is kept.
setup_sshd() {
  export WARDEN_TEST_SSHD_DIR="${WARDEN_TEST_SSHD_DIR:-/var/tmp/warden-test-sshd}"
  export WARDEN_TEST_SSHD_PORT="${WARDEN_TEST_SSHD_PORT:-2201}"
  local dir=$WARDEN_TEST_SSHD_DIR port=$WARDEN_TEST_SSHD_PORT
  ensure_packages sshd openssh-server ssh openssh-client sshpass sshpass asciinema asciinema
  if ! id warden_t >/dev/null 2>&1; then
    as_root useradd --create-home --shell /bin/bash warden_t
  fi
  echo 'warden_t:ssh-pw-1' | as_root chpasswd
  if [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; then
    return 0
  fi
  log "starting an OpenSSH server on 127.0.0.1:$port"
  as_root rm -rf "$dir"
  as_root mkdir -p "$dir/authorized" /run/sshd
  as_root ssh-keygen -q -t ed25519 -N '' -C warden-test-host -f "$dir/host_ed25519"
  as_root ssh-keygen -q -t ed25519 -N '' -C warden-held-key -f "$dir/warden_t_key"
  as_root install -m 644 "$dir/warden_t_key.pub" "$dir/authorized/warden_t"
  as_root tee "$dir/sshd_config" >/dev/null <<EOF2
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized/%u
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers warden_t
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
MaxSessions 32
MaxStartups 100:30:200
Subsystem sftp internal-sftp
LogLevel VERBOSE
EOF2
  as_root /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  for _ in $(seq 1 50); do [ -f "$dir/sshd.pid" ] && break; sleep 0.1; done
  # The tests read the held key; keep it readable by the user running them.
  as_root chmod 755 "$dir"
  as_root chmod 644 "$dir/warden_t_key" "$dir/host_ed25519.pub"
}

# For the benchmarks: starts a release Warden in "$work" with the benchmark policies,
# adds one connection and prints an API key that may use it. The caller sets
# $work and $admin_token and kills the pids listed in "$work/pids".
#   start_bench_warden NAME API_PORT LISTENER_TOML JOURNAL_SYNC CONNECTION_JSON
start_bench_warden() {
  local name=$1 api_port=$2 listeners=$3 sync=$4 connection=$5
  # Listeners a benchmark does not name stay off (two Wardens run side by side).
  case $listeners in *"[ssh]"*) ;; *) listeners="$listeners
[ssh]
enabled = false" ;; esac
  cat >"$work/$name.toml" <<EOF2
data_dir = "$work/$name-data"
[api]
listen = "127.0.0.1:$api_port"
$listeners
[audit]
journal_sync = $sync

[[policies.guardrails]]
name = "no-drops"
[[policies.guardrails.rules]]
name = "no-ddl"
sql_statements = ["ddl"]

[[policies.masking]]
name = "pii"
detectors = ["email", "card_number"]
EOF2
  # BENCH_WRAPPER runs the gateway under a tool (valgrind), which starts it slowly.
  # shellcheck disable=SC2086
  WARDEN_ADMIN_TOKEN=$admin_token ${BENCH_WRAPPER:-} target/release/warden gateway --config "$work/$name.toml" \
    >"$work/$name.out" 2>"$work/$name.err" &
  echo $! >>"$work/pids"
  echo $! >"$work/$name.pid"
  for _ in $(seq 1 1200); do grep -q "listening on http" "$work/$name.out" && break; sleep 0.1; done
  grep -q "listening on http" "$work/$name.out" || { cat "$work/$name.err" >&2; exit 1; }
  local api=http://127.0.0.1:$api_port
  curl -fsS -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d "$connection" "$api/api/connections" >/dev/null
  curl -fsS -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d '{"name":"bench","groups":["bench"]}' "$api/api/api-keys" | grep -o '"token":"[^"]*"' | cut -d'"' -f4
}

# cpu_us PID → the CPU time (user + system) the process has used so far, in µs.
cpu_us() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1000000 / hz }' "/proc/$1/stat"
}

# For the benchmarks' repeatable figure: the instructions a proxy running under
# `valgrind --tool=callgrind --callgrind-out-file=OUT.%p` spends per unit of work
# (a statement, a MiB). Two runs of the load, a small and a big one, each counted from
# zero: their difference leaves out what does not depend on the amount of work (the
# logins: SCRAM alone is millions of instructions). Counting instructions, not time,
# it is the same figure whatever else the machine does.
#   callgrind_per_unit PID OUT LOAD SMALL BIG
# LOAD is a command run as `LOAD N`; it does N rounds of work and prints how many
# units they were.
callgrind_per_unit() {
  local pid=$1 out=$2 load=$3 counts=() units=()
  for n in "$4" "$5"; do
    callgrind_control -z "$pid" >/dev/null 2>&1
    units+=("$("$load" "$n")")
    callgrind_control -d "$pid" >/dev/null 2>&1
    counts+=("$(awk '/^summary:/ { print $2 }' "$(ls -t "$out.$pid".* | head -1)")")
  done
  awk -v a="${counts[0]}" -v b="${counts[1]}" -v ua="${units[0]}" -v ub="${units[1]}" \
    'BEGIN { printf "%.0f\n", (b - a) / (ub - ua) }'
}

# callgrind_per_unit for pgbench -S through a proxy: 4 clients, 100 and 100 +
# CG_STATEMENTS (500) statements each.
#   callgrind_per_stmt PID OUT PORT DBNAME USER PASSWORD
callgrind_per_stmt() {
  CG_PG=("$3" "$4" "$5" "$6")
  callgrind_per_unit "$1" "$2" pgbench_statements 100 $((100 + ${CG_STATEMENTS:-500}))
}
pgbench_statements() {
  PGPASSWORD=${CG_PG[3]} pgbench -n -S -t "$1" -c 4 -j 4 -h 127.0.0.1 -p "${CG_PG[0]}" \
    -U "${CG_PG[2]}" "${CG_PG[1]}" >/dev/null 2>&1
  echo $((4 * $1))
}
