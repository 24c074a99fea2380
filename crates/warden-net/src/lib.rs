//! Plumbing every protocol proxy needs and none of them owns: a boxed byte stream that
//! is plain TCP or TLS, backend TLS built from a connection's settings, and a writer
//! that batches the messages handled between two reads into one write.

mod batched;
mod tls;

pub use batched::Batched;
pub use tls::{BackendTls, BoxedStream, ProxyStream, TlsSetupError};
