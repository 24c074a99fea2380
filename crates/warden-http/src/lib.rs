//! Warden's HTTP and Kubernetes API proxy.
//!
//! `kubectl`, `curl`, browsers and HTTP libraries reach a Kubernetes API server or an
//! internal HTTP service through the gateway. Each request is read the way its target
//! reads it ([`path`], [`kube::info`]), admitted through the session pipeline in
//! `warden-core` (decide → review → audit → record), and sent with the credential the
//! gateway holds ([`upstream`]); the answer is relayed as it arrives, with Secret
//! values ([`kube::secrets`]) or the connection's masking sets ([`mask`]) applied.
//! Exec, attach and port-forward streams are relayed once admitted ([`upgrade`]).
//!
//! Modules: [`proxy`] (listener side, sessions per client connection), [`forward`]
//! (one request), [`relay`] (answers), [`reply`] (Warden's own answers),
//! [`register`] (the `[kubernetes]` and `[http]` listeners in the registry).

pub mod body;
pub mod forward;
pub mod kube;
pub mod mask;
pub mod path;
pub mod proxy;
pub mod register;
pub mod relay;
pub mod reply;
pub mod scrub;
pub mod upgrade;
pub mod upstream;

pub use proxy::{HttpProxy, ProxyLimits};
pub use register::{HttpSettings, KubernetesSettings, register_http, register_kubernetes};
pub use upstream::check_client_identity;
