//! What chaining audit events into the store costs: a shipment of the journal (as
//! the gateway makes every 10 ms under load) of realistic statement and outcome
//! events, into a fresh SQLite store, and into PostgreSQL when one is reachable
//! (`WARDEN_TEST_PG_URL`).
//!
//! `cargo bench -p warden-store` prints the time per shipment; divide by its size for
//! the cost per event, which every audited statement pays twice (statement, outcome).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;
use warden_core::{AuthMethod, Decision, Event, Identity};
use warden_store::{Backend, MasterKey, Store};

/// Events per shipment: about 10 ms of an 8-client pgbench through the gateway.
const SHIPMENT: usize = 64;

fn shipment() -> Vec<Event> {
    let identity = Identity {
        subject: "alice@example.com".into(),
        groups: vec!["dba".into(), "developers".into()],
        method: AuthMethod::ApiKey {
            key_id: "k-1".into(),
        },
        expires_at: None,
    };
    let session = uuid::Uuid::now_v7();
    (0..SHIPMENT)
        .map(|i| {
            let event = if i % 2 == 0 {
                Event::new(
                    "pg.query",
                    json!({"sql": format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", 1000 + i), "via": "Query"}),
                )
                .with_decision(Decision::Allow)
            } else {
                Event::new("pg.outcome", json!({"tag": "SELECT 1", "rows": 1, "duration_us": 180}))
            };
            event.by(&identity).on_connection("bench").in_session(session)
        })
        .collect()
}

fn ship(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return eprintln!("no runtime: {e}"),
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    // PostgreSQL only where one is reachable.
    let mut stores = Vec::new();
    for (name, backend) in [("sqlite", Backend::Sqlite), ("postgres", Backend::Postgres)] {
        if let Ok(key) = MasterKey::generate()
            && let Ok(url) = rt.block_on(warden_store::testing::fresh_url(backend, dir.path()))
            && let Ok(store) = rt.block_on(Store::open(&url, &key))
        {
            stores.push((name, Arc::new(store)));
        }
    }
    let mut group = c.benchmark_group("audit shipment");
    group.throughput(Throughput::Elements(SHIPMENT as u64));
    for (name, store) in stores {
        group.bench_function(format!("{name}, {SHIPMENT} events"), |b| {
            b.to_async(&rt).iter_batched(
                shipment,
                |events| {
                    let store = store.clone();
                    async move { store.append_audit_batch(&events).await }
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, ship);
criterion_main!(benches);
