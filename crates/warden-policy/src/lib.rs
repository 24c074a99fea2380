//! Warden's policy engine: decides actions and masks results, knowing nothing about
//! wire protocols or storage.
//!
//! - [`Guardrails`] implements [`warden_core::Guard`]: SQL rules on a real parser
//!   ([`sql`]), argv-aware shell rules ([`shell`]), HTTP method/path rules ([`http`]), Kubernetes verb/resource rules ([`kube`]),
//!   and review rules with the same matchers. It fails closed: what cannot be
//!   evaluated is denied unless a set says otherwise.
//! - [`MaskingEngine`] implements [`warden_core::Masker`]: content detectors with
//!   checksums and column rules, in four styles.
//! - [`spec`] holds the sets as users write them.

mod connection;
mod engine;
mod forms;
pub mod glob;
pub mod http;
pub mod kube;
pub mod masking;
mod reading;
mod shape;
pub mod shell;
pub mod spec;
pub mod sql;
pub mod weaken;

pub use connection::{ConnectionGuard, DATABASE_PIN_RULE};
pub use engine::Guardrails;
pub use masking::{ColumnPattern, Detector, MaskStyle, MaskingEngine, MaskingRules};
pub use spec::{
    ColumnRule, CustomDetector, Fallback, GuardrailSet, MaskingSet, PolicyConfig, PolicyError,
    RuleAction, RuleSpec,
};

impl MaskingEngine {
    /// Compiles the union of several masking sets (detectors deduplicated: the first
    /// set naming a detector sets its style).
    pub fn from_sets(sets: &[MaskingSet], hash_key: &[u8]) -> Result<Self, PolicyError> {
        let mut rules = MaskingRules {
            detectors: Vec::new(),
            custom: Vec::new(),
            columns: Vec::new(),
        };
        for set in sets {
            let err = |m: String| PolicyError {
                set: set.name.clone(),
                message: m,
            };
            let style: MaskStyle = set.style.parse().map_err(err)?;
            rules
                .detectors
                .extend(set.detectors.iter().map(|d| (*d, style)));
            for c in &set.custom {
                let s = match &c.style {
                    Some(s) => s.parse().map_err(err)?,
                    None => style,
                };
                rules.custom.push((c.name.clone(), c.regex.clone(), s));
            }
            for c in &set.columns {
                let s = match &c.style {
                    Some(s) => s.parse().map_err(err)?,
                    None => MaskStyle::Full,
                };
                rules
                    .columns
                    .push((ColumnPattern::parse(&c.pattern).map_err(err)?, s));
            }
        }
        let set_names = sets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        MaskingEngine::new(rules, hash_key).map_err(|m| PolicyError {
            set: set_names,
            message: m,
        })
    }
}
