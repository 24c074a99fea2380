//! What chaining audit events costs the gateway's CPU, as a figure that does not move
//! with the machine's load: ships `SHIPMENTS` shipments of 256 statement and outcome
//! events (an 8-client pgbench's 40 ms) into a fresh SQLite store and prints the
//! process's CPU time per event. Under `valgrind --tool=callgrind` its instruction
//! count is the repeatable figure (`scripts/bench-store.sh` does both).
//!
//!   cargo run --release -p warden-store --example audit_ship_cost [SHIPMENTS]

use serde_json::json;
use warden_core::{AuthMethod, Decision, Event, Identity};
use warden_store::{Backend, MasterKey, Store};

const SHIPMENT: usize = 256;
/// Shipments built at least (`scripts/bench-store.sh` ships 20 and 60).
const BUILT: usize = 60;

fn shipment(sessions: &[uuid::Uuid], identity: &Identity, round: usize) -> Vec<Event> {
    (0..SHIPMENT)
        .map(|i| {
            let session = sessions[(i / 2) % sessions.len()];
            let event = if i % 2 == 0 {
                Event::new(
                    "pg.query",
                    json!({"sql": format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", round * SHIPMENT + i),
                           "via": "Query"}),
                )
                .with_decision(Decision::Allow)
            } else {
                Event::new(
                    "pg.outcome",
                    json!({"duration_us": 180, "rows": 1, "rows_affected": null, "tag": "SELECT 1"}),
                )
            };
            event.by(identity).on_connection("bench").in_session(session)
        })
        .collect()
}

fn cpu_seconds() -> f64 {
    // utime + stime, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shipments: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let identity = Identity {
        subject: "alice@example.com".into(),
        groups: vec!["dba".into(), "developers".into()],
        method: AuthMethod::ApiKey {
            key_id: "k-1".into(),
        },
        expires_at: None,
    };
    let sessions: Vec<uuid::Uuid> = (0..8).map(|_| uuid::Uuid::now_v7()).collect();
    rt.block_on(async {
        let url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path()).await?;
        let store = Store::open(&url, &MasterKey::generate()?).await?;
        // At least BUILT shipments are built, whatever is shipped: callgrind counts
        // the whole process, and runs that differ only in how many they ship
        // difference the building away.
        let batches: Vec<Vec<Event>> = (0..shipments.max(BUILT))
            .map(|r| shipment(&sessions, &identity, r))
            .collect();
        let start = cpu_seconds();
        for events in &batches[..shipments] {
            store.append_audit_batch(events).await?;
        }
        let spent = cpu_seconds() - start;
        let events = (shipments * SHIPMENT) as f64;
        println!(
            "{} events in {shipments} shipments: {:.1} µs of CPU per event",
            events,
            spent * 1e6 / events
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
