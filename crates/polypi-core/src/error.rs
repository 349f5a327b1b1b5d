//! The one error type of polypi-core. Variants are named after what went wrong for the user.

/// Result alias used across polypi-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error polypi-core returns. No function of the crate panics on bad input; it returns one
/// of these with enough context (file, node, layer, peer) to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file could not be read or is malformed (bad header, missing tensor, wrong dtype).
    #[error("model file {path}: {reason}")]
    ModelFile {
        /// The model file's path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The graph is invalid at a node (unknown op, dangling edge, bad attribute).
    #[error("invalid graph at node '{node}': {reason}")]
    Graph {
        /// Name of the offending node or layer.
        node: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor has the wrong shape (input image, weight, or an edge between two nodes).
    #[error("shape mismatch at '{node}': expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Name of the node (or `input`) whose tensor has the wrong shape.
        node: String,
        /// The shape the node needs.
        expected: Vec<usize>,
        /// The shape it was given.
        got: Vec<usize>,
    },
    /// A value cannot be represented in the fixed-point ring (|x| * 2^frac_bits >= 2^63), or a
    /// layer's values left the safe range of the ring.
    #[error("fixed-point range exceeded at {location}: |value| {value} > bound {bound}")]
    RangeExceeded {
        /// Where (tensor, layer or input element).
        location: String,
        /// The offending value (real units).
        value: f64,
        /// The largest representable or safe magnitude (real units).
        bound: f64,
    },
    /// The range guard refused a result (see [`crate::engine::guard`] and
    /// [`crate::model::range`]): a value (`check` says which: the client's input, the revealed
    /// logits, or the plan's failure probability) exceeds its calibrated bound, so the private
    /// result could be (or is) garbage from a fixed-point wrap-around or truncation failure.
    #[error("range guard: {check} = {value:.4e} exceeds the bound {bound:.4e}")]
    RangeGuard {
        /// Which check fired, in words (starts with `input`, `logits` or `plan`).
        check: String,
        /// The measured value (real units, or a probability for `plan`).
        value: f64,
        /// The calibrated bound it exceeds.
        bound: f64,
    },
    /// A model exceeds a size limit ([`crate::model::limits::Limits`]): one tensor has too many
    /// values, a layer or the plan does too much work, or one inference at batch 1 would need
    /// more memory than allowed. Checked when a model is loaded or compiled, before anything is
    /// allocated.
    #[error(
        "model too large at node '{node}': {what} = {} exceeds the limit {limit}",
        if *.value == u64::MAX { "more than 2^64".to_string() } else { .value.to_string() }
    )]
    TooLarge {
        /// Name of the offending node (for the plan-wide memory, the node that needs the most).
        node: String,
        /// What was measured, with its unit (e.g. "output values", "memory at batch 1, bytes").
        what: String,
        /// The measured value (`u64::MAX` when it does not even fit in 64 bits).
        value: u64,
        /// The limit it exceeds, same unit.
        limit: u64,
    },
    /// The peer closed the connection or stopped answering.
    #[error("peer {peer} disconnected after {after_bytes} bytes: {reason}")]
    PeerDisconnected {
        /// The peer's role or address.
        peer: String,
        /// Bytes received from it before the disconnect.
        after_bytes: u64,
        /// The underlying I/O error or timeout.
        reason: String,
    },
    /// The peer speaks another protocol version or is not a polypi peer.
    #[error("protocol version mismatch with {peer}: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// The peer's role or address.
        peer: String,
        /// Our protocol version string.
        ours: String,
        /// What the peer sent instead.
        theirs: String,
    },
    /// The TLS handshake or a TLS record failed: the peer does not speak TLS, its certificate is
    /// not from our CA or not valid for its name or role, or a record did not authenticate.
    #[error("TLS with {peer} failed: {reason}")]
    Tls {
        /// The peer's role or address.
        peer: String,
        /// rustls' reason, with a hint.
        reason: String,
    },
    /// The server refused to open a session (admission control: too many sessions, memory
    /// budget); the reason is the server's.
    #[error("refused by {peer}: {reason}")]
    Refused {
        /// Who refused.
        peer: String,
        /// Why, in the refusing side's words.
        reason: String,
    },
    /// The peer sent a message that does not fit the protocol (wrong length or kind).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bad argument from the caller (inconsistent configuration, unsupported combination).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An operating-system I/O error (file, socket).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Shorthand for [`Error::Graph`].
    pub fn graph(node: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Graph { node: node.into(), reason: reason.into() }
    }
    /// Shorthand for [`Error::ModelFile`].
    pub fn model_file(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::ModelFile { path: path.into(), reason: reason.into() }
    }
}
