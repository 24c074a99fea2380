//! Values that match no detector are passed through without a single allocation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use warden_core::{Masked, Masker};
use warden_policy::{Detector, MaskStyle, MaskingEngine, MaskingRules};

#[test]
fn unmatched_values_allocate_nothing() {
    let engine = MaskingEngine::new(
        MaskingRules {
            detectors: Detector::ALL
                .iter()
                .map(|d| (*d, MaskStyle::Full))
                .collect(),
            custom: vec![("emp".into(), r"EMP-\d{6}".into(), MaskStyle::Full)],
            columns: vec![],
        },
        b"k",
    )
    .unwrap();
    let values: Vec<&[u8]> = vec![
        b"Customer 42 of the northern region",
        b"2026-11-29 12:30:45+00",
        b"Order notes: please deliver to the back door and ring twice",
        b"",
        b"12345",
    ];
    // Warm the regex caches, which are allocated once per thread.
    for v in &values {
        assert_eq!(
            engine.mask(warden_core::ColumnPlan::Detect, v),
            Masked::Unchanged
        );
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            for v in &values {
                assert_eq!(
                    engine.mask(warden_core::ColumnPlan::Detect, v),
                    Masked::Unchanged
                );
            }
        }
    });
    assert_eq!(info.count_total, 0, "unmatched values allocated: {info:?}");

    // The counter does count: a matching value allocates its replacement.
    let info = allocation_counter::measure(|| {
        assert!(matches!(
            engine.mask(warden_core::ColumnPlan::Detect, b"bob@example.com"),
            Masked::Replaced(_)
        ));
    });
    assert!(info.count_total > 0);
}
