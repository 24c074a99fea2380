#!/usr/bin/env bash
# Runs Warden's whole test suite, on this machine or a fresh Debian one.
#
# Installs what the tests need when it is missing (apt-get, npm), starts each service
# once for all tests (PostgreSQL, MariaDB, sshd, a Kubernetes control plane, go-httpbin,
# the OpenID provider, Keycloak for SAML), then runs `cargo test`.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p warden-store`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# --- packages ---------------------------------------------------------------
ensure_packages cc build-essential psql postgresql-client pg_ctlcluster postgresql \
  node nodejs npm npm openssl openssl mysql mariadb-client mariadbd mariadb-server \
  curl curl script bsdutils ip iproute2 chromium chromium mvn maven xmlsec1 xmlsec1
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "Node.js $node_major is too old for the test OpenID provider (oidc-provider 9 needs 20 or newer)" >&2
  exit 1
fi

# asyncpg: a Python driver that asks for binary results (the masking tests use it).
python3 -c 'import asyncpg' 2>/dev/null || {
  log "installing asyncpg"
  python3 -m pip install --quiet --disable-pip-version-check asyncpg==0.32.0
}

setup_postgres
setup_mariadb
setup_mariadb_tls
setup_sshd
# Kubernetes (etcd, kube-apiserver, kwok; built once into a cache outside the
# repository, 15–25 minutes the first time) and go-httpbin for the HTTP proxy.
setup_k8s
# Keycloak, the SAML identity provider (a Maven Central distribution unpacked once into
# a cache outside the repository; needs a JDK 21 or newer in /usr/lib/jvm). It boots
# while the tests build.
setup_keycloak --no-wait

# Databases left by earlier runs (each test creates its own warden_t_*).
for db in $(psql "$WARDEN_TEST_PG_URL" -qAtc "SELECT datname FROM pg_database WHERE datname LIKE 'warden\_t\_%'"); do
  psql "$WARDEN_TEST_PG_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
done

# The network agent's tests put gateways in network namespaces: as root (CI) they
# must run, not skip. Namespaces a killed earlier run left behind are removed.
if [ "$(id -u)" = 0 ]; then
  export WARDEN_TEST_REQUIRE_NETNS=1
  for ns in $(ip netns list 2>/dev/null | awk '/^wdn-gw-/ {print $1}'); do
    ip netns del "$ns" 2>/dev/null || true
  done
fi

# --- OpenID provider (npm oidc-provider, one for all tests) ------------------
if [ ! -d tests/oidc/node_modules/oidc-provider ] || [ tests/oidc/package-lock.json -nt tests/oidc/node_modules/.package-lock.json ]; then
  log "installing the test OpenID provider"
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi
# --- the console's browser tests: playwright-core drives Debian's Chromium -------
# (the package has no browser of its own to download)
if [ ! -d tests/web/node_modules/playwright-core ] || [ tests/web/package-lock.json -nt tests/web/node_modules/.package-lock.json ]; then
  log "installing playwright-core for the console tests"
  (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi
oidc_out=$(mktemp)
(cd tests/oidc && exec node provider.mjs) >"$oidc_out" 2>&1 &
oidc_pid=$!
trap 'kill $oidc_pid 2>/dev/null || true; rm -f "$oidc_out"' EXIT
for _ in $(seq 1 100); do
  issuer=$(grep -o '"issuer":"[^"]*"' "$oidc_out" | cut -d'"' -f4 || true)
  [ -n "$issuer" ] && break
  kill -0 $oidc_pid 2>/dev/null || { cat "$oidc_out" >&2; echo "OpenID provider failed to start" >&2; exit 1; }
  sleep 0.1
done
[ -n "${issuer:-}" ] || { cat "$oidc_out" >&2; echo "OpenID provider did not report its issuer" >&2; exit 1; }
export WARDEN_TEST_OIDC_ISSUER="$issuer"
log "OpenID provider at $issuer"

# --- tests -------------------------------------------------------------------
# Doc-tests are skipped: there are none, and their empty "0 passed" summaries would
# be the last word of the run.
# One build per run: incremental state would only double the target directory's size
# (about 6 GiB), and some CI machines have little disk to spare.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
log "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free before the build"
log "cargo test"
results=$(mktemp)
trap 'kill $oidc_pid 2>/dev/null || true; rm -f "$oidc_out" "$results"' EXIT
set +e
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --lib --bins --tests --no-fail-fast "$@" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -o '[0-9]* passed' "$results" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$results" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: $passed passed, $failed failed"
log "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free after the tests"
exit "$status"
