//! Stage ablation, for measuring what each stage of the statement path costs
//! (`scripts/bench-ladder.sh`): with the `ablation` feature, `WARDEN_ABLATE` names
//! stages to skip (`journal`, `ship`, `record`, comma-separated). Without the feature
//! — every build but that benchmark's — [`skipped`] is a constant `false`: no setting
//! or variable can turn the audit or the recording off.

/// A stage of the statement path that the ladder benchmark can leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Appending audit events to the journal (and so shipping them too).
    Journal,
    /// Shipping journaled events into the store's chain (taken and dropped).
    Ship,
    /// Writing session recordings.
    Record,
}

#[cfg(feature = "ablation")]
impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Journal => "journal",
            Stage::Ship => "ship",
            Stage::Record => "record",
        }
    }
}

/// Whether `stage` is left out (only ever with the `ablation` feature).
#[cfg(feature = "ablation")]
pub fn skipped(stage: Stage) -> bool {
    static SKIPPED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SKIPPED
        .get_or_init(|| std::env::var("WARDEN_ABLATE").unwrap_or_default())
        .split(',')
        .any(|s| s.trim() == stage.name())
}

/// Whether `stage` is left out: never, in this build.
#[cfg(not(feature = "ablation"))]
#[inline(always)]
pub const fn skipped(_stage: Stage) -> bool {
    false
}

/// Whether this build can skip stages (the gateway says so loudly at start).
pub const ENABLED: bool = cfg!(feature = "ablation");
