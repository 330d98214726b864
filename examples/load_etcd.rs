//! A write load for etcd: puts of a fixed value size from many clients, at a target rate or as
//! fast as etcd takes them. Used by `scripts/bench-deltas.sh`; not part of etcdsafe.
//!
//!     cargo run --release --example load_etcd -- http://127.0.0.1:2379 \
//!         [--clients 16] [--conns 16] [--rate 0] [--seconds 60] [--count 0] [--value-size 1024] \
//!         [--keys 100000] [--prefix /bench/load/]
//!
//! `--rate 0` writes as fast as etcd answers (each client has one put in flight); otherwise the
//! clients share `--rate` puts per second between them. It stops after `--seconds`, or after
//! `--count` puts when that is set. Keys are `<prefix><client>/<n % keys-per-client>` (updates
//! of existing keys, like a cluster's status updates); values are JSON-ish text with random
//! hex, which zstd shrinks about as much as Kubernetes objects. Prints one JSON line: puts,
//! seconds, puts_per_second, the first and last revisions the puts got, latency percentiles.

use std::time::{Duration, Instant};

use etcd_client::Client;
use rand::{Rng, SeedableRng};

struct Args {
    endpoint: String,
    clients: usize,
    conns: usize,
    rate: f64,
    seconds: f64,
    count: u64,
    value_size: usize,
    keys: u64,
    prefix: String,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        endpoint: "http://127.0.0.1:2379".into(),
        clients: 16,
        conns: 16,
        rate: 0.0,
        seconds: 60.0,
        count: 0,
        value_size: 1024,
        keys: 100_000,
        prefix: "/bench/load/".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<f64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--clients" => args.clients = num(value()?)? as usize,
            "--conns" => args.conns = num(value()?)? as usize,
            "--rate" => args.rate = num(value()?)?,
            "--seconds" => args.seconds = num(value()?)?,
            "--count" => args.count = num(value()?)? as u64,
            "--value-size" => args.value_size = num(value()?)? as usize,
            "--keys" => args.keys = num(value()?)? as u64,
            "--prefix" => args.prefix = value()?,
            s if s.starts_with("http") => args.endpoint = s.to_string(),
            s => return Err(format!("unknown argument {s}")),
        }
    }
    if args.clients == 0 || args.conns == 0 {
        return Err("--clients and --conns must be at least 1".into());
    }
    Ok(args)
}

fn value(rng: &mut rand::rngs::StdRng, size: usize) -> Vec<u8> {
    let words = [
        "status",
        "ready",
        "replicas",
        "conditions",
        "lastTransitionTime",
        "observed",
        "generation",
        "phase",
        "Running",
        "podIP",
        "hostIP",
        "containerStatuses",
        "restartCount",
    ];
    let mut s = String::with_capacity(size + 64);
    s.push('{');
    while s.len() < size - 1 {
        let w = words[rng.gen_range(0..words.len())];
        let n: u32 = rng.gen();
        s.push_str(&format!("\"{w}\":\"{n:08x}\","));
    }
    s.truncate(size - 1);
    s.push('}');
    s.into_bytes()
}

struct Done {
    puts: u64,
    first_rev: i64,
    last_rev: i64,
    latencies_us: Vec<u32>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse().map_err(|e| format!("load_etcd: {e}"))?;
    let mut conns = Vec::new();
    for _ in 0..args.conns {
        conns.push(Client::connect([args.endpoint.clone()], None).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let per_client_count = if args.count > 0 {
        Some(args.count.div_ceil(args.clients as u64))
    } else {
        None
    };
    let keys_per_client = (args.keys / args.clients as u64).max(1);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut kv = conns[c % args.conns].kv_client();
        let rate = args.rate;
        let clients = args.clients;
        let (prefix, value_size) = (args.prefix.clone(), args.value_size);
        // The last client takes what the division leaves over so the total is exact.
        let my_count = per_client_count.map(|n| {
            let before = n * c as u64;
            n.min(args.count.saturating_sub(before))
        });
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64 + 1);
            let mut ticker = (rate > 0.0).then(|| {
                let period = Duration::from_secs_f64(clients as f64 / rate);
                // Spread the clients' ticks over one period.
                let start = tokio::time::Instant::now() + period.mul_f64(c as f64 / clients as f64);
                let mut t = tokio::time::interval_at(start, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut done = Done {
                puts: 0,
                first_rev: i64::MAX,
                last_rev: 0,
                latencies_us: Vec::new(),
            };
            loop {
                if my_count.is_some_and(|n| done.puts >= n) {
                    break;
                }
                if my_count.is_none() && Instant::now() >= deadline {
                    break;
                }
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let key = format!("{prefix}{c:02}/{:08}", done.puts % keys_per_client);
                let v = value(&mut rng, value_size);
                let sent = Instant::now();
                let response = kv.put(key, v, None).await?;
                done.latencies_us.push(sent.elapsed().as_micros() as u32);
                if let Some(h) = response.header() {
                    done.first_rev = done.first_rev.min(h.revision());
                    done.last_rev = done.last_rev.max(h.revision());
                }
                done.puts += 1;
            }
            Ok::<Done, etcd_client::Error>(done)
        }));
    }
    let mut puts = 0;
    let (mut first_rev, mut last_rev) = (i64::MAX, 0);
    let mut lat = Vec::new();
    for t in tasks {
        let d = t.await??;
        puts += d.puts;
        first_rev = first_rev.min(d.first_rev);
        last_rev = last_rev.max(d.last_rev);
        lat.extend(d.latencies_us);
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    println!(
        "{{\"puts\":{puts},\"seconds\":{seconds:.3},\"puts_per_second\":{:.1},\"first_revision\":{},\"last_revision\":{last_rev},\"clients\":{},\"conns\":{},\"target_rate\":{},\"value_size\":{},\"latency_ms\":{{\"p50\":{:.2},\"p95\":{:.2},\"p99\":{:.2},\"max\":{:.2}}}}}",
        puts as f64 / seconds,
        if first_rev == i64::MAX { 0 } else { first_rev },
        args.clients,
        args.conns,
        args.rate,
        args.value_size,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}
