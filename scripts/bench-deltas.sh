#!/usr/bin/env bash
# Benchmark of continuous backup (README: Benchmark, "Continuous backup"), on a local etcd 3.5.1:
#   bash scripts/bench-deltas.sh
# 1. capture: a fresh etcd; an unthrottled write probe (examples/load_etcd.rs, 1 KiB puts from 16
#    clients) finds the highest put rate etcd sustains here; the same load at that rate without
#    etcdsafe (control); a full backup; then `etcdsafe run` with `deltas` captures while the
#    load writes at that rate for DELTAS_SECONDS. Each load also reports etcd's CPU. Sampled every
#    second: etcdsafe_delta_lag_seconds, the observed and sealed revisions (etcdsafe /metrics),
#    etcd's head revision (etcd /metrics), etcdsafe's CPU (/proc/PID/stat) and RSS; VmHWM at the
#    end. Storage: segment bytes (their manifests) per event and per day at that rate.
# 2. pitr: a ~1 GiB etcd (BENCH_CACHE's etcd-1GiB copied, or filled by examples/fill_etcd.rs), a
#    full backup, the service capturing DELTAS_PITR_EVENTS puts, then, with etcd and the service
#    stopped, DELTAS_FETCH_ROUNDS rounds of `backups fetch <id>` and `backups fetch <id>
#    --at-revision <newest>` alternately (wall time, peak RSS and user+sys CPU by /usr/bin/time;
#    no cache dropping, like scripts/bench.sh).
# Prints a markdown summary; raw outputs (samples, load results, logs, times) stay in BENCH_OUT.
#
# Env knobs (defaults):
#   DELTAS_PARTS="capture pitr"  which parts run
#   DELTAS_CLIENTS=16            load generator clients (one connection each)
#   DELTAS_VALUE_SIZE=1024       bytes per put
#   DELTAS_KEYS=100000           distinct keys the puts cycle over
#   DELTAS_PROBE_SECONDS=20      the unthrottled probe of etcd's write rate (no etcdsafe running)
#   DELTAS_RATE=                 skip the probe and write at this many puts/s
#   DELTAS_RATE_PERCENT=100      the capture run writes at this share of the probe's rate
#   DELTAS_SECONDS=60            the capture run's load
#   DELTAS_INTERVAL=10s          deltas.interval
#   DELTAS_PITR_EVENTS=100000    puts captured on top of the 1 GiB full backup
#   DELTAS_PITR_RATE=            their rate (default: the capture run's)
#   DELTAS_FETCH_ROUNDS=2        rounds of the two fetches
#   DELTAS_FETCH_WARMUP=1        an unmeasured plain fetch before them (0: none)
#   BENCH_SIZE=1GiB              the pitr part's etcd size
#   BENCH_CACHE=DIR              take the filled etcd from DIR/etcd-$BENCH_SIZE (copied: the
#                                cache is never written); without it, or when absent, fill one
#   BENCH_OUT=target/bench-deltas/<time>   raw outputs
#   DELTAS_CONTROL=1             before the capture run, the same load without etcdsafe (0: skip)
#   DELTAS_KEEP=0                1: keep the work dir (stores, etcd data) for a look afterwards
#   CARGO_TARGET_DIR             where the release binaries are built (as cargo)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin35="$root/.deps/etcd-v3.5.1"
[ -x "$bin35/etcd" ] || { echo "bench-deltas: run scripts/install-deps.sh first" >&2; exit 1; }
parts=${DELTAS_PARTS:-capture pitr}
clients=${DELTAS_CLIENTS:-16}
value_size=${DELTAS_VALUE_SIZE:-1024}
keys=${DELTAS_KEYS:-100000}
probe_seconds=${DELTAS_PROBE_SECONDS:-20}
rate_percent=${DELTAS_RATE_PERCENT:-100}
seconds=${DELTAS_SECONDS:-60}
interval=${DELTAS_INTERVAL:-10s}
pitr_events=${DELTAS_PITR_EVENTS:-100000}
fetch_rounds=${DELTAS_FETCH_ROUNDS:-2}
size=${BENCH_SIZE:-1GiB}
out=${BENCH_OUT:-$root/target/bench-deltas/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

cargo build --release --locked --bin etcdsafe --example fill_etcd --example load_etcd >&2
target_dir=${CARGO_TARGET_DIR:-$root/target}
etcdsafe="$target_dir/release/etcdsafe"
load="$target_dir/release/examples/load_etcd"
fill="$target_dir/release/examples/fill_etcd"

work=$(mktemp -d /var/tmp/etcdsafe-bench-deltas.XXXXXX)
etcd_pid=""; service_pid=""; sampler_pid=""
stop_pid() { if [ -n "$1" ]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() {
  stop_pid "$sampler_pid"; stop_pid "$service_pid"; stop_pid "$etcd_pid"
  if [ "${DELTAS_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "bench-deltas: $*" >&2; }

# start_etcd DATA_DIR NAME: sets etcd_pid, cport (client), eport (etcd's metrics).
start_etcd() {
  local dir=$1 name=$2 pport
  cport=$(port); pport=$(port); eport=$(port)
  "$bin35/etcd" --name bench --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" --initial-cluster-token bench \
    --listen-metrics-urls "http://127.0.0.1:$eport" \
    --quota-backend-bytes 8589934592 >"$out/etcd-$name.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 150); do
    ETCDCTL_API=3 "$bin35/etcdctl" --endpoints "127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  log "etcd did not start: $out/etcd-$name.log"; exit 1
}
stop_etcd() { stop_pid "$etcd_pid"; etcd_pid=""; }
head_revision() {
  ETCDCTL_API=3 "$bin35/etcdctl" --endpoints "127.0.0.1:$cport" endpoint status -w json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}

age-keygen -o "$work/key.txt" 2>/dev/null
recipient=$(sed -n 's/^# public key: //p' "$work/key.txt")
# write_config NAME: a service config against the running etcd, its own store and spool.
write_config() {
  local name=$1
  sport=$(port)
  cat >"$work/$name.yaml" <<YAML
etcd: { endpoints: [http://127.0.0.1:$cport] }
spool-dir: $work/$name-spool
compression: { level: 1 }
encryption: { recipients: [$recipient] }
storage: { local: { path: $work/$name-store } }
schedule: "0 0 1 1 *"          # no scheduled backup during the run
audit-schedule: "0 0 1 1 *"
server: { listen: 127.0.0.1:$sport }
coordination: none
deltas: { interval: $interval }
YAML
  cp "$work/$name.yaml" "$out/"
}
metric() { # metric NAME: its value on the service's /metrics (empty when absent)
  curl -fsS "http://127.0.0.1:$sport/metrics" 2>/dev/null | awk -v m="$1" '$1 == m { print $2 }'
}
start_service() {
  local name=$1
  "$etcdsafe" --config "$work/$name.yaml" run >"$out/service-$name.log" 2>&1 &
  service_pid=$!
  for _ in $(seq 100); do
    [ -n "$(metric etcdsafe_delta_interval_seconds)" ] && return
    kill -0 "$service_pid" 2>/dev/null || break
    sleep 0.2
  done
  log "the service did not start: $out/service-$name.log"; exit 1
}
# wait_sealed REVISION: until the service has sealed up to REVISION; prints the seconds waited.
wait_sealed() {
  local want=$1 t0; t0=$(date +%s.%N)
  for _ in $(seq 600); do
    local sealed; sealed=$(metric etcdsafe_delta_last_sealed_revision)
    if [ -n "$sealed" ] && [ "${sealed%.*}" -ge "$want" ]; then
      python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')"; return
    fi
    sleep 0.5
  done
  log "the service did not seal revision $want"; exit 1
}
stop_service() { stop_pid "$service_pid"; service_pid=""; }
# sampler: one JSON line a second: lag, revisions, etcdsafe's CPU ticks and RSS.
start_sampler() {
  python3 - "$sport" "$eport" "$service_pid" "$1" <<'PY' &
import json, sys, time, urllib.request
sport, eport, pid, path = sys.argv[1:5]
tck = 100
def scrape(url, names):
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except Exception:
        return {}
    got = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in names:
            got[parts[0]] = float(parts[1])
    return got
with open(path, "w") as f:
    nxt = time.time()
    while True:
        s = scrape(f"http://127.0.0.1:{sport}/metrics", {"etcdsafe_delta_lag_seconds", "etcdsafe_delta_observed_revision", "etcdsafe_delta_last_sealed_revision"})
        e = scrape(f"http://127.0.0.1:{eport}/metrics", {"etcd_debugging_mvcc_current_revision"})
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / tck
            rss = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0]
        except Exception:
            cpu, rss = None, None
        f.write(json.dumps({"t": round(time.time(), 3), "lag": s.get("etcdsafe_delta_lag_seconds"),
            "observed": s.get("etcdsafe_delta_observed_revision"), "sealed": s.get("etcdsafe_delta_last_sealed_revision"),
            "etcd": e.get("etcd_debugging_mvcc_current_revision"), "cpu_s": cpu, "rss_kib": rss and int(rss),
            "load1": float(open("/proc/loadavg").read().split()[0])}) + "\n")
        f.flush()
        nxt += 1
        time.sleep(max(0, nxt - time.time()))
PY
  sampler_pid=$!
}
stop_sampler() { stop_pid "$sampler_pid"; sampler_pid=""; }
# run_load NAME ARGS...: the load generator against the running etcd; its JSON result in
# $out/NAME.json, with its own CPU seconds and etcd's CPU seconds during it added.
run_load() {
  local name=$1; shift
  local e0 e1; e0=$(cpu_seconds "$etcd_pid")
  /usr/bin/time -f "%U %S" -o "$work/load.time" "$load" "http://127.0.0.1:$cport" --clients "$clients" --conns "$clients" \
    --value-size "$value_size" --keys "$keys" "$@" >"$work/load.json"
  e1=$(cpu_seconds "$etcd_pid")
  python3 - "$work/load.json" "$work/load.time" "$e0" "$e1" >"$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
u, s = map(float, open(sys.argv[2]).read().split()[-2:])
r["load_generator_cpu_s"] = round(u + s, 2)
r["etcd_cpu_s"] = round(float(sys.argv[4]) - float(sys.argv[3]), 2)
r["etcd_cpu_ms_per_put"] = round(r["etcd_cpu_s"] / max(r["puts"], 1) * 1000, 4)
print(json.dumps(r))
PY
}
cpu_seconds() { python3 -c "s=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print((int(s[11])+int(s[12]))/100)"; }
vm_hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
json_get() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" | tee "$out/summary.txt"
echo "load at start (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"

rate=${DELTAS_RATE:-}
if [[ " $parts " == *" capture "* ]]; then
  start_etcd "$work/etcd-capture" capture
  if [ -z "$rate" ]; then
    log "probe: ${probe_seconds}s of unthrottled puts from $clients clients"
    run_load probe --seconds "$probe_seconds" --prefix /bench/probe/
    probe_rate=$(json_get "$out/probe.json" '["puts_per_second"]')
    rate=$(python3 -c "print(int($probe_rate * $rate_percent / 100))")
    echo "probe (no etcdsafe): $(cat "$out/probe.json")" | tee -a "$out/summary.txt"
  fi
  if [ "${DELTAS_CONTROL:-1}" = 1 ]; then
    log "control: ${seconds}s of puts at $rate/s, no etcdsafe running"
    run_load control --seconds "$seconds" --rate "$rate" --prefix /bench/control/
    echo "control (no etcdsafe): $(cat "$out/control.json")" | tee -a "$out/summary.txt"
  fi
  write_config capture
  "$etcdsafe" --config "$work/capture.yaml" snapshot save --reason bench-base >/dev/null
  start_service capture
  sleep 2
  base_rev=$(head_revision)
  start_sampler "$out/capture-samples.jsonl"
  cpu0=$(cpu_seconds "$service_pid")
  log "capture: ${seconds}s of puts at $rate/s, the service capturing (interval $interval)"
  run_load capture-load --seconds "$seconds" --rate "$rate"
  end_rev=$(head_revision)
  load_end=$(date +%s.%N)
  drain=$(wait_sealed "$end_rev")
  sleep 1
  cpu1=$(cpu_seconds "$service_pid")
  hwm=$(vm_hwm "$service_pid")
  stop_sampler
  stop_service
  stop_etcd
  "$etcdsafe" --config "$work/capture.yaml" backups list -w json >"$out/capture-list.json"
  python3 - "$work/capture-store" "$out" "$base_rev" "$end_rev" "$cpu0" "$cpu1" "$hwm" "$drain" "$load_end" "$rate" <<'PY' | tee -a "$out/summary.txt"
import glob, json, os, statistics, sys
store, out, base_rev, end_rev, cpu0, cpu1, hwm, drain, load_end, rate = sys.argv[1:]
base_rev, end_rev, hwm, rate = int(base_rev), int(end_rev), int(hwm), int(rate)
cpu = float(cpu1) - float(cpu0)
segs = [json.load(open(p)) for p in sorted(glob.glob(f"{store}/deltas/*.json"))]
events = sum(s["events"] for s in segs)
seg_bytes = sum(s["object"]["size"] for s in segs)
first = min(s["firstRevision"] if "firstRevision" in s else s["first_revision"] for s in segs)
last = max(s["lastRevision"] if "lastRevision" in s else s["last_revision"] for s in segs)
load = json.load(open(f"{out}/capture-load.json"))
listing = json.load(open(f"{out}/capture-list.json"))
samples = [json.loads(l) for l in open(f"{out}/capture-samples.jsonl")]
# the load's window: from the first sample to the load's end
during = [s for s in samples if s["t"] <= float(load_end)]
lags = sorted(s["lag"] for s in during if s["lag"] is not None)
p95 = lags[min(len(lags) - 1, int(len(lags) * 0.95))]
# revisions etcd had that the capture had not yet observed, as seconds of writes at the load's rate
behind = sorted((s["etcd"] - s["observed"]) for s in during if s["etcd"] and s["observed"])
behind_s = [b / load["puts_per_second"] for b in behind]
rss = max((s["rss_kib"] or 0) for s in samples)
load1 = [s["load1"] for s in samples]
log = [json.loads(l) for l in open(f"{out}/service-capture.log") if l.startswith("{")]
seals = [(l["timestamp"][11:23], l["events"], l["bytes"]) for l in log if l.get("message") == "delta segment sealed"]
problems = [l["message"] for l in log if l.get("level") in ("WARN", "ERROR")]
r = {
  "target_rate": rate, "achieved_rate": load["puts_per_second"], "puts": load["puts"], "load_seconds": load["seconds"],
  "put_latency_ms": load["latency_ms"], "etcd_cpu_ms_per_put": load["etcd_cpu_ms_per_put"],
  "load_generator_cpu_s": load["load_generator_cpu_s"],
  "revisions": end_rev - base_rev, "events_in_segments": events, "segments": len(segs),
  "segment_revisions": [first, last], "events_per_second_captured": events / load["seconds"],
  "lag_metric_max_s": lags[-1], "lag_metric_p95_s": p95, "lag_metric_mean_s": statistics.mean(lags), "samples": len(lags),
  "observed_behind_etcd_revisions_max": behind[-1] if behind else None,
  "observed_behind_etcd_revisions_p95": behind[min(len(behind) - 1, int(len(behind) * 0.95))] if behind else None,
  "observed_behind_etcd_seconds_max": behind_s[-1] if behind_s else None,
  "seconds_from_last_put_to_sealed": float(drain),
  "etcdsafe_vmhwm_mib": hwm / 1024, "etcdsafe_max_sampled_rss_mib": rss / 1024,
  "etcdsafe_cpu_seconds": cpu, "etcdsafe_cpu_seconds_per_1000_events": cpu / events * 1000,
  "segment_bytes": seg_bytes, "bytes_per_event": seg_bytes / events,
  "bytes_per_day_at_rate": seg_bytes / events * load["puts_per_second"] * 86400,
  "full_backup_object_bytes": listing["backups"][-1]["object"]["size"],
  "load1_during_min_max": [min(load1), max(load1)],
  "seals_time_events_bytes": seals, "service_warnings_errors": problems,
}
json.dump(r, open(f"{out}/capture-result.json", "w"), indent=1)
print("capture:", json.dumps(r))
PY
fi

if [[ " $parts " == *" pitr "* ]]; then
  pitr_rate=${DELTAS_PITR_RATE:-$rate}
  [ -n "$pitr_rate" ] || { log "pitr needs DELTAS_RATE or DELTAS_PITR_RATE without the capture part"; exit 1; }
  cache=${BENCH_CACHE:-}
  etcd_dir="$work/etcd-pitr"
  if [ -n "$cache" ] && [ -d "$cache/etcd-$size/member" ]; then
    log "pitr: copying $cache/etcd-$size"
    cp -a "$cache/etcd-$size" "$etcd_dir"
    start_etcd "$etcd_dir" pitr
  else
    start_etcd "$etcd_dir" pitr
    "$fill" "http://127.0.0.1:$cport" "$size" >&2
  fi
  write_config pitr
  "$etcdsafe" --config "$work/pitr.yaml" snapshot save --reason bench-base >/dev/null
  "$etcdsafe" --config "$work/pitr.yaml" backups list -w json >"$out/pitr-list.json"
  id=$(json_get "$out/pitr-list.json" '["backups"][-1]["id"]')
  start_service pitr
  log "pitr: $pitr_events puts at $pitr_rate/s on top of backup $id"
  run_load pitr-load --count "$pitr_events" --rate "$pitr_rate" --prefix /bench/pitr/
  newest=$(head_revision)
  wait_sealed "$newest" >/dev/null
  stop_service
  stop_etcd
  sync; sleep 3
  : >"$out/pitr-times.txt"
  measure() { # measure NAME CMD...: appends "NAME wall_seconds max_rss_kib cpu_seconds"
    local name=$1; shift
    /usr/bin/time -f "%e %M %U %S" -o "$work/time.out" "$@" >/dev/null 2>"$out/$name.err" \
      || { cat "$out/$name.err" >&2; exit 1; }
    echo "$name $(awk '{ printf "%s %s %.2f", $1, $2, $3 + $4 }' "$work/time.out") $(cut -d' ' -f1 /proc/loadavg)" >>"$out/pitr-times.txt"
  }
  # One unmeasured fetch first: on this VM the first writes into memory etcd just freed cost
  # several times more kernel time (see scripts/bench.sh), which would favour whichever runs second.
  if [ "${DELTAS_FETCH_WARMUP:-1}" = 1 ]; then
    "$etcdsafe" --config "$work/pitr.yaml" backups fetch "$id" --identity "$work/key.txt" -o "$work/warm.db" >/dev/null 2>&1
    rm -f "$work/warm.db"
  fi
  for round in $(seq "$fetch_rounds"); do
    measure fetch_full "$etcdsafe" --config "$work/pitr.yaml" backups fetch "$id" --identity "$work/key.txt" -o "$work/full.db"
    rm -f "$work/full.db"
    measure fetch_at_revision "$etcdsafe" --config "$work/pitr.yaml" backups fetch "$id" --at-revision "$newest" --identity "$work/key.txt" -o "$work/at.db"
    [ "$round" = 1 ] && "$etcdsafe" snapshot status -w json "$work/at.db" >"$out/pitr-at-status.json" 2>&1 || true
    rm -f "$work/at.db"
  done
  python3 - "$work/pitr-store" "$out" "$newest" "$id" <<'PY' | tee -a "$out/summary.txt"
import glob, json, sys
store, out, newest, bid = sys.argv[1:]
segs = [json.load(open(p)) for p in sorted(glob.glob(f"{store}/deltas/*.json"))]
listing = json.load(open(f"{out}/pitr-list.json"))
b = listing["backups"][-1]
times = {}
for line in open(f"{out}/pitr-times.txt"):
    name, wall, rss, cpu, load1 = line.split()
    times.setdefault(name, []).append({"wall_s": float(wall), "rss_mib": int(rss) // 1024, "cpu_s": float(cpu), "load1": float(load1)})
full = [t["wall_s"] for t in times["fetch_full"]]
at = [t["wall_s"] for t in times["fetch_at_revision"]]
full_cpu = [t["cpu_s"] for t in times["fetch_full"]]
at_cpu = [t["cpu_s"] for t in times["fetch_at_revision"]]
r = {
  "backup": bid, "base_revision": b["snapshot"]["revision"], "db_bytes": b["snapshot"]["size"],
  "full_object_bytes": b["object"]["size"], "at_revision": int(newest),
  "events": sum(s["events"] for s in segs), "segments": len(segs), "segment_bytes": sum(s["object"]["size"] for s in segs),
  "load": json.load(open(f"{out}/pitr-load.json")),
  "fetch_full": times["fetch_full"], "fetch_at_revision": times["fetch_at_revision"],
  "ratio_per_round": [round(a / f, 3) for a, f in zip(at, full)], "ratio_of_sums": round(sum(at) / sum(full), 3),
  "cpu_ratio_per_round": [round(a / f, 3) for a, f in zip(at_cpu, full_cpu)],
}
json.dump(r, open(f"{out}/pitr-result.json", "w"), indent=1)
print("pitr:", json.dumps(r))
PY
fi
echo "load at end (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
log "raw outputs: $out"
