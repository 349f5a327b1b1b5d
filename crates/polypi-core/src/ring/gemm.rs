//! The u64 wrapping GEMM: `C = A * B` over Z_2^64 (row-major), with runtime ISA dispatch.
//! OWNER: ring helper. Signatures are the contract; bodies to be written.

/// `B` (k x n, row-major) packed into column strips for the kernel; pack once, multiply many times
/// (weights are packed once per session).
#[derive(Debug, Clone)]
pub struct PackedB {
    /// Rows of B (the shared dimension).
    pub k: usize,
    /// Columns of B.
    pub n: usize,
    data: Vec<u64>,
}

impl PackedB {
    /// Packs a row-major `k x n` matrix. Panics never; `b.len()` must be `k*n` (debug-asserted
    /// by callers, which validate shapes first).
    pub fn pack(b: &[u64], k: usize, n: usize) -> Self {
        PackedB { k, n, data: b[..k * n].to_vec() }
    }
}

/// `c[m x n] = a[m x k] * b[k x n]` (row-major, wrapping u64). `c` is overwritten.
pub fn gemm(a: &[u64], b: &[u64], c: &mut [u64], m: usize, k: usize, n: usize) {
    let pb = PackedB::pack(b, k, n);
    gemm_packed(a, &pb, c, m);
}

/// `c[m x n] = a[m x k] * B` with a pre-packed `B`.
pub fn gemm_packed(a: &[u64], b: &PackedB, c: &mut [u64], m: usize) {
    let (k, n) = (b.k, b.n);
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        row.iter_mut().for_each(|v| *v = 0);
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b.data[p * n..(p + 1) * n];
            for (cv, &bv) in row.iter_mut().zip(brow) {
                *cv = cv.wrapping_add(av.wrapping_mul(bv));
            }
        }
    }
}

/// Name of the kernel the dispatcher picks on this CPU: "avx512", "avx2" or "scalar".
pub fn gemm_kernel_name() -> &'static str {
    "scalar"
}
