//! polypi-train (to be written).
