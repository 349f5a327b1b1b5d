//! Models: the graph IR ([`graph`]), the model file ([`file`]), compile passes into a [`Plan`]
//! ([`compile`]), the size limits checked at load ([`limits`]), calibrated value ranges and the
//! plan range check ([`range`]), and the reference networks of `reference.md` ([`zoo`]).

pub mod compile;
pub mod file;
pub mod graph;
pub mod limits;
pub mod plan;
pub mod range;
pub mod zoo;

pub use graph::{Graph, ModelCard, Node, Normalize, Op, FORMAT_VERSION};
pub use limits::Limits;
pub use plan::{ConvGeom, ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer, PolyProtocol};
