#!/usr/bin/env bash
# The HTTP and Kubernetes proxy benchmark, direct and through Warden in the same run:
#   - wrk (Debian) against go-httpbin's /get through an `http` connection: requests/s
#     and p50/p99 latency, the ratio to direct and the added p50, with the audit
#     journal synced (each request durable before it is sent) and unsynced;
#   - Warden's CPU time per request (user + system, from /proc);
#   - `kubectl get pods` through a `kubernetes` connection: p50 wall time of the whole
#     command over BENCH_KUBECTL_RUNS (20) runs, direct and through Warden;
#   - instructions per request (callgrind, BENCH_INSTRUCTIONS=0 skips it): the
#     repeatable figure.
#
#   scripts/bench-http.sh
#   BENCH_SECS=20 BENCH_CONNECTIONS=32 scripts/bench-http.sh
#
# Not a test: nothing here asserts on time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

secs=${BENCH_SECS:-10}
conns=${BENCH_CONNECTIONS:-16}
runs=${BENCH_KUBECTL_RUNS:-20}
api_port=${BENCH_API_PORT:-18039}
http_port=${BENCH_HTTP_PORT:-18188}

ensure_packages wrk wrk curl curl python3 python3
setup_k8s
log "building warden (release)"
cargo build --release -q -p warden

bench_work_dir
admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
http_conn="{\"name\":\"bench\",\"kind\":\"http\",\"target\":\"$WARDEN_TEST_HTTPBIN_URL\",\"allowed_groups\":[\"bench\"]}"
k8s_conn=$(python3 - "$WARDEN_TEST_K8S_URL" "$WARDEN_TEST_K8S_CA" "$WARDEN_TEST_K8S_TOKEN_FILE" <<'PY'
import json, sys
url, ca, token = sys.argv[1:]
print(json.dumps({"name": "bench-k8s", "kind": "kubernetes", "target": url,
                  "tls": {"ca_pem": open(ca).read()}, "secret": open(token).read().strip(),
                  "allowed_groups": ["bench"]}))
PY
)

# kubectl sends a bearer token only over TLS: the Kubernetes listener gets a
# certificate of its own.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/gw.key" -out "$work/gw.crt" 2>/dev/null

# Two Wardens side by side: journal synced, and not.
start() { # NAME API HTTP K8S SYNC → token
  local token
  token=$(start_bench_warden "$1" "$2" "[pg]
enabled = false
[mysql]
enabled = false
[http]
listen = \"127.0.0.1:$3\"
[kubernetes]
listen = \"127.0.0.1:$4\"
tls_cert = \"$work/gw.crt\"
tls_key = \"$work/gw.key\"" "$5" "$http_conn")
  curl -fsS -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d "$k8s_conn" "http://127.0.0.1:$2/api/connections" >/dev/null
  echo "$token"
}
tok_sync=$(start synced "$api_port" "$http_port" $((http_port + 1)) true)
tok_os=$(start unsynced $((api_port + 1)) $((http_port + 2)) $((http_port + 3)) false)

run_wrk() { # URL [TOKEN] → "req/s p50_ms p99_ms"
  local args=(-t2 -c"$conns" -d"${secs}s" --latency)
  [ -n "${2:-}" ] && args+=(-H "Authorization: Bearer $2")
  wrk "${args[@]}" "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    END { printf "%.0f %.3f %.3f\n", rps, ms(p50), ms(p99) }'
}

log "wrk: direct, then through Warden (journal synced, unsynced), ${secs}s each, $conns connections"
read -r d_rps d_p50 d_p99 < <(run_wrk "$WARDEN_TEST_HTTPBIN_URL/get")
measure() { # NAME PORT TOKEN → "req/s p50 p99 cpu_us_per_request"
  local pid before after rps p50 p99
  pid=$(cat "$work/$1.pid")
  before=$(cpu_us "$pid")
  read -r rps p50 p99 < <(run_wrk "http://127.0.0.1:$2/bench/get" "$3")
  after=$(cpu_us "$pid")
  awk -v r="$rps" -v a="$before" -v b="$after" -v s="$secs" -v p50="$p50" -v p99="$p99" \
    'BEGIN { printf "%s %s %s %.0f\n", r, p50, p99, (b - a) / (r * s) }'
}
read -r s_rps s_p50 s_p99 s_cpu < <(measure synced "$http_port" "$tok_sync")
read -r o_rps o_p50 o_p99 o_cpu < <(measure unsynced $((http_port + 2)) "$tok_os")

printf '\nHTTP: go-httpbin /get, wrk -t2 -c%s, %ss\n' "$conns" "$secs"
printf '%-18s %10s %9s %9s %8s %10s %14s\n' path req/s p50_ms p99_ms ratio added_p50 cpu_us/request
printf '%-18s %10s %9s %9s %8s %10s %14s\n' direct "$d_rps" "$d_p50" "$d_p99" 1.00 - -
for row in "warden-synced $s_rps $s_p50 $s_p99 $s_cpu" "warden-unsynced $o_rps $o_p50 $o_p99 $o_cpu"; do
  set -- $row
  awk -v n="$1" -v r="$2" -v p="$3" -v q="$4" -v c="$5" -v dr="$d_rps" -v dp="$d_p50" \
    'BEGIN { printf "%-18s %10s %9s %9s %8.2f %10.3f %14s\n", n, r, p, q, r / dr, p - dp, c }'
done

# kubectl get pods: one whole command (discovery cached after the first run), p50.
kubeconfig() { # FILE SERVER TOKEN [CA]
  {
    printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: %s\n' "$2"
    [ -n "${4:-}" ] && printf '    certificate-authority: %s\n' "$4"
    printf 'users:\n- name: u\n  user:\n    token: %s\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n' "$3"
  } >"$1"
}
kubeconfig "$work/direct.kc" "$WARDEN_TEST_K8S_URL" "$(cat "$WARDEN_TEST_K8S_TOKEN_FILE")" "$WARDEN_TEST_K8S_CA"
kubeconfig "$work/synced.kc" "https://127.0.0.1:$((http_port + 1))/bench-k8s" "$tok_sync" "$work/gw.crt"
kubeconfig "$work/unsynced.kc" "https://127.0.0.1:$((http_port + 3))/bench-k8s" "$tok_os" "$work/gw.crt"
kubectl_p50() { # KUBECONFIG → p50 ms
  local i t0 t1
  "$WARDEN_TEST_KUBECTL" --kubeconfig "$1" get pods >/dev/null || { echo "kubectl failed with $1" >&2; exit 1; }
  for i in $(seq 1 "$runs"); do
    t0=$(date +%s%N)
    "$WARDEN_TEST_KUBECTL" --kubeconfig "$1" get pods >/dev/null
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000))
  done | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f\n", a[int((NR + 1) / 2)] / 1000 }'
}
log "kubectl get pods x $runs per path"
k_d=$(kubectl_p50 "$work/direct.kc")
k_s=$(kubectl_p50 "$work/synced.kc")
k_o=$(kubectl_p50 "$work/unsynced.kc")
printf '\nkubectl get pods (whole command, p50 of %s)\n' "$runs"
printf '%-18s %9s %10s\n' path p50_ms added_ms
printf '%-18s %9s %10s\n' direct "$k_d" -
for row in "warden-synced $k_s" "warden-unsynced $k_o"; do
  set -- $row
  awk -v n="$1" -v p="$2" -v d="$k_d" 'BEGIN { printf "%-18s %9s %10.1f\n", n, p, p - d }'
done

# Instructions per request: Warden under callgrind, N and N + 400 requests with curl's
# keep-alive (one connection), the difference divided by 400.
if [ "${BENCH_INSTRUCTIONS:-1}" = 1 ]; then
  ensure_packages valgrind valgrind
  log "instructions per request (callgrind)"
  cg_requests() { # N → N (requests sent on one connection)
    local urls=() i
    for i in $(seq 1 "$1"); do urls+=("http://127.0.0.1:$((http_port + 20))/bench/get"); done
    curl -fsS -H "Authorization: Bearer $cg_token" "${urls[@]}" >/dev/null
    echo "$1"
  }
  cg_warden() { # NAME SYNC → instructions per request
    local pid
    cg_token=$(BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$work/cg.$1.%p" \
      start_bench_warden "$1" $((api_port + 20)) "[pg]
enabled = false
[mysql]
enabled = false
[http]
listen = \"127.0.0.1:$((http_port + 20))\"" "$2" "$http_conn")
    pid=$(cat "$work/$1.pid")
    callgrind_per_unit "$pid" "$work/cg.$1" cg_requests 50 450
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  }
  cg_s=$(cg_warden cg-synced true)
  cg_o=$(cg_warden cg-unsynced false)
  printf '\ninstructions per request (callgrind, one keep-alive connection, 400 requests)\n'
  printf '%-18s %12s\n' warden-synced "$cg_s" warden-unsynced "$cg_o"
fi
