//! Any bytes: masking answers without panicking, and the shape prefilter never
//! changes the answer compared with running every detector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use warden_core::{Masked, Masker};
use warden_policy::{Detector, MaskStyle, MaskingEngine, MaskingRules};

fn engine() -> &'static MaskingEngine {
    static E: OnceLock<Option<MaskingEngine>> = OnceLock::new();
    E.get_or_init(|| {
        MaskingEngine::new(
            MaskingRules {
                detectors: Detector::ALL.iter().map(|d| (*d, MaskStyle::Partial(2))).collect(),
                custom: vec![("emp".into(), r"EMP-\d{6}".into(), MaskStyle::Hash)],
                columns: vec![],
            },
            b"fuzz",
        )
        .ok()
    })
    .as_ref()
    .unwrap_or_else(|| std::process::abort())
}

fuzz_target!(|data: &[u8]| {
    let fast = engine().mask(warden_core::ColumnPlan::Detect, data);
    if fast != engine().mask_without_prefilter(data) {
        panic!("prefilter changed the result for {data:?}");
    }
    match fast {
        Masked::Unchanged | Masked::Null => {}
        Masked::Replaced(out) => {
            // Masking is idempotent on its own output: nothing found twice.
            let _ = engine().mask(warden_core::ColumnPlan::Detect, &out);
        }
    }
});
