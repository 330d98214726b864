#!/usr/bin/env bash
# Benchmark: etcdsafe against the stock tools, side by side in one run, on a ~1 GiB etcd.
#   BENCH_SIZE=1GiB BENCH_ROUNDS=3 bash scripts/bench.sh
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
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(port); pport=$(port); mport=$(port)
"$bin35/etcd" --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "bench=http://127.0.0.1:$pport" --listen-metrics-urls "http://127.0.0.1:$mport" \
  --quota-backend-bytes 8589934592 >"$work/etcd.log" 2>&1 &
etcd_pid=$!
cleanup() { kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do
  ETCDCTL_API=3 "$bin35/etcdctl" --endpoints "127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

"$root/target/release/examples/fill_etcd" "http://127.0.0.1:$cport" "$size" >&2

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
PY
