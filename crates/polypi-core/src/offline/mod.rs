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

pub use crate::engine::session::deal_session;

mod dealer;
pub use dealer::{weight_masks, Dealer, DealerStream, Offline};

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
use crate::mpc::relu::ReluMaterial;
use crate::net::Channel;

/// Per-layer correlated randomness a party holds between its offline and online phase.
#[derive(Debug, Clone)]
pub enum Material {
    /// Linear layer: the client's input mask `A` (None at the server) and the party's
    /// precomputed output share (server: `c0`; client: `A*F + c1`).
    Linear {
        /// The client's input mask `A` (ring elements, the layer's input layout); `None` at the
        /// server.
        mask: Option<Vec<u64>>,
        /// This party's precomputed share of the masked product (the layer's output layout).
        share: Vec<u64>,
    },
    /// Polynomial (dealer powers): per power group, this party's shares of `r^1..r^m`.
    Poly {
        /// `r_pows[group][k]`: this party's shares of `r^(k+1)` for the group's elements.
        r_pows: Vec<Vec<Vec<u64>>>,
    },
    /// Polynomial (ESPN share powers): per power group, this party's Beaver masks of its share
    /// powers `1..m-1` and its shares of the cross products ([`crate::mpc::espn::cross_pairs`] order).
    SharePowers {
        /// `masks[group][k]`: this party's Beaver masks of its share power `k + 1`.
        masks: Vec<Vec<Vec<u64>>>,
        /// `prods[group][j]`: this party's shares of cross product `j` (`crate::mpc::espn::cross_pairs`).
        prods: Vec<Vec<Vec<u64>>>,
    },
    /// Input: this party's share of a dealer-made sharing of zero (server: `R0`, client: `-R0`),
    /// added to the trivial sharing `(0, x)` of the client's input so that both shares are
    /// uniform (SecureML local truncation is only correct on uniformly random shares).
    Input {
        /// This party's share of zero, one ring element per input element (NCHW).
        zero_share: Vec<u64>,
    },
    /// ReLU (one level) or max-pool (one per tree level): this party's comparison material.
    Compare {
        /// One entry per comparison level (ReLU: one; max-pool: one per tree level).
        levels: Vec<ReluMaterial>,
    },
}

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
