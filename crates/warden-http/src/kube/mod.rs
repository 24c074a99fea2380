//! What is Kubernetes-specific: reading requests as the API server does, masking
//! Secret values in its answers, and reading exec/attach streams (WebSocket channels,
//! SPDY data frames) to record them.

pub mod channels;
pub mod info;
pub mod secrets;
pub mod spdy;
