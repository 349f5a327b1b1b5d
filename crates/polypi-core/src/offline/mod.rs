//! The offline phase: the dealer (design.md §4). A third party that never sees inputs or weights:
//! it hands each party a 256-bit seed ([`crate::mpc::prg::Seed`]) and, per inference, streams to
//! the client the corrections of the correlated randomness (`c1 = A*B - c0` for linear layers,
//! shares of `r^k` for polynomials), layer by layer, never holding a whole inference's material.
//!
//! The dealer is a backend of the one walk ([`Dealer`]); [`deal_session`] runs it for a session.
//! A dealer-free (OT-based) generator can implement the same stream later.

pub use crate::engine::party::{weight_masks, Dealer};
pub use crate::engine::session::deal_session;
