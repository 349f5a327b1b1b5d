//! Secure computation: the fixed-point rules shared by twin and parties ([`encode`]), the ring
//! operations that run on shares ([`ops`]), ESPN's share-power evaluation ([`espn`]), and the correlated randomness each protocol consumes
//! ([`prg`]).
//!
//! Roles: the server (party 0) holds the model, the client (party 1) holds the input; values are
//! additively shared, `x = x0 + x1 mod 2^64`. The dealer (see [`crate::offline`]) never sees
//! inputs or weights.

pub mod encode;
pub mod espn;
pub mod fss;
pub mod ops;
pub mod prg;
pub mod relu;

/// Party 0: the model owner.
pub const SERVER: usize = 0;
/// Party 1: the input owner; the only one that learns the output.
pub const CLIENT: usize = 1;
