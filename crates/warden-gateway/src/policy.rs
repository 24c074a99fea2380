//! Policy sets from the config file and the store, and their resolution for a
//! connection: the guard and masker a proxy uses for that connection's sessions.
//!
//! Config-file sets are read-only; API sets live in the store. Names are unique per
//! kind across both. Review sets are guardrail sets attached under `reviews`.

use serde::Serialize;
use std::sync::Arc;
use warden_core::{PolicyRefs, Secret};
use warden_policy::{GuardrailSet, Guardrails, MaskingEngine, MaskingSet, PolicyConfig};
use warden_store::Store;

pub const GUARDRAILS: &str = "guardrails";
pub const MASKING: &str = "masking";

/// Where a set is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    Config,
    Api,
}

/// Checks config-file sets: valid, compilable, names unique per kind.
pub fn validate_config_sets(p: &PolicyConfig) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for g in &p.guardrails {
        if !names.insert(("g", g.name.as_str())) {
            return Err(format!(
                "policies.guardrails: `{}` is defined twice",
                g.name
            ));
        }
        Guardrails::compile(std::slice::from_ref(g), &[])
            .map_err(|e| format!("policies.guardrails: {e}"))?;
    }
    for m in &p.masking {
        if !names.insert(("m", m.name.as_str())) {
            return Err(format!("policies.masking: `{}` is defined twice", m.name));
        }
        m.validate().map_err(|e| format!("policies.masking: {e}"))?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyResolveError {
    #[error("unknown {kind} policy `{name}`")]
    Unknown { kind: &'static str, name: String },
    #[error("stored {kind} policy `{name}` is invalid: {message}")]
    Invalid {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] warden_store::StoreError),
}

/// All sets, with where each comes from.
#[derive(Debug, Default)]
pub struct PolicySets {
    pub guardrails: Vec<(PolicySource, GuardrailSet)>,
    pub masking: Vec<(PolicySource, MaskingSet)>,
}

pub struct PolicyRegistry {
    config: PolicyConfig,
    store: Arc<Store>,
    hash_key: Secret<Vec<u8>>,
}

impl PolicyRegistry {
    pub fn new(config: PolicyConfig, store: Arc<Store>, hash_key: Secret<Vec<u8>>) -> Self {
        Self {
            config,
            store,
            hash_key,
        }
    }

    pub fn is_config_defined(&self, kind: &str, name: &str) -> bool {
        match kind {
            GUARDRAILS => self.config.guardrails.iter().any(|g| g.name == name),
            MASKING => self.config.masking.iter().any(|m| m.name == name),
            _ => false,
        }
    }

    pub async fn all(&self) -> Result<PolicySets, PolicyResolveError> {
        let mut sets = PolicySets {
            guardrails: self
                .config
                .guardrails
                .iter()
                .map(|g| (PolicySource::Config, g.clone()))
                .collect(),
            masking: self
                .config
                .masking
                .iter()
                .map(|m| (PolicySource::Config, m.clone()))
                .collect(),
        };
        for stored in self.store.list_policy_sets().await? {
            let invalid = |message: String, kind| PolicyResolveError::Invalid {
                kind,
                name: stored.name.clone(),
                message,
            };
            match stored.kind.as_str() {
                GUARDRAILS => sets.guardrails.push((
                    PolicySource::Api,
                    serde_json::from_str(&stored.body)
                        .map_err(|e| invalid(e.to_string(), GUARDRAILS))?,
                )),
                MASKING => sets.masking.push((
                    PolicySource::Api,
                    serde_json::from_str(&stored.body)
                        .map_err(|e| invalid(e.to_string(), MASKING))?,
                )),
                _ => {}
            }
        }
        Ok(sets)
    }

    /// Names in `refs` that no set defines, as `kind/name`.
    pub async fn unknown_refs(&self, refs: &PolicyRefs) -> Result<Vec<String>, PolicyResolveError> {
        let sets = self.all().await?;
        let has_g = |n: &String| sets.guardrails.iter().any(|(_, g)| &g.name == n);
        let has_m = |n: &String| sets.masking.iter().any(|(_, m)| &m.name == n);
        let mut unknown: Vec<String> = refs
            .guardrails
            .iter()
            .chain(&refs.reviews)
            .filter(|n| !has_g(n))
            .map(|n| format!("{GUARDRAILS}/{n}"))
            .collect();
        unknown.extend(
            refs.masking
                .iter()
                .filter(|n| !has_m(n))
                .map(|n| format!("{MASKING}/{n}")),
        );
        Ok(unknown)
    }

    /// The guard and masker for a connection's policy references. A name that no
    /// longer resolves is an error: the caller must refuse the session (fail closed).
    pub async fn resolve(
        &self,
        refs: &PolicyRefs,
    ) -> Result<(Guardrails, MaskingEngine), PolicyResolveError> {
        let sets = self.all().await?;
        let find_g = |n: &String| {
            sets.guardrails
                .iter()
                .find(|(_, g)| &g.name == n)
                .map(|(_, g)| g.clone())
                .ok_or_else(|| PolicyResolveError::Unknown {
                    kind: GUARDRAILS,
                    name: n.clone(),
                })
        };
        let guardrails = refs
            .guardrails
            .iter()
            .map(find_g)
            .collect::<Result<Vec<_>, _>>()?;
        let reviews = refs
            .reviews
            .iter()
            .map(find_g)
            .collect::<Result<Vec<_>, _>>()?;
        let masking = refs
            .masking
            .iter()
            .map(|n| {
                sets.masking
                    .iter()
                    .find(|(_, m)| &m.name == n)
                    .map(|(_, m)| m.clone())
                    .ok_or_else(|| PolicyResolveError::Unknown {
                        kind: MASKING,
                        name: n.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let guard = Guardrails::compile(&guardrails, &reviews).map_err(|e| {
            PolicyResolveError::Invalid {
                kind: GUARDRAILS,
                name: e.set.clone(),
                message: e.message,
            }
        })?;
        let masker = MaskingEngine::from_sets(&masking, self.hash_key.expose()).map_err(|e| {
            PolicyResolveError::Invalid {
                kind: MASKING,
                name: e.set.clone(),
                message: e.message,
            }
        })?;
        Ok((guard, masker))
    }
}
