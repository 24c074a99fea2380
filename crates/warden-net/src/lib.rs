//! Plumbing every protocol proxy needs and none of them owns: a boxed byte stream that
//! is plain TCP or TLS, backend TLS built from a connection's settings, and a writer
//! that batches the messages handled between two reads into one write, and a stream
//! with already-read bytes put back in front, the map a listener's sessions share,
//! the direct TCP [`TcpDialer`] and the protocol registry's [`Registration`].

mod batched;
mod dial;
mod killable;
mod limits;
mod protocol;
mod reading;
mod registry;
mod rewind;
mod tls;

pub use batched::{Batched, write_flushed};
pub use dial::TcpDialer;
pub use killable::{KillSwitch, Killable};
pub use limits::{ConnectionGate, ConnectionLimits, DescriptorBudget, Overload, Permit};
pub use protocol::{ProtocolProxy, Registration};
pub use reading::{READ_ROOM, read_more};
pub use registry::SessionRegistry;
pub use rewind::Rewind;
pub use tls::{BackendTls, ClientIdentity, TlsSetupError, handshake_failure, server_tls};
pub use warden_core::{BoxedStream, ByteStream as ProxyStream};
