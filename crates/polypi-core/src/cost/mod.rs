//! cost (to be written).
