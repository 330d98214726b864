#!/usr/bin/env bash
# The main job on one machine: a throwaway etcd on 127.0.0.1:2379, etcdsafe taking backups into
# the local store with config/local.yaml, then listing them and fetching the latest one back.
# Everything lives in /var/tmp/etcdsafe (the paths config/local.yaml names).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
work=/var/tmp/etcdsafe
bin35="$root/.deps/etcd-v3.5.1"
mkdir -p "$work"

# The dev profile: it builds faster than --release (the first build on a fresh machine is most
# of the demo's time), the demo's etcd is tiny, and `make test` reuses what it built.
# `make build` makes the release binary.
cargo build --locked --bin etcdsafe
etcdsafe=(target/debug/etcdsafe --config config/local.yaml)

if [ ! -s "$work/identity.txt" ]; then
  (umask 077 && age-keygen -o "$work/identity.txt" 2>/dev/null)
fi
sed -n 's/^# public key: //p' "$work/identity.txt" >"$work/recipients.txt"
echo "demo: backups are encrypted to $(cat "$work/recipients.txt"); the private key is $work/identity.txt"

etcdctl() { ETCDCTL_API=3 "$bin35/etcdctl" --endpoints http://127.0.0.1:2379 "$@"; }
etcd_pid=""
if etcdctl endpoint health >/dev/null 2>&1; then
  echo "demo: using the etcd already serving http://127.0.0.1:2379"
else
  echo "demo: starting etcd 3.5.1 on 127.0.0.1:2379 (data in $work/etcd)"
  "$bin35/etcd" --name demo --data-dir "$work/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  trap 'kill $etcd_pid 2>/dev/null || true; wait $etcd_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do etcdctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  etcdctl endpoint health >/dev/null || { cat "$work/etcd.log"; exit 1; }
fi

for i in $(seq 1 20); do etcdctl put "/registry/configmaps/demo/cm-$i" "{\"data\":{\"n\":\"$i\"}}" >/dev/null; done
"${etcdsafe[@]}" config check

# The main job: the service. It takes a backup at start (none is recent), serves the API and
# metrics on 127.0.0.1:9379, and would go on every 15 minutes.
"${etcdsafe[@]}" --log-format text run --backup-now >"$work/service.log" 2>&1 &
service_pid=$!
stop_all() {
  kill "$service_pid" 2>/dev/null || true
  wait "$service_pid" 2>/dev/null || true
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
}
trap stop_all EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:9379/healthz >/dev/null && break; sleep 0.2; done
for _ in $(seq 100); do
  [ "$(curl -s http://127.0.0.1:9379/metrics | sed -n 's/^etcdsafe_backup_runs_total{result="success"} //p')" = "1" ] && break
  sleep 0.2
done
echo "demo: the service took its first backup; asking it for an on-demand one over the API:"
etcdctl put /registry/configmaps/demo/counter 42 >/dev/null
curl -sf -X POST http://127.0.0.1:9379/v1/snapshots -d '{"reason":"manual","labels":{"demo":"true"}}' \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print("  stored", m["id"], "revision", m["snapshot"]["revision"])'
echo "demo: a few of its metrics:"
curl -s http://127.0.0.1:9379/metrics | grep -E '^etcdsafe_(backup_runs_total|last_success_timestamp_seconds|backups_stored|backup_bytes)' | sed 's/^/  /'

"${etcdsafe[@]}" backups list
rm -f "$work/latest.db"
"${etcdsafe[@]}" backups fetch latest -o "$work/latest.db" --identity "$work/identity.txt"
target/debug/etcdsafe snapshot status "$work/latest.db" -w table
kill -TERM "$service_pid"; wait "$service_pid" || true
echo "demo: service stopped (SIGTERM). Its log: $work/service.log"
echo "demo: backups are in $work/backups; open one with stock tools:"
echo "  age -d -i $work/identity.txt $work/backups/<id>.db.zst.age | zstd -d > snapshot.db"
