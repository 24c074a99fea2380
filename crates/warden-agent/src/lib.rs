//! Warden's network agent and the gateway side of its tunnel.
//!
//! `warden agent` runs inside a private network and dials *out* to the gateway
//! ([`agent`]); the gateway opens backend connections through it with the
//! [`hub::AgentHub`]'s dialer. The gateway still speaks each protocol end to end
//! through the stream, so decisions, masking and audit stay in the gateway and the
//! agent never sees a user's token. [`wire`] is what the two agree on; [`allow`] is
//! the agent's own list of what it may dial.

pub mod agent;
pub mod allow;
pub mod hub;
pub mod wire;

pub use agent::{AgentError, AgentSettings, GatewayAddress};
pub use allow::{Allowlist, AllowlistError};
pub use hub::{
    AgentHub, AgentPeer, DialContext, DialOutcome, HubEvent, HubEvents, Reservation, ReserveError,
    TunnelStatus,
};
