//! GEMM benchmark (OWNER: ring helper).
fn main() {}
