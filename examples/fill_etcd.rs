//! Fills an etcd with Kubernetes-like objects until its database reaches a target size.
//! Used by `scripts/bench.sh`; not part of etcdsafe.
//!
//!     cargo run --release --example fill_etcd -- http://127.0.0.1:2379 1GiB
//!
//! Values look like what the API server stores: JSON-ish objects with names, labels, UIDs,
//! timestamps and a data blob of mixed text, so they compress like real cluster state does.

use std::time::Instant;

use etcd_client::Client;
use rand::{Rng, SeedableRng};

fn object(rng: &mut rand::rngs::StdRng, kind: &str, ns: &str, name: &str) -> Vec<u8> {
    let uid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.gen::<u32>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u64>() & 0xffff_ffff_ffff
    );
    let words = [
        "nginx",
        "redis",
        "replica",
        "deployment",
        "app",
        "tier",
        "frontend",
        "backend",
        "env",
        "production",
        "region",
        "zone",
        "image",
        "registry.k8s.io",
        "sidecar",
        "config",
    ];
    let mut data = String::new();
    let entries = rng.gen_range(20..400);
    for i in 0..entries {
        let w1 = words[rng.gen_range(0..words.len())];
        let w2 = words[rng.gen_range(0..words.len())];
        let noise: u64 = rng.gen();
        data.push_str(&format!("\"{w1}-{i}\":\"{w2}-{noise:x}\","));
    }
    format!(
        "{{\"kind\":\"{kind}\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{ns}\",\"uid\":\"{uid}\",\"resourceVersion\":\"{}\",\"creationTimestamp\":\"2026-11-{:02}T{:02}:{:02}:00Z\",\"labels\":{{\"app\":\"{name}\",\"pod-template-hash\":\"{:x}\"}}}},\"data\":{{{data}\"end\":\"1\"}}}}",
        rng.gen::<u32>(),
        rng.gen_range(1..28),
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen::<u32>()
    )
    .into_bytes()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .cloned()
        .unwrap_or("http://127.0.0.1:2379".into());
    let target = etcdsafe::units::parse_size(args.get(2).map_or("1GiB", String::as_str))
        .ok_or("second argument must be a size, e.g. 1GiB")?;
    let mut client = Client::connect([endpoint.clone()], None).await?;
    let started = Instant::now();
    let kinds = ["configmaps", "secrets", "pods", "events", "deployments"];
    let mut written = 0u64;
    let mut batch = 0u64;
    loop {
        let size = client.status().await?.db_size() as u64;
        if size >= target {
            println!(
                "fill_etcd: db is {size} bytes after {written} value bytes in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let mut tasks = Vec::new();
        for worker in 0..8u64 {
            let mut c = client.clone();
            let seed = batch * 8 + worker;
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut bytes = 0u64;
                for i in 0..250 {
                    let kind = kinds[rng.gen_range(0..kinds.len())];
                    let ns = format!("team-{}", rng.gen_range(0..40));
                    let name = format!("obj-{seed}-{i}");
                    let value = object(&mut rng, kind, &ns, &name);
                    bytes += value.len() as u64;
                    c.put(format!("/registry/{kind}/{ns}/{name}"), value, None)
                        .await?;
                }
                Ok::<u64, etcd_client::Error>(bytes)
            }));
        }
        for t in tasks {
            written += t.await??;
        }
        batch += 1;
    }
}
