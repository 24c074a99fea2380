//! Masker throughput on realistic result rows and guardrail latency per statement.
//!
//! `cargo bench -p warden-policy` prints MB/s for masking (goal: at least 200 MB/s per
//! core with five detectors on) and time per statement for guardrails (goal: at most
//! 20 µs for a typical statement).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use warden_core::{Action, Guard, Masker, SqlDialect};
use warden_policy::{Detector, Guardrails, MaskStyle, MaskingEngine, MaskingRules, PolicyConfig};

/// Rows like a customer/orders table: ids, names, timestamps, statuses, free text,
/// with an email, a phone number or a card number in some of them.
fn rows() -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for i in 0..2000u32 {
        let mut row = vec![
            format!("{}", 100_000 + i),
            format!("Customer {} of the northern region", i % 97),
            format!(
                "2026-11-{:02} 12:{:02}:{:02}+00",
                1 + i % 28,
                i % 60,
                (i * 7) % 60
            ),
            ["pending", "shipped", "delivered", "returned"][(i % 4) as usize].to_string(),
            format!(
                "Order notes: please deliver to the back door, gate code {} and ring twice",
                i % 10_000
            ),
            format!("{}.{:02}", i * 3, i % 100),
        ];
        match i % 10 {
            0 => row.push(format!("customer{i}@example.com")),
            1 => row.push("+1 415 555 0123".into()),
            2 => row.push("4111 1111 1111 1111".into()),
            _ => row.push(format!("SKU-{:08}", i * 13)),
        }
        rows.push(row);
    }
    rows
}

/// A masker with `detectors` on, each replacing what it finds whole.
fn masker(detectors: &[Detector]) -> MaskingEngine {
    MaskingEngine::new(
        MaskingRules {
            detectors: detectors.iter().map(|d| (*d, MaskStyle::Full)).collect(),
            custom: vec![],
            columns: vec![],
        },
        b"bench-key",
    )
    .unwrap_or_else(|e| unreachable!("{e}"))
}

fn masking(c: &mut Criterion) {
    let engine = masker(&[
        Detector::Email,
        Detector::CardNumber,
        Detector::UsSsn,
        Detector::Phone,
        Detector::Iban,
    ]);
    let rows = rows();
    let bytes: usize = rows.iter().flatten().map(String::len).sum();
    let mut group = c.benchmark_group("masking");
    group.throughput(Throughput::Bytes(bytes as u64));
    // What a proxy does: describe the columns once, then mask each value by its plan.
    use warden_core::{ColumnRef, ValueKind};
    let columns = [
        ("id", ValueKind::Number),
        ("name", ValueKind::Text),
        ("created_at", ValueKind::Temporal),
        ("status", ValueKind::Text),
        ("notes", ValueKind::Text),
        ("amount", ValueKind::Number),
        ("contact", ValueKind::Text),
    ];
    let plans: Vec<_> = columns
        .iter()
        .map(|(name, kind)| {
            engine.plan(&ColumnRef {
                schema: Some("public"),
                table: Some("orders"),
                column: name,
                kind: *kind,
            })
        })
        .collect();
    group.bench_function("realistic_rows_typed_columns", |b| {
        b.iter(|| {
            let mut changed = 0usize;
            for row in &rows {
                for (value, plan) in row.iter().zip(&plans) {
                    if !matches!(
                        engine.mask(*plan, black_box(value.as_bytes())),
                        warden_core::Masked::Unchanged
                    ) {
                        changed += 1;
                    }
                }
            }
            changed
        })
    });
    group.bench_function("realistic_rows_5_detectors", |b| {
        b.iter(|| {
            let mut changed = 0usize;
            for row in &rows {
                for value in row {
                    if !matches!(
                        engine.mask(warden_core::ColumnPlan::Detect, black_box(value.as_bytes())),
                        warden_core::Masked::Unchanged
                    ) {
                        changed += 1;
                    }
                }
            }
            changed
        })
    });
    let clean: Vec<&String> = rows
        .iter()
        .flatten()
        .filter(|v| !v.contains('@') && !v.starts_with('+') && !v.starts_with("4111"))
        .collect();
    let clean_bytes: usize = clean.iter().map(|v| v.len()).sum();
    group.throughput(Throughput::Bytes(clean_bytes as u64));
    group.bench_function("values_without_matches", |b| {
        b.iter(|| {
            clean
                .iter()
                .filter(|v| {
                    engine.mask(warden_core::ColumnPlan::Detect, black_box(v.as_bytes()))
                        != warden_core::Masked::Unchanged
                })
                .count()
        })
    });
    // Values made of digit groups, like sysbench's `c` and `pad` columns (and order,
    // tracking or account numbers): the card and phone detectors' shape test passes,
    // so every one goes through the combined regex and matches nothing.
    let groups: Vec<String> = (0..2000u64)
        .map(|i| {
            let n = if i % 3 == 0 { 5 } else { 10 };
            (0..n)
                .map(|g| {
                    format!(
                        "{:011}",
                        (i * 7_919 + g * 104_729).wrapping_mul(2_654_435_761) % 100_000_000_000
                    )
                })
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    let pii = masker(&[Detector::Email, Detector::CardNumber]);
    group.throughput(Throughput::Bytes(
        groups.iter().map(String::len).sum::<usize>() as u64,
    ));
    group.bench_function("digit_groups_email_and_card", |b| {
        b.iter(|| {
            groups
                .iter()
                .filter(|v| {
                    pii.mask(warden_core::ColumnPlan::Detect, black_box(v.as_bytes()))
                        != warden_core::Masked::Unchanged
                })
                .count()
        })
    });
    group.finish();
}

fn guardrails(c: &mut Criterion) {
    let config: PolicyConfig = toml::from_str(
        r#"
[[guardrails]]
name = "prod"
default_schema = "public"
[[guardrails.rules]]
name = "no-ddl"
sql_statements = ["ddl", "dcl"]
[[guardrails.rules]]
name = "no-unbounded"
sql_unbounded_writes = true
[[guardrails.rules]]
name = "billing"
sql_write_tables = ["billing.*"]
[[guardrails.rules]]
name = "functions"
sql_functions = ["pg_read_file", "lo_*", "dblink*"]
[[guardrails.rules]]
name = "shell"
shell = ["rm -r -f /", "shutdown", "curl | sh"]
"#,
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let guard =
        Guardrails::compile(&config.guardrails, &[]).unwrap_or_else(|e| unreachable!("{e}"));
    let mut group = c.benchmark_group("guardrails");
    for (name, sql) in [
        (
            "select_by_id",
            "SELECT id, name, email FROM users WHERE id = $1",
        ),
        (
            "update_with_where",
            "UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = 42",
        ),
        (
            "join_report",
            "SELECT o.id, c.name, sum(l.amount) FROM orders o JOIN customers c ON c.id = o.customer_id JOIN lines l ON l.order_id = o.id WHERE o.created_at > now() - interval '7 days' GROUP BY o.id, c.name ORDER BY 3 DESC LIMIT 50",
        ),
        ("denied_drop", "DROP TABLE users"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                guard.decide(black_box(&Action::Sql {
                    dialect: SqlDialect::Postgres,
                    text: sql,
                }))
            })
        });
    }
    group.bench_function("shell_command", |b| {
        b.iter(|| {
            guard.decide(black_box(&Action::Shell {
                command: "sudo systemctl restart nginx && tail -n 50 /var/log/nginx/error.log",
            }))
        })
    });
    group.finish();
}

criterion_group!(benches, masking, guardrails);
criterion_main!(benches);
