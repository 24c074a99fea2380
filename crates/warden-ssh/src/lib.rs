//! Warden's SSH proxy: an SSH server facing users (russh) and an SSH client facing
//! targets, joined channel by channel.
//!
//! - [`proxy`]: logins, channels, decisions and relaying;
//! - [`backend`]: the login to the target with the held credential and the host
//!   key check;
//! - [`sftp`]: watches SFTP streams for the audit log (transfers, changes);
//! - [`commands`]: `scp` commands and typed shell lines;
//! - [`keys`]: host key, public key lines, private keys.

pub mod backend;
pub mod commands;
pub mod keys;
pub mod proxy;
mod register;
pub mod sftp;

pub use register::{SshSettings, register};
