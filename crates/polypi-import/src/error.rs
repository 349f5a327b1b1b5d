//! The importer's error type.

use std::fmt;

/// One ONNX node the importer cannot express in polypi's graph IR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedNode {
    /// Index of the node in the ONNX graph's node list (0-based, topological order as stored).
    pub position: usize,
    /// The node's name (empty in the file: `"(unnamed)"`).
    pub name: String,
    /// The ONNX op type, with its domain when not the default one (`com.microsoft::Gelu`).
    pub op_type: String,
    /// Why it cannot be imported.
    pub reason: String,
}

impl fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} '{}' ({}): {}", self.position, self.name, self.op_type, self.reason)
    }
}

/// Everything that can go wrong in an import. No variant is produced after a file was written:
/// the importer only builds the model in memory; the caller saves it.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The model file or its external data file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (protobuf decoding failed), or a tensor's data is
    /// malformed (wrong length, unknown data type, external data outside the model's folder).
    #[error("{path} is not a valid ONNX model: {reason}")]
    Parse {
        /// The model file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The graph as a whole cannot be imported (no or several inputs or outputs, an input that
    /// is not float32 `[N, C, H, W]` or `[N, F]`, a batch size other than 1 or dynamic).
    #[error("{path}: {reason}")]
    Graph {
        /// The model file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Nodes polypi cannot run: every one of them is listed (in graph order), not only the
    /// first.
    #[error("{path}: {} node(s) cannot be imported:\n{}", nodes.len(), list(nodes))]
    Unsupported {
        /// The model file.
        path: String,
        /// Every unsupported node, in graph order.
        nodes: Vec<UnsupportedNode>,
    },
    /// The imported graph did not pass polypi's model validation (a size limit, a label count
    /// that does not match the outputs, ...).
    #[error("the imported model is not a valid polypi model: {0}")]
    Model(#[from] polypi_core::Error),
}

fn list(nodes: &[UnsupportedNode]) -> String {
    nodes.iter().map(|n| format!("  {n}")).collect::<Vec<_>>().join("\n")
}
