//! # polypi-core
//!
//! The engine of polypi: two-party private inference (2PC, semi-honest, with a non-colluding
//! dealer) of neural networks whose activations are polynomials.
//!
//! The documents cited in the module docs of this crate and of polypi-train — `design.md` §N,
//! `reference.md`, `sources.md` §N — are `docs/design.md`, `docs/reference.md` and
//! `docs/sources.md` in the repository.
//!
//! Layout (see `docs/design.md` §2):
//! - [`ring`]: Z_2^64 fixed-point arithmetic, [`ring::RingTensor`] (NCHW), the u64 wrapping GEMM,
//!   im2col, local truncation.
//! - [`model`]: the graph IR, the model file (safetensors + `polypi.graph`), validation, compile
//!   passes into a [`model::Plan`], and the reference networks.
//! - [`mpc`]: shares, parties and the secure protocols; [`offline`]: the dealer.
//! - [`net`]: the [`net::Channel`] trait, TCP and in-memory channels, counters.
//! - [`engine`]: the one graph walk over a backend trait, and the runners of each role.
//! - [`cost`]: the cost model.
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cost;
pub mod engine;
pub mod error;
pub mod model;
pub mod mpc;
pub mod net;
pub mod offline;
pub mod ring;

pub use error::{Error, Result};
