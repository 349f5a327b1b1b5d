//! The engine: the one graph walk ([`walk`]) and its backends — plaintext ([`plain`]), the secure
//! parties ([`party`]) — the session protocol between server, client and dealer ([`session`]),
//! and reports ([`report`]).

pub mod party;
pub mod plain;
pub mod report;
pub mod session;
pub mod walk;

pub use plain::{run_f32, run_fixed, EncodedPlan, Tensor};
pub use walk::{walk, Backend, LayerTrace};

/// TCP links on loopback for [`session::run_local`]: three listeners on 127.0.0.1 ephemeral ports.
pub(crate) fn tcp_links() -> crate::Result<session::Links> {
    Err(crate::Error::InvalidArgument("TCP transport not wired yet".into()))
}
