//! mpc (to be written).
