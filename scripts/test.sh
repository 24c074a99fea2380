#!/usr/bin/env bash
# Runs Warden's whole test suite, on this machine or a fresh Debian one.
#
# Installs what the tests need when it is missing (apt-get, npm), starts each service
# once for all tests (PostgreSQL, the OpenID provider), then runs `cargo test`.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p warden-store`).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '==> %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- packages ---------------------------------------------------------------
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "Node.js $node_major is too old for the test OpenID provider (oidc-provider 9 needs 20 or newer)" >&2
  exit 1
fi

# --- PostgreSQL (one server for every store test) ---------------------------
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
# Databases left by earlier runs (each test creates its own warden_t_*).
for db in $(psql "$WARDEN_TEST_PG_URL" -qAtc "SELECT datname FROM pg_database WHERE datname LIKE 'warden\_t\_%'"); do
  psql "$WARDEN_TEST_PG_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
done

# --- OpenID provider (npm oidc-provider, one for all tests) ------------------
if [ ! -d tests/oidc/node_modules/oidc-provider ] || [ tests/oidc/package-lock.json -nt tests/oidc/node_modules/.package-lock.json ]; then
  log "installing the test OpenID provider"
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
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
log "cargo test"
results=$(mktemp)
trap 'kill $oidc_pid 2>/dev/null || true; rm -f "$oidc_out" "$results"' EXIT
set +e
cargo test --workspace --lib --bins --tests "$@" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -o '[0-9]* passed' "$results" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$results" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
