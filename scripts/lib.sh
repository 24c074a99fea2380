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

# Runs a daemon in its own session, so that it outlives the script that starts it and
# its terminal: `start_daemon PIDFILE LOGFILE CMD ARGS...`; its pid goes to PIDFILE.
start_daemon() {
  local pidfile=$1 logfile=$2
  shift 2
  rm -f "$pidfile"
  # shellcheck disable=SC2016
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >"$logfile" 2>&1 </dev/null &
  for _ in $(seq 1 100); do [ -s "$pidfile" ] && return 0; sleep 0.02; done
  echo "$1 did not start" >&2
  return 1
}

# Stops the daemon PIDFILE names if it is alive and still ours (its command line holds
# MARK: a pid from an old run may name another process by now), with SIGNAL (TERM):
# `stop_daemon PIDFILE MARK [SIGNAL]`.
stop_daemon() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$2" || return 0
  kill -s "${3:-TERM}" "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# go-httpbin on 127.0.0.1:18080: an HTTP service for the proxy tests, and what the
# Kubernetes test pods' port-forwards reach. Built once into a versioned cache
# directory (marked complete when built), as scripts/k8s-stack.sh does. Idempotent.
setup_httpbin() {
  local version=2.26.0 dir=/var/tmp/warden-test-httpbin
  local bin=/var/cache/warden-test/go-httpbin-$version
  export WARDEN_TEST_HTTPBIN_URL=http://127.0.0.1:18080
  if [ -f "$dir/httpbin.pid" ] && kill -0 "$(cat "$dir/httpbin.pid")" 2>/dev/null &&
    curl -fsS -o /dev/null "$WARDEN_TEST_HTTPBIN_URL/status/200"; then
    return 0
  fi
  if [ ! -f "$bin/.complete" ]; then
    log "building go-httpbin $version"
    mkdir -p "$bin"
    GOBIN=$bin GOFLAGS=-trimpath CGO_ENABLED=0 \
      go install "github.com/mccutchen/go-httpbin/v2/cmd/go-httpbin@v$version"
    touch "$bin/.complete"
  fi
  log "starting go-httpbin on $WARDEN_TEST_HTTPBIN_URL"
  mkdir -p "$dir"
  stop_daemon "$dir/httpbin.pid" "$bin/go-httpbin"
  start_daemon "$dir/httpbin.pid" "$dir/httpbin.log" "$bin/go-httpbin" -host 127.0.0.1 -port 18080
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$WARDEN_TEST_HTTPBIN_URL/status/200" 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$dir/httpbin.log" >&2
  echo "go-httpbin did not start" >&2
  return 1
}

# Prints the home of the newest JDK in /usr/lib/jvm whose major version is at least $1.
find_java() {
  local j v best="" bestv=0
  for j in /usr/lib/jvm/*/bin/java; do
    [ -x "$j" ] || continue
    v=$("$j" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
    v=${v%%.*}
    if [ "${v:-0}" -ge "$1" ] && [ "$v" -gt "$bestv" ]; then best=$j bestv=$v; fi
  done
  [ -n "$best" ] && echo "${best%/bin/java}"
}

# Keycloak, the SAML identity provider of the SAML tests, on 127.0.0.1:18180 (plain
# http, dev mode, data in memory). Realm `warden` comes from tests/saml/warden-realm.json.in:
# alice/alice-pw-1 in groups dba and dev, bob/bob-pw-1 in dev, and the SAML clients
# urn:warden:test:sp* (see the file). Every start imports the realm afresh with a new
# signing key: tests read the IdP metadata from $WARDEN_TEST_SAML_IDP_METADATA_URL.
# The SP key pair the tests give Warden (AuthnRequest signing, assertion decryption) is
# made once in $WARDEN_TEST_KEYCLOAK_DIR; its certificate goes into the realm.
# The distribution (a Maven Central artifact, fetched with mvn) is unpacked once into a
# versioned cache directory outside the repository, marked complete when unpacked; its
# first start adds about 40 s of Quarkus build, kept in the same directory.
# Idempotent: a running Keycloak whose realm answers is kept. With --no-wait it
# returns once Keycloak is starting (about 35 s of boot then overlap the build; the
# SAML tests wait for the realm's metadata themselves).
setup_keycloak() {
  local version=26.7.3 port=18180
  local cache=/var/cache/warden-test home=/var/cache/warden-test/keycloak-$version
  local realm_in=${WARDEN_TEST_KEYCLOAK_REALM_IN:-tests/saml/warden-realm.json.in}
  export WARDEN_TEST_KEYCLOAK_DIR="${WARDEN_TEST_KEYCLOAK_DIR:-/var/tmp/warden-test-keycloak}"
  local dir=$WARDEN_TEST_KEYCLOAK_DIR java_home
  export WARDEN_TEST_KEYCLOAK_URL=http://127.0.0.1:$port
  export WARDEN_TEST_SAML_IDP_ENTITY_ID=$WARDEN_TEST_KEYCLOAK_URL/realms/warden
  export WARDEN_TEST_SAML_IDP_METADATA_URL=$WARDEN_TEST_SAML_IDP_ENTITY_ID/protocol/saml/descriptor
  export WARDEN_TEST_SAML_SP_KEY=$dir/sp.key WARDEN_TEST_SAML_SP_CERT=$dir/sp.crt
  export WARDEN_TEST_KEYCLOAK_ADMIN=admin WARDEN_TEST_KEYCLOAK_ADMIN_PASSWORD=admin-pw-1
  # A running Keycloak is kept when it imported the realm the template makes now. On
  # a fresh machine there is no SP certificate yet (and under pipefail a `cat` of it
  # would end the script), so nothing to keep.
  local realm_sum=""
  if [ -f "$dir/sp.crt" ]; then
    realm_sum=$(cat "$realm_in" "$dir/sp.crt" | sha256sum | cut -d' ' -f1)
  fi
  if [ -f "$dir/keycloak.pid" ] && kill -0 "$(cat "$dir/keycloak.pid")" 2>/dev/null &&
    [ "$(cat "$dir/realm.sha256" 2>/dev/null)" = "$realm_sum" ] &&
    curl -fsS -o /dev/null "$WARDEN_TEST_SAML_IDP_METADATA_URL" 2>/dev/null; then
    return 0
  fi
  java_home=$(find_java 21) || {
    echo "Keycloak $version needs Java 21 or newer: none in /usr/lib/jvm" >&2
    return 1
  }
  if [ ! -f "$home/.complete" ]; then
    log "fetching Keycloak $version"
    rm -rf "$home" "$cache/keycloak-dl"
    mkdir -p "$cache"
    # The ordinary Maven client, so the registry as set up on the machine is used
    # (and the artifact's checksum checked).
    mvn -q -B -Dstyle.color=never dependency:copy \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$version:tar.gz" \
      -DoutputDirectory="$cache/keycloak-dl" >&2
    # --no-same-owner: as root, tar would hand the files to uid 1000 of the archive.
    tar -xzf "$cache/keycloak-dl/keycloak-quarkus-dist-$version.tar.gz" --no-same-owner -C "$cache"
    rm -rf "$cache/keycloak-dl"
    touch "$home/.complete"
  fi
  mkdir -p "$dir"
  if [ ! -f "$dir/sp.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=warden-test-sp \
      -keyout "$dir/sp.key" -out "$dir/sp.crt" 2>/dev/null
  fi
  # The realm, with the SP certificate (base64 DER) in place of every @SP_CERT@.
  mkdir -p "$home/data/import"
  sed "s|@SP_CERT@|$(grep -v -- ----- "$dir/sp.crt" | tr -d '\n')|g" "$realm_in" \
    >"$home/data/import/warden-realm.json"
  cat "$realm_in" "$dir/sp.crt" | sha256sum | cut -d' ' -f1 >"$dir/realm.sha256"
  log "starting Keycloak $version on $WARDEN_TEST_KEYCLOAK_URL"
  stop_daemon "$dir/keycloak.pid" "$home"
  JAVA_HOME=$java_home JAVA_OPTS_KC_HEAP="-Xms64m -Xmx512m -XX:TieredStopAtLevel=1" \
    KC_BOOTSTRAP_ADMIN_USERNAME=$WARDEN_TEST_KEYCLOAK_ADMIN \
    KC_BOOTSTRAP_ADMIN_PASSWORD=$WARDEN_TEST_KEYCLOAK_ADMIN_PASSWORD \
    start_daemon "$dir/keycloak.pid" "$dir/keycloak.log" "$home/bin/kc.sh" start-dev \
    --http-host=127.0.0.1 --http-port=$port --db=dev-mem --import-realm
  [ "${1:-}" = --no-wait ] && return 0
  for _ in $(seq 1 1800); do
    curl -fsS -o /dev/null "$WARDEN_TEST_SAML_IDP_METADATA_URL" 2>/dev/null && return 0
    kill -0 "$(cat "$dir/keycloak.pid")" 2>/dev/null || break
    sleep 0.1
  done
  tail -30 "$dir/keycloak.log" >&2
  echo "Keycloak did not start" >&2
  return 1
}

# A minimal Kubernetes for the Kubernetes proxy tests, from the binaries
# scripts/k8s-stack.sh builds: etcd, kube-apiserver on https://127.0.0.1:16443 (RBAC,
# static tokens) and kwok, which plays the kubelet of one fake node, warden-fake-node.
# There is no scheduler nor controller manager: a pod must name its node, nothing
# garbage-collects, and a deleted namespace stays Terminating.
#
# Pods on the fake node are Running, and kwok serves their kubelet API for real, the
# same for every pod:
# - `exec` runs the command on this machine, as the user who ran setup_k8s, in
#   $WARDEN_TEST_K8S_DIR/pod (with -t, on a pty). kwok neither passes on the end of
#   stdin (`echo x | kubectl exec -i web -- cat` never ends) nor the exit status (one
#   not 0 comes back as an "Internal error ... exit status N" and kubectl exits 1).
# - `logs [-f]` and `attach` read $WARDEN_TEST_K8S_LOG_FILE: CRI log lines,
#   "<RFC 3339 time> stdout F <text>", that a test appends. attach only prints what
#   is appended from then on; its stdin goes nowhere.
# - `port-forward`, to any port, reaches go-httpbin (setup_httpbin).
#
# Users (tokens in files): warden-gateway, in system:masters (the cluster credential
# Warden holds); warden-impersonator, who may only impersonate users and groups; and
# alice@example.com (to impersonate), who may get/list/watch pods in `default` and
# nothing in `prod`. Pods: default/web, prod/api.
# Idempotent: a running stack is kept; otherwise one starts afresh (new data, tokens).
setup_k8s() {
  export WARDEN_TEST_K8S_DIR="${WARDEN_TEST_K8S_DIR:-/var/tmp/warden-test-k8s}"
  local dir=$WARDEN_TEST_K8S_DIR bin api=https://127.0.0.1:16443 kubelet_port=10347 up=1 p
  bin=$(scripts/k8s-stack.sh)
  setup_httpbin
  export WARDEN_TEST_K8S_URL=$api
  export WARDEN_TEST_K8S_CA=$dir/ca.crt
  export WARDEN_TEST_K8S_TOKEN_FILE=$dir/admin.token
  export WARDEN_TEST_K8S_IMPERSONATOR_TOKEN_FILE=$dir/impersonator.token
  export WARDEN_TEST_K8S_KUBECONFIG=$dir/admin.kubeconfig
  export WARDEN_TEST_K8S_NODE=warden-fake-node
  export WARDEN_TEST_K8S_LOG_FILE=$dir/pods.log
  export WARDEN_TEST_KUBECTL=$bin/kubectl
  for p in etcd kube-apiserver kwok; do
    [ -f "$dir/$p.pid" ] && kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null || up=
  done
  if [ -n "$up" ] && curl -fsS -o /dev/null --cacert "$dir/ca.crt" \
    -H "Authorization: Bearer $(cat "$dir/admin.token")" "$api/readyz" 2>/dev/null; then
    return 0
  fi

  log "starting Kubernetes (etcd, kube-apiserver, kwok) on $api"
  # What is left of an earlier stack goes, killed outright: its data goes with it
  # (etcd stopped politely waits seconds for the API server's connections).
  for p in kwok kube-apiserver etcd; do stop_daemon "$dir/$p.pid" "$dir" KILL; done
  rm -rf "$dir"
  mkdir -p "$dir/pod"
  # Tokens and keys inside: only the user who runs the tests (and these daemons) reads them.
  chmod 700 "$dir"

  # One CA signs the API server's serving certificate (clients verify it with
  # $WARDEN_TEST_K8S_CA; it is the --client-ca-file too, though no client certificate is
  # issued); a separate key signs service-account tokens.
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 3650 -subj /CN=warden-test-k8s-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=kube-apiserver -keyout "$dir/apiserver.key" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -days 3650 -out "$dir/apiserver.crt" \
      -extfile <(printf '%s\n' 'extendedKeyUsage=serverAuth' \
        'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1') 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/sa.key"
  openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub"

  # Static tokens (--token-auth-file: token,user,uid,"groups"). kwok has its own admin.
  for p in admin impersonator kwok; do openssl rand -hex 24 >"$dir/$p.token"; done
  cat >"$dir/tokens.csv" <<EOF2
$(cat "$dir/admin.token"),warden-gateway,warden-gateway,"system:masters"
$(cat "$dir/kwok.token"),kwok-controller,kwok-controller,"system:masters"
$(cat "$dir/impersonator.token"),warden-impersonator,warden-impersonator
EOF2
  for p in admin kwok; do
    cat >"$dir/$p.kubeconfig" <<EOF2
apiVersion: v1
kind: Config
clusters:
- name: warden-test
  cluster: {server: "$api", certificate-authority: "$dir/ca.crt"}
users:
- name: $p
  user: {tokenFile: "$dir/$p.token"}
contexts:
- name: warden-test
  context: {cluster: warden-test, user: $p, namespace: default}
current-context: warden-test
EOF2
  done

  # etcd on ports of its own (not 2379/2380: a machine's etcd may hold those). The data
  # is thrown away with the stack: no fsync.
  start_daemon "$dir/etcd.pid" "$dir/etcd.log" "$bin/etcd" --name warden-test \
    --data-dir "$dir/etcd" --unsafe-no-fsync --log-level warn \
    --listen-client-urls http://127.0.0.1:23791 --advertise-client-urls http://127.0.0.1:23791 \
    --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
    --initial-cluster warden-test=http://127.0.0.1:23801

  # No ServiceAccount admission: with no controller manager there are no service
  # accounts to give pods. No endpoint reconciler: the `kubernetes` service's endpoint
  # would be 127.0.0.1, which Endpoints refuse. The kubelet (kwok) is reached at the
  # node's InternalIP; with no --kubelet-certificate-authority its certificate is not
  # verified (kwok serves a self-signed one).
  start_daemon "$dir/kube-apiserver.pid" "$dir/kube-apiserver.log" "$bin/kube-apiserver" \
    --bind-address=127.0.0.1 --secure-port=16443 --advertise-address=127.0.0.1 \
    --etcd-servers=http://127.0.0.1:23791 --endpoint-reconciler-type=none \
    --authorization-mode=RBAC --token-auth-file="$dir/tokens.csv" --client-ca-file="$dir/ca.crt" \
    --tls-cert-file="$dir/apiserver.crt" --tls-private-key-file="$dir/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --disable-admission-plugins=ServiceAccount \
    --kubelet-preferred-address-types=InternalIP --profiling=false
  for _ in $(seq 1 1200); do
    curl -fsS -o /dev/null --cacert "$dir/ca.crt" -H "Authorization: Bearer $(cat "$dir/admin.token")" \
      "$api/readyz" 2>/dev/null && break
    kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null || break
    sleep 0.1
  done
  curl -fsS -o /dev/null --cacert "$dir/ca.crt" -H "Authorization: Bearer $(cat "$dir/admin.token")" "$api/readyz" || {
    tail -20 "$dir/etcd.log" "$dir/kube-apiserver.log" >&2
    echo "kube-apiserver did not become ready" >&2
    return 1
  }

  # kwok: its stages (the fast ones of kwokctl, trimmed: nodes and pods become ready at
  # once, deleted pods go) and what its kubelet API does for every pod (see above).
  printf '%s\n' "2000-01-01T00:00:00.000000000Z stdout F started" >"$WARDEN_TEST_K8S_LOG_FILE"
  # (No KwokConfiguration here: one read from a file is not defaulted, and kwok refuses it.)
  cat >"$dir/kwok.yaml" <<'EOF2'
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-initialize}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ['True']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
      addresses:
      - {address: {{ NodeIP | Quote }}, type: InternalIP}
      daemonEndpoints: {kubeletEndpoint: {Port: {{ NodePort }}}}
      allocatable: {cpu: 1k, memory: 1Ti, pods: 1M}
      capacity: {cpu: 1k, memory: 1Ti, pods: 1M}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{ printf "kwok-%s" Version }}
        containerRuntimeVersion: {{ printf "kwok-%s" Version }}
        kernelVersion: {{ printf "kwok-%s" Version }}
        kubeProxyVersion: ""
        osImage: kwok
        machineID: ""
        systemUUID: ""
        bootID: ""
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.phase, operator: In, values: [Pending]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        started: true
        restartCount: 0
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
      {{ with NodeIPsWith .spec.nodeName }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      podIP: {{ index . 0 | Quote }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
  next: {delete: true}
EOF2
  cat >>"$dir/kwok.yaml" <<EOF2
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata: {name: local}
spec:
  execs:
  - local: {workDir: "$dir/pod", envs: [{name: TERM, value: xterm}]}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {name: local}
spec:
  logs:
  - {logsFile: "$WARDEN_TEST_K8S_LOG_FILE", follow: true}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata: {name: local}
spec:
  attaches:
  - {logsFile: "$WARDEN_TEST_K8S_LOG_FILE"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata: {name: httpbin}
spec:
  forwards:
  - target: {address: 127.0.0.1, port: 18080}
EOF2
  # A clean environment: exec'd commands inherit kwok's.
  start_daemon "$dir/kwok.pid" "$dir/kwok.log" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$dir/pod" \
    "$bin/kwok" --config="$dir/kwok.yaml" --kubeconfig="$dir/kwok.kubeconfig" \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --node-port=$kubelet_port --server-address=127.0.0.1:$kubelet_port

  "$bin/kubectl" --kubeconfig="$dir/admin.kubeconfig" apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Node
metadata:
  name: $WARDEN_TEST_K8S_NODE
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: $WARDEN_TEST_K8S_NODE, kubernetes.io/os: linux, type: kwok}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: warden-test-impersonate}
rules:
- {apiGroups: [""], resources: [users, groups, serviceaccounts], verbs: [impersonate]}
- {apiGroups: [authentication.k8s.io], resources: [uids], verbs: [impersonate]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: warden-test-impersonator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: warden-test-impersonate}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: warden-impersonator}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-pod-reader, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice@example.com}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: $WARDEN_TEST_K8S_NODE
  containers:
  - {name: web, image: nginx, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
spec:
  nodeName: $WARDEN_TEST_K8S_NODE
  containers:
  - {name: api, image: nginx, ports: [{containerPort: 80}]}
EOF2
  "$bin/kubectl" --kubeconfig="$dir/admin.kubeconfig" wait --timeout=60s \
    --for=jsonpath='{.status.phase}'=Running -n default pod/web >/dev/null || {
    tail -20 "$dir/kwok.log" >&2
    echo "kwok did not run pod web" >&2
    return 1
  }
}

# For the benchmarks: makes the work directory "$work" (readable by the database's and
# PgBouncer's users) and, on exit, kills the pids listed in "$work/pids" and removes
# the directory and any further paths given (globs are expanded then).
#   bench_work_dir [PATH_OR_GLOB...]
bench_work_dir() {
  work=$(mktemp -d)
  chmod 755 "$work"
  bench_leftovers=("$@")
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in $(cat "$work/pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  local left
  for left in "${bench_leftovers[@]}"; do
    # shellcheck disable=SC2086 # a glob, expanded now
    rm -rf $left
  done
}

# For the benchmarks: starts a release Warden in "$work" with the benchmark policies,
# adds one connection and prints an API key that may use it. The caller sets
# $work and $admin_token and kills the pids listed in "$work/pids"; WARDEN_BIN names
# another build to run.
#   start_bench_warden NAME API_PORT LISTENER_TOML JOURNAL_SYNC CONNECTION_JSON
start_bench_warden() {
  local name=$1 api_port=$2 listeners=$3 sync=$4 connection=$5
  # Listeners a benchmark does not name stay off (two Wardens run side by side).
  local section
  for section in ssh kubernetes http; do
    case $listeners in *"[$section]"*) ;; *) listeners="$listeners
[$section]
enabled = false" ;; esac
  done
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
  WARDEN_ADMIN_TOKEN=$admin_token ${BENCH_WRAPPER:-} "${WARDEN_BIN:-target/release/warden}" gateway --config "$work/$name.toml" \
    >"$work/$name.out" 2>"$work/$name.err" &
  echo $! >>"$work/pids"
  echo $! >"$work/$name.pid"
  for _ in $(seq 1 1200); do grep -q "listening on http" "$work/$name.out" && break; sleep 0.1; done
  grep -q "listening on http" "$work/$name.out" || { cat "$work/$name.err" >&2; exit 1; }
  # With WARDEN_API__TLS_CERT/KEY exported, the API is https and BENCH_API_CA its CA.
  local api=http://127.0.0.1:$api_port tls=()
  if [ -n "${WARDEN_API__TLS_CERT:-}" ]; then api=https://127.0.0.1:$api_port tls=(--cacert "$BENCH_API_CA"); fi
  curl -fsS "${tls[@]}" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d "$connection" "$api/api/connections" >/dev/null
  curl -fsS "${tls[@]}" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d '{"name":"bench","groups":["bench"]}' "$api/api/api-keys" | grep -o '"token":"[^"]*"' | cut -d'"' -f4
}

# For the PostgreSQL benchmarks: starts PgBouncer (session pooling; it refuses to run
# as root) in front of the warden_bench database, with its configuration in
# "$work/pgbouncer.ini", and prints its pid. The caller sets $work and kills the pids
# listed in "$work/pids".
#   start_pgbouncer PORT
start_pgbouncer() {
  cat >"$work/pgbouncer.ini" <<EOF2
[databases]
warden_bench = host=127.0.0.1 port=5432 dbname=warden_bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $work/pgbouncer.log
EOF2
  echo '"warden_t_scram" "scram-pw-1"' >"$work/userlist.txt"
  chmod 644 "$work/pgbouncer.ini" "$work/userlist.txt"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$work"
    runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
  else
    pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
  fi
  echo $! >>"$work/pids"
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p "$1" && break; sleep 0.1; done
  pgrep -n -f "pgbouncer $work/pgbouncer.ini"
}

# For the MySQL benchmarks: starts HAProxy in TCP mode (one thread, like PgBouncer: a
# proxy that relays bytes and parses nothing, so its CPU per statement is about what
# the kernel's socket calls and loopback TCP cost) in front of TARGET, and prints its
# pid. The caller sets $work and kills the pids listed in "$work/pids".
#   start_haproxy PORT TARGET_HOST:PORT
start_haproxy() {
  cat >"$work/haproxy.cfg" <<EOF2
global
    nbthread 1
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen bench
    bind 127.0.0.1:$1
    server db $2
EOF2
  haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$work/pids"
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && break; sleep 0.1; done
  echo "$pid"
}

# cpu_us PID → the CPU time (user + system) the process has used so far, in µs.
cpu_us() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1000000 / hz }' "/proc/$1/stat"
}

# sys_us PID → the part of cpu_us spent in the kernel (system calls, the loopback's
# TCP work done on the sender's behalf, scheduling), in µs.
sys_us() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", $15 * 1000000 / hz }' "/proc/$1/stat"
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
