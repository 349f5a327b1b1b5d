//! Models: the graph IR ([`graph`]), the model file ([`mod@file`]), compile passes into a [`Plan`]
//! ([`compile`]), the size limits checked at load ([`limits`]), calibrated value ranges and the
//! plan range check ([`range`]), the architecture descriptions of the reference and seed networks
//! ([`arch`]) and their random-weight model files ([`zoo`]).

pub mod arch;
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
