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
    const ALL: [Stage; 3] = [Stage::Journal, Stage::Ship, Stage::Record];

    fn name(self) -> &'static str {
        match self {
            Stage::Journal => "journal",
            Stage::Ship => "ship",
            Stage::Record => "record",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// `WARDEN_ABLATE` as read at the first question, and the stages it names (a bit
/// each): parsed once, as it is asked on every statement.
#[cfg(feature = "ablation")]
fn setting() -> &'static (String, u8) {
    static SETTING: std::sync::OnceLock<(String, u8)> = std::sync::OnceLock::new();
    SETTING.get_or_init(|| {
        let text = std::env::var("WARDEN_ABLATE").unwrap_or_default();
        let mask = Stage::ALL
            .into_iter()
            .filter(|stage| text.split(',').any(|s| s.trim() == stage.name()))
            .fold(0, |mask, stage| mask | stage.bit());
        (text, mask)
    })
}

/// Whether `stage` is left out (only ever with the `ablation` feature).
#[cfg(feature = "ablation")]
pub fn skipped(stage: Stage) -> bool {
    setting().1 & stage.bit() != 0
}

/// Whether `stage` is left out: never, in this build.
#[cfg(not(feature = "ablation"))]
#[inline(always)]
pub const fn skipped(_stage: Stage) -> bool {
    false
}

/// What the gateway says loudly at start when this is a benchmark build.
#[cfg(feature = "ablation")]
pub fn warning() -> Option<String> {
    Some(format!(
        "this is a benchmark build (feature `ablation`): stages skipped: \"{}\". Never deploy it.",
        setting().0
    ))
}

/// What the gateway says loudly at start when this is a benchmark build: nothing.
#[cfg(not(feature = "ablation"))]
pub const fn warning() -> Option<String> {
    None
}
