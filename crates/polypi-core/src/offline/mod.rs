//! offline (to be written).
