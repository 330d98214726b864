#!/usr/bin/env bash
# Benchmark: etcdsafe against the stock tools, side by side in one run, on a ~1 GiB etcd.
#   BENCH_SIZE=1GiB BENCH_ROUNDS=3 bash scripts/bench.sh
# The 8 GiB run of the README: BENCH_SIZE=8GiB BENCH_QUOTA=17179869184 BENCH_ROUNDS=1
#   BENCH_VARIANTS=1:2 BENCH_CACHE=/var/tmp/etcdsafe-bench-cache (the filled etcd is kept there).
# Prints a markdown table (wall time and peak RSS of each, and the ratios) for the README.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
size=${BENCH_SIZE:-1GiB}
rounds=${BENCH_ROUNDS:-3}
bin35="$root/.deps/etcd-v3.5.1"
[ -x "$bin35/etcd" ] || { echo "bench: run scripts/install-deps.sh first" >&2; exit 1; }

cargo build --release --locked --bin etcdsafe --example fill_etcd >&2
etcdsafe="$root/target/release/etcdsafe"

work=$(mktemp -d /var/tmp/etcdsafe-bench.XXXXXX)
# BENCH_CACHE=DIR keeps the filled etcd data dir there (per size) and starts from it next time:
# filling 8 GiB takes a while.
cache=${BENCH_CACHE:-}
etcd_dir="$work/etcd"
if [ -n "$cache" ]; then etcd_dir="$cache/etcd-$size"; mkdir -p "$cache"; fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(port); pport=$(port); mport=$(port)
filled=no; [ -d "$etcd_dir/member" ] && filled=yes
"$bin35/etcd" --name bench --data-dir "$etcd_dir" \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "bench=http://127.0.0.1:$pport" --initial-cluster-token bench --listen-metrics-urls "http://127.0.0.1:$mport" \
  --quota-backend-bytes "${BENCH_QUOTA:-8589934592}" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
cleanup() { kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do
  ETCDCTL_API=3 "$bin35/etcdctl" --endpoints "127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

if [ "$filled" = no ]; then
  "$root/target/release/examples/fill_etcd" "http://127.0.0.1:$cport" "$size" >&2
fi

age-keygen -o "$work/key.txt" 2>/dev/null
recipient=$(sed -n 's/^# public key: //p' "$work/key.txt")
# Variants of the pipeline, each a config: zstd level and worker threads (0 = on the encode thread).
variants=${BENCH_VARIANTS:-"1:2 3:2 1:1"}
for v in $variants; do
  level=${v%%:*}; threads=${v##*:}
  cat >"$work/config-$level-$threads.yaml" <<YAML
etcd: { endpoints: [http://127.0.0.1:$cport] }
spool-dir: $work/spool
compression: { level: $level, threads: $threads }
encryption: { recipients: [$recipient] }
storage: { local: { path: $work/store } }
YAML
done

# measure NAME CMD...: appends "name wall_seconds max_rss_kib" to $work/results
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time.out" "$@" >/dev/null 2>"$work/$name.err" \
    || { cat "$work/$name.err" >&2; exit 1; }
  echo "$name $(cat "$work/time.out")" >>"$work/results"
}

: >"$work/results"
# The snapshot both status commands read, saved once outside the measurements.
ETCDCTL_API=3 "$bin35/etcdctl" --endpoints "127.0.0.1:$cport" snapshot save "$work/ref.db" >/dev/null 2>&1
# Let the fill's writeback finish first, so it does not run during the first measurements.
sync; sleep 3
# Every save measured below starts right after the previous one's output was deleted, so each
# finds the page cache and free memory in the same state (on a VM whose host takes back freed
# guest memory, the first write into reclaimed pages costs several times more kernel time).
for round in $(seq "$rounds"); do
  measure etcdctl_save env ETCDCTL_API=3 "$bin35/etcdctl" --endpoints "127.0.0.1:$cport" snapshot save "$work/stock.db"
  rm -f "$work/stock.db"
  for v in $variants; do
    level=${v%%:*}; threads=${v##*:}
    measure "etcdsafe_save_L${level}_T${threads}" "$etcdsafe" --config "$work/config-$level-$threads.yaml" snapshot save
    rm -f "$work"/store/*
  done
  measure shell_pipeline bash -o pipefail -c "ETCDCTL_API=3 '$bin35/etcdctl' --endpoints 127.0.0.1:$cport snapshot save '$work/seq.db' >/dev/null && '$bin35/etcdutl' snapshot status '$work/seq.db' >/dev/null && zstd -q -3 -c '$work/seq.db' | age -r $recipient > '$work/seq.age'; rm -f '$work/seq.db' '$work/seq.age'"
  measure etcdutl_status "$bin35/etcdutl" snapshot status "$work/ref.db"
  measure etcdsafe_status "$etcdsafe" snapshot status "$work/ref.db"
done
# Restore: the stock tool and the native engine from the same file, then from a stored backup
# (fetch + decrypt + decompress + verify + restore) against the same steps with stock tools.
restore_flags=(--name bench --initial-cluster "bench=http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport")
first_variant=${variants%% *}
backup_config="$work/config-${first_variant%%:*}-${first_variant##*:}.yaml"
"$etcdsafe" --config "$backup_config" snapshot save --reason bench >/dev/null
object="$work/store/$("$etcdsafe" --config "$backup_config" backups list -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][-1]["object"]["key"])')"
for round in $(seq "$rounds"); do
  measure etcdutl_restore "$bin35/etcdutl" snapshot restore "$work/ref.db" --data-dir "$work/r-stock" "${restore_flags[@]}"
  rm -rf "$work/r-stock"
  measure etcdsafe_restore "$etcdsafe" snapshot restore "$work/ref.db" --data-dir "$work/r-native" "${restore_flags[@]}"
  rm -rf "$work/r-native"
  measure shell_fetch bash -o pipefail -c "age -d -i '$work/key.txt' '$object' | zstd -q -d > '$work/plain.db'"
  rm -f "$work/plain.db"
  measure etcdsafe_fetch "$etcdsafe" --config "$backup_config" backups fetch latest --identity "$work/key.txt" -o "$work/fetched.db"
  rm -f "$work/fetched.db"
  measure shell_backup_restore bash -o pipefail -c "age -d -i '$work/key.txt' '$object' | zstd -q -d > '$work/plain.db' && '$bin35/etcdutl' snapshot restore '$work/plain.db' --data-dir '$work/r-shell' ${restore_flags[*]}"
  rm -rf "$work/plain.db" "$work/r-shell"
  measure etcdsafe_backup_restore "$etcdsafe" --config "$backup_config" snapshot restore --backup latest --identity "$work/key.txt" --data-dir "$work/r-backup" "${restore_flags[@]}"
  rm -rf "$work/r-backup"
done
db_size=$(stat -c %s "$work/ref.db")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load during the run (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)"


python3 - "$work/results" "$db_size" "$rounds" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    name, wall, rss = line.split()
    rows.setdefault(name, []).append((float(wall), int(rss)))
med = {k: (statistics.median(w for w, _ in v), max(r for _, r in v)) for k, v in rows.items()}
db = int(sys.argv[2])
print(f"db size: {db/1e9:.2f} GB, {sys.argv[3]} rounds, median wall time, max peak RSS\n")
print("| command | wall time (s) | peak RSS (MiB) | ratio to stock |")
print("|---|---:|---:|---:|")
def row(name, label, base):
    w, r = med[name]
    ratio = f"{w / med[base][0]:.2f}x" if base else "1.00x"
    print(f"| {label} | {w:.2f} | {r/1024:.0f} | {ratio} |")
row("etcdctl_save", "`etcdctl snapshot save` (stock, no verify/compress/encrypt)", None)
for name in sorted(k for k in med if k.startswith("etcdsafe_save_")):
    _, _, level, threads = name.split("_")
    row(name, f"`etcdsafe snapshot save`, zstd level {level[1:]}, {threads[1:]} zstd threads (stream + verify + zstd + age + store + manifest)", "etcdctl_save")
row("shell_pipeline", "shell: `etcdctl save && etcdutl status && zstd \\| age`", "etcdctl_save")
row("etcdutl_status", "`etcdutl snapshot status` (stock)", None)
row("etcdsafe_status", "`etcdsafe snapshot status`", "etcdutl_status")
row("etcdutl_restore", "`etcdutl snapshot restore FILE` (stock)", None)
row("etcdsafe_restore", "`etcdsafe snapshot restore FILE` (native engine)", "etcdutl_restore")
row("shell_fetch", "shell: `age -d \\| zstd -d > FILE`", None)
row("etcdsafe_fetch", "`etcdsafe backups fetch` (decrypt, decompress, verify)", "shell_fetch")
row("shell_backup_restore", "shell: `age -d \\| zstd -d > FILE && etcdutl snapshot restore FILE`", None)
row("etcdsafe_backup_restore", "`etcdsafe snapshot restore --backup latest` (fetch, verify, restore)", "shell_backup_restore")
PY
