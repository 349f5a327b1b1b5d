//! The offline phase (design.md §4): the per-layer correlated randomness the online protocols
//! consume, behind one interface, [`Preprocessing`], with two providers:
//!
//! - [`DealerStream`]: the dealer (a third party that never sees inputs or weights) hands each
//!   party a 256-bit seed ([`crate::mpc::prg::Seed`]) and, per inference, streams to the client
//!   the corrections (`c1 = A*B - c0` for linear layers, shares of `r^k` for polynomials, FSS keys
//!   for comparisons), layer by layer. The dealer's own side is the walk backend [`Dealer`],
//!   run for a session by [`deal_session`].
//! - [`two_party`] (feature `two-party`): server and client alone, over their own link
//!   (docs/two-party.md): homomorphic encryption for linear layers ([`he`], [`hom`]).
//!
//! Both produce the same [`Material`] per layer, so the online phase is the same code.

pub use crate::engine::party::{weight_masks, Dealer, Material};
pub use crate::engine::session::deal_session;

mod dealer;
pub use dealer::DealerStream;

#[cfg(feature = "two-party")]
pub mod he;
#[cfg(feature = "two-party")]
pub mod hom;
#[cfg(feature = "two-party")]
pub mod ole;
#[cfg(feature = "two-party")]
pub mod two_party;

use crate::engine::walk::LayerTrace;
use crate::error::Result;
use crate::model::Plan;
use crate::net::Channel;

/// A source of one party's per-inference correlated randomness.
pub trait Preprocessing {
    /// Produces this party's [`Material`] for inference number `inference` (from 1) of `batch`
    /// samples of `plan` (the public skeleton suffices), one entry per layer, with one trace per
    /// layer (time and the bytes on `link`). `link` is the channel the material comes over: the
    /// dealer's (dealer mode) or the other party's (two-party mode).
    ///
    /// Errors: peer errors on `link`; `Protocol` for malformed material; `Graph` /
    /// `InvalidArgument` for a layer the provider has no generator for.
    fn prepare(
        &mut self,
        plan: &Plan,
        inference: u64,
        batch: usize,
        link: &mut dyn Channel,
    ) -> Result<(Vec<Option<Material>>, Vec<LayerTrace>)>;
}
