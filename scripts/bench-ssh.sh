#!/usr/bin/env bash
# The SSH proxy benchmark: the real OpenSSH client against the test OpenSSH server,
# direct and through Warden (audit and recording on), in the same run:
#   - scp of a 256 MiB file up and down (SFTP protocol), MiB/s;
#   - `cat` on the target to the client, MiB/s, of the same random file (worst case
#     for the recording: binary output escaped into asciicast) and of a text file of
#     the same size (base64 lines, like a log); both are recorded as exec terminals;
#   - interactive echo: one key through a PTY and back, p50 and p99 over 300 keys.
# Through Warden twice: the audit journal synced to disk (the default) and handed to
# the OS (`audit.journal_sync = false`). Prints each figure, the ratio through Warden
# / direct, Warden's CPU time per MiB of each transfer (user + system, from /proc),
# and then the repeatable figure: Warden's instructions per MiB under callgrind
# (`BENCH_INSTRUCTIONS=0` skips it). Every path logs in with a key (Warden's with a
# key registered through the API).
#
#   scripts/bench-ssh.sh
#   BENCH_MIB=512 scripts/bench-ssh.sh
#   BENCH_EXEC_OUTPUT_BYTES=0 scripts/bench-ssh.sh   # record every byte of `cat`
#
# Not a test: nothing here asserts on time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

mib=${BENCH_MIB:-256}
ssh_port=${BENCH_WARDEN_PORT:-12222}
api_port=${BENCH_API_PORT:-18029}

ensure_packages curl curl python3 python3
setup_sshd
log "building warden (release)"
cargo build --release -q -p warden

bench_work_dir "/tmp/warden-bench-$$*"

admin_token="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
connection=$(python3 - "$WARDEN_TEST_SSHD_DIR" "$WARDEN_TEST_SSHD_PORT" <<'PY'
import json, sys
d, port = sys.argv[1], sys.argv[2]
print(json.dumps({"name": "bench", "kind": "ssh", "target": f"127.0.0.1:{port}",
                  "username": "warden_t", "secret": open(f"{d}/warden_t_key").read(),
                  "allowed_groups": ["bench"],
                  "ssh": {"host_key": open(f"{d}/host_ed25519.pub").read()}}))
PY
)
# One client key for both paths: authorized on the target, registered with Warden.
install -m 600 "$WARDEN_TEST_SSHD_DIR/warden_t_key" "$work/key"
ssh-keygen -y -f "$work/key" >"$work/key.pub"
python3 -c 'import json,sys; print(json.dumps({"public_key": open(sys.argv[1]).read()}))' \
  "$work/key.pub" >"$work/register.json"

# start_ssh_warden NAME API_PORT SSH_PORT JOURNAL_SYNC: a Warden holding the `bench`
# connection, with the client key registered (BENCH_WRAPPER: under a tool).
start_ssh_warden() {
  local token
  token=$(start_bench_warden "$1" "$2" "[pg]
enabled = false
[mysql]
enabled = false
[ssh]
listen = \"127.0.0.1:$3\"
[recordings]
exec_output_bytes = ${BENCH_EXEC_OUTPUT_BYTES:-16777216}" "$4" "$connection")
  curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d @"$work/register.json" "http://127.0.0.1:$2/api/ssh-keys" >/dev/null
}
start_ssh_warden warden "$api_port" "$ssh_port" true
start_ssh_warden warden-os $((api_port + 1)) $((ssh_port + 1)) false

opts=(-i "$work/key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
direct=(-P "$WARDEN_TEST_SSHD_PORT" warden_t@127.0.0.1)
through=(-P "$ssh_port" bench@127.0.0.1)

head -c $((mib * 1024 * 1024)) /dev/urandom >"$work/big"
# About the same size as text: 57 bytes become a 77-byte line.
head -c $((mib * 1024 * 1024 / 77 * 57)) "$work/big" | base64 -w 76 >"$work/text"
text_mib=$(awk -v b="$(stat -c %s "$work/text")" 'BEGIN { print b / 1048576 }')
remote=/tmp/warden-bench-$$
cp "$work/text" "$remote.text" && chmod 644 "$remote.text"

now() { date +%s.%N; }
# rate SECONDS [MIB] → MiB/s
rate() { awk -v s="$1" -v m="${2:-$mib}" 'BEGIN { printf "%.0f", m / s }'; }

# scp_up PORT USER@HOST → seconds
timed() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }

ssh_to() { local port=$1 dest=$2; shift 2; ssh "${opts[@]}" -p "$port" "$dest" "$@"; }

# The proxy's CPU time (user + system) per MiB of the transfer just made: ms (none
# for direct).
cpu_mark() { cpu_before=$([ -z "$proxy_pid" ] || cpu_us "$proxy_pid"); }
cpu_per_mib() {
  [ -n "$proxy_pid" ] || { echo -; return; }
  awk -v a="$cpu_before" -v b="$(cpu_us "$proxy_pid")" -v m="${1:-$mib}" 'BEGIN { printf "%.1f", (b - a) / 1000 / m }'
}

results=()
for path in direct warden warden-os; do
  case $path in
    direct) port=$WARDEN_TEST_SSHD_PORT dest=warden_t@127.0.0.1 proxy_pid= ;;
    warden) port=$ssh_port dest=bench@127.0.0.1 proxy_pid=$(cat "$work/warden.pid") ;;
    warden-os) port=$((ssh_port + 1)) dest=bench@127.0.0.1 proxy_pid=$(cat "$work/warden-os.pid") ;;
  esac
  cpu_mark
  up=$(timed scp "${opts[@]}" -P "$port" "$work/big" "$dest:$remote")
  cpu_up=$(cpu_per_mib); cpu_mark
  down=$(timed scp "${opts[@]}" -P "$port" "$dest:$remote" "$work/back")
  cpu_down=$(cpu_per_mib)
  cmp -s "$work/big" "$work/back" || { echo "scp $path: the file changed" >&2; exit 1; }
  cpu_mark
  cat_s=$(timed ssh_to "$port" "$dest" "cat $remote")
  cpu_cat=$(cpu_per_mib); cpu_mark
  cat_text_s=$(timed ssh_to "$port" "$dest" "cat $remote.text")
  cpu_text=$(cpu_per_mib "$text_mib")
  # Interactive echo: a remote PTY echoes each key; time key → echo.
  echo_ms=$(python3 - "$port" "$dest" "${opts[@]}" <<'PY'
import os, pty, select, statistics, sys, time
port, dest, opts = sys.argv[1], sys.argv[2], sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("ssh", ["ssh", *opts, "-tt", "-p", port, dest, "cat >/dev/null"])
def read_until(marker, timeout=20):
    buf, end = b"", time.time() + timeout
    while marker not in buf:
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r:
            raise SystemExit("no echo")
        buf += os.read(fd, 4096)
    return buf
time.sleep(1.0)
os.write(fd, b"ready\r")
read_until(b"ready")
samples = []
for i in range(300):
    key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
    t0 = time.perf_counter()
    os.write(fd, key)
    read_until(key)
    samples.append((time.perf_counter() - t0) * 1000)
os.write(fd, b"\x04")
samples.sort()
print(f"{statistics.median(samples):.3f} {samples[int(len(samples) * 0.99) - 1]:.3f}")
PY
)
  ssh_to "$port" "$dest" "rm -f $remote" || true
  rm -f "$work/back"
  results+=("$path $(rate "$up") $(rate "$down") $(rate "$cat_s") $(rate "$cat_text_s" "$text_mib") $echo_ms $cpu_up $cpu_down $cpu_cat $cpu_text")
done

printf '\nSSH through Warden vs direct, %s MiB file, the same run (2 crypto legs through Warden;\n' "$mib"
printf 'warden-os: audit.journal_sync = false); ratios to direct, proxy CPU ms per MiB\n'
printf '%-10s %12s %12s %12s %12s %12s %12s\n' path scp_up_MiB/s scp_down_MiB/s cat_bin_MiB/s cat_text_MiB/s echo_p50_ms echo_p99_ms
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
plus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "+%.3f", a - b }'; }
read -r _ d_up d_down d_cat d_text d_p50 d_p99 _ <<<"${results[0]}"
for row in "${results[@]}"; do
  read -r name up down cat text p50 p99 c_up c_down c_cat c_text <<<"$row"
  printf '%-10s %12s %12s %12s %12s %12s %12s\n' "$name" "$up" "$down" "$cat" "$text" "$p50" "$p99"
  [ "$name" = direct ] && continue
  printf '%-10s %12s %12s %12s %12s %12s %12s\n' "  ratio" "$(ratio "$up" "$d_up")" "$(ratio "$down" "$d_down")" \
    "$(ratio "$cat" "$d_cat")" "$(ratio "$text" "$d_text")" "$(plus "$p50" "$d_p50")" "$(plus "$p99" "$d_p99")"
  printf '%-10s %12s %12s %12s %12s\n' "  cpu_ms/MiB" "$c_up" "$c_down" "$c_cat" "$c_text"
done

# --- instructions per MiB: the repeatable figure ---------------------------------
# Warden again, under callgrind (about 50 times slower: only counts matter here):
# scp up and `cat` of text, of CG_MIB (4) and 3 x CG_MIB MiB, differenced so that the
# logins are left out. Direct has no proxy to count.
if [ "${BENCH_INSTRUCTIONS:-1}" = 1 ]; then
  ensure_packages valgrind valgrind
  log "instructions per MiB (callgrind)"
  # Both `cat` sizes stay within the recording's default 16 MiB (both recorded
  # whole), and within the file made above.
  cg_mib=${CG_MIB:-4}
  [ $((3 * cg_mib)) -le "$mib" ] || cg_mib=$((mib / 3))
  head -c $((3 * cg_mib * 1024 * 1024)) "$work/big" >"$work/cg-big"
  head -c $((3 * cg_mib * 1024 * 1024 / 77 * 57)) "$work/big" | base64 -w 76 >"$remote.cg-text"
  chmod 644 "$remote.cg-text"
  cg_port=$((ssh_port + 10))
  # LOAD N for callgrind_per_unit: N rounds of CG_MIB MiB, prints MiB moved.
  scp_up_mib() {
    head -c $(($1 * cg_mib * 1024 * 1024)) "$work/cg-big" >"$work/cg-part"
    scp "${opts[@]}" -P "$cg_port" "$work/cg-part" "bench@127.0.0.1:$remote.cg" >/dev/null
    echo $(($1 * cg_mib))
  }
  cat_text_mib() {
    ssh_to "$cg_port" bench@127.0.0.1 "head -c $(($1 * cg_mib * 1024 * 1024)) $remote.cg-text" >/dev/null
    echo $(($1 * cg_mib))
  }
  cg_rows=()
  for sync in true false; do
    name=cg-warden-$sync
    BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$work/cg.$name.%p" \
      start_ssh_warden "$name" $((api_port + 10)) "$cg_port" "$sync"
    pid=$(cat "$work/$name.pid")
    up_n=$(callgrind_per_unit "$pid" "$work/cg.$name" scp_up_mib 1 3)
    text_n=$(callgrind_per_unit "$pid" "$work/cg.$name" cat_text_mib 1 3)
    cg_rows+=("$([ "$sync" = true ] && echo warden || echo warden-os) $up_n $text_n")
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  done
  rm -f "$remote.cg" "$remote.cg-text"
  printf '\ninstructions per MiB (callgrind, %s and %s MiB, differenced)\n' "$cg_mib" $((3 * cg_mib))
  printf '%-10s %14s %14s\n' path scp_up cat_text
  for row in "${cg_rows[@]}"; do
    read -r name up text <<<"$row"
    printf '%-10s %14s %14s\n' "$name" "$up" "$text"
  done
fi
