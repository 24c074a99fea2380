//! What is Kubernetes-specific: reading requests as the API server does, and masking
//! Secret values in its answers.

pub mod channels;
pub mod info;
pub mod secrets;
