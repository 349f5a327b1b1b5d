//! The ring Z_2^64 and its fixed-point encoding (design.md §4).
//!
//! All secure arithmetic is wrapping `u64` arithmetic. A real number `x` is encoded as the
//! two's-complement integer `round(x * 2^f)` where `f` is the number of fractional bits
//! ([`FixedPoint`]). Products of two encoded values carry `2f` fractional bits and are brought back
//! to `f` by truncation ([`trunc`]).

pub mod depthwise;
pub mod fixed;
pub mod gemm;
pub mod im2col;
pub mod tensor;
pub mod trunc;
pub mod vector;

pub use depthwise::depthwise_conv;
pub use fixed::FixedPoint;
pub use gemm::{gemm, gemm_kernel_name, PackedB};
pub use im2col::{col2out, im2col};
pub use tensor::RingTensor;
pub use trunc::{trunc_local, trunc_public};
