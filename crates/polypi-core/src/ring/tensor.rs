//! [`RingTensor`]: a dense tensor of ring elements (u64, wrapping), row-major, NCHW for images.

use crate::error::{Error, Result};

/// A dense row-major tensor over Z_2^64. Shapes are NCHW for images and `[N, F]` for features;
/// the first dimension is the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: Vec<u64>,
}

impl RingTensor {
    /// All-zero tensor of `shape`.
    pub fn zeros(shape: &[usize]) -> Self {
        RingTensor { shape: shape.to_vec(), data: vec![0; shape.iter().product()] }
    }
    /// Wraps `data`. Errors: `ShapeMismatch` if `data.len()` is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<u64>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::ShapeMismatch {
                node: "tensor".into(),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        Ok(RingTensor { shape: shape.to_vec(), data })
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Elementwise wrapping sum. Errors: `ShapeMismatch`.
    pub fn add(&self, other: &RingTensor) -> Result<RingTensor> {
        self.check_same(other)?;
        let data = self.data.iter().zip(&other.data).map(|(a, b)| a.wrapping_add(*b)).collect();
        Ok(RingTensor { shape: self.shape.clone(), data })
    }
    /// Elementwise wrapping difference `self - other`. Errors: `ShapeMismatch`.
    pub fn sub(&self, other: &RingTensor) -> Result<RingTensor> {
        self.check_same(other)?;
        let data = self.data.iter().zip(&other.data).map(|(a, b)| a.wrapping_sub(*b)).collect();
        Ok(RingTensor { shape: self.shape.clone(), data })
    }
    fn check_same(&self, other: &RingTensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch {
                node: "tensor".into(),
                expected: self.shape.clone(),
                got: other.shape.clone(),
            });
        }
        Ok(())
    }
}
