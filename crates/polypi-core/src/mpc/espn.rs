//! ESPN share-power evaluation of the powers `x^2..x^m` of one power group (Diaa et al., "Fast
//! and Private Inference of Deep Neural Networks by Co-designing Activation Functions", USENIX
//! Security '24, §4; CrypTen-ESPN `crypten/common/functions/power.py: new_espn_poly`).
//!
//! With `x = x0 + x1` (the shares of the server, party 0, and the client, party 1, after the
//! group's pre-truncation to `f_k` fractional bits, see [`crate::mpc::encode`]), the binomial
//! theorem holds in Z_2^64:
//!
//! `x^k = x0^k + x1^k + sum_{i=1}^{k-1} C(k,i) x0^i x1^(k-i)`.
//!
//! Each party raises its own share to the powers `1..m` locally. The cross products
//! `u_i v_j` (`u_i = x0^i` known to the server only, `v_j = x1^j` known to the client only) use
//! a Beaver triple for private inputs from the dealer: the server holds `a_i` and `c0_ij`, the
//! client `b_j` and `c1_ij`, with `c0_ij + c1_ij = a_i b_j`. In ONE simultaneous exchange the
//! server sends `E_i = u_i - a_i` and the client `F_j = v_j - b_j` for `i, j = 1..m-1`; then
//! `u_i v_j = (u_i F_j + c0_ij) + (E_i b_j + c1_ij)`: the server's and the client's share.
//! One mask per vector serves every product it appears in (each `E_i`, `F_j` is sent once, so it
//! stays a one-time pad).
//!
//! Differences from CrypTen-ESPN: CrypTen input-shares `x0^i` and `x1^j` and multiplies them with
//! ordinary Beaver triples (two openings of two elements per product); the private-input triple
//! here sends one element per power and party. CrypTen pre-divides each share by `2^{s_k}`,
//! `s_k = ceil((k-2) f / k)`; the same happens here as the group's local truncation to
//! `f_k = min(f, floor(2f/k))` bits (`f - f_k = s_k`), so `x^k` is at scale `k f_k <= 2f`, and
//! CrypTen's rescaling by `2^{f(k-1) - k s_k}` is the truncation of `x^k` by `k f_k - f` bits.
//!
//! Per element of a group with powers `P` and largest power `m`: `m - 1` ring elements each way,
//! `sum_{k in P} (k - 1)` products, whose client shares `c1` the dealer sends (8 bytes each).
//! Because the server's share of every power contains a fresh uniform `c0`, both shares are
//! uniform, as SecureML's local truncation needs.

use super::encode::binom;

/// The cross products of a group with powers `powers`: `(i, j)` with `i, j >= 1` and `i + j` in
/// `powers`, in the canonical order (by power, then by `i`) shared by parties and dealer.
pub fn cross_pairs(powers: &[usize]) -> Vec<(usize, usize)> {
    powers.iter().flat_map(|&k| (1..k).map(move |i| (i, k - i))).collect()
}

/// `x^1..x^m` of each element of `x` (`out[i-1][e] = x[e]^i`), wrapping in Z_2^64.
pub fn local_powers(x: &[u64], m: usize) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::with_capacity(m);
    out.push(x.to_vec());
    for i in 1..m {
        let next: Vec<u64> = out[i - 1].iter().zip(x).map(|(p, v)| p.wrapping_mul(*v)).collect();
        out.push(next);
    }
    out
}

/// This party's message: `pows[i-1] - masks[i-1]` for `i = 1..m-1`, concatenated
/// (`masks.len() == m - 1` vectors of `n` elements).
pub fn masked_powers(pows: &[Vec<u64>], masks: &[Vec<u64>]) -> Vec<u64> {
    let n = pows.first().map_or(0, |p| p.len());
    let mut out = vec![0u64; n * masks.len()];
    for ((o, p), a) in out.chunks_mut(n.max(1)).zip(pows).zip(masks) {
        for ((o, v), r) in o.iter_mut().zip(p).zip(a) {
            *o = v.wrapping_sub(*r);
        }
    }
    out
}

/// This party's shares of `x^k` for every `k` in `powers` (same order).
///
/// - `party`: 0 (server) or 1 (client).
/// - `pows`: this party's own share powers `x_p^1..x_p^m` ([`local_powers`]).
/// - `masks`: this party's Beaver masks of its powers `1..m-1` (server `a`, client `b`).
/// - `theirs`: the other party's message ([`masked_powers`]), `(m-1) * n` elements.
/// - `prods`: this party's shares of `a_i b_j`, one vector per [`cross_pairs`] entry.
pub fn powers_from_cross(
    party: usize,
    pows: &[Vec<u64>],
    masks: &[Vec<u64>],
    theirs: &[u64],
    prods: &[Vec<u64>],
    powers: &[usize],
) -> Vec<Vec<u64>> {
    let n = pows.first().map_or(0, |p| p.len());
    let other = |i: usize| &theirs[(i - 1) * n..i * n];
    let mut out = Vec::with_capacity(powers.len());
    let mut pair = 0;
    for &k in powers {
        let mut acc = pows[k - 1].clone();
        for i in 1..k {
            let j = k - i;
            let c = binom(k, i);
            let prod = &prods[pair];
            pair += 1;
            // Server: u_i F_j + c0; client: E_i b_j + c1.
            let (left, right) = if party == 0 {
                (&pows[i - 1][..], other(j))
            } else {
                (other(i), &masks[j - 1][..])
            };
            for (((a, l), r), p) in acc.iter_mut().zip(left).zip(right).zip(prod) {
                *a = a.wrapping_add(c.wrapping_mul(l.wrapping_mul(*r).wrapping_add(*p)));
            }
        }
        out.push(acc);
    }
    out
}

/// The dealer's message to the client for one group: `c1_ij = a_i b_j - c0_ij` for every
/// [`cross_pairs`] entry, concatenated. `a`, `b`: the masks (`m - 1` vectors each); `c0`: the
/// server's product shares, `pairs * n` elements in pair order.
pub fn client_products(a: &[Vec<u64>], b: &[Vec<u64>], c0: &[u64], powers: &[usize]) -> Vec<u64> {
    let n = a.first().map_or(0, |v| v.len());
    let mut out = Vec::with_capacity(c0.len());
    for (p, (i, j)) in cross_pairs(powers).into_iter().enumerate() {
        let s = &c0[p * n..(p + 1) * n];
        out.extend(
            a[i - 1]
                .iter()
                .zip(&b[j - 1])
                .zip(s)
                .map(|((x, y), c)| x.wrapping_mul(*y).wrapping_sub(*c)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn pairs_cover_every_cross_term() {
        assert_eq!(cross_pairs(&[2]), vec![(1, 1)]);
        assert_eq!(cross_pairs(&[2, 4]), vec![(1, 1), (1, 3), (2, 2), (3, 1)]);
        assert_eq!(cross_pairs(&[5, 6]).len(), 4 + 5);
    }

    /// Shares of random x, random triples: the reconstructed powers equal x^k exactly in the ring.
    #[test]
    fn share_powers_reconstruct_exactly() {
        let mut r = ChaCha8Rng::seed_from_u64(9);
        let mut v = |n: usize| (0..n).map(|_| r.next_u64()).collect::<Vec<u64>>();
        let n = 33;
        for powers in [vec![2], vec![3], vec![4], vec![2, 3, 4], vec![5, 6], vec![8]] {
            let m = *powers.last().unwrap();
            let (x0, x1) = (v(n), v(n));
            let a: Vec<Vec<u64>> = (1..m).map(|_| v(n)).collect();
            let b: Vec<Vec<u64>> = (1..m).map(|_| v(n)).collect();
            let np = cross_pairs(&powers).len();
            let c0 = v(np * n);
            let c1 = client_products(&a, &b, &c0, &powers);
            let c0v: Vec<Vec<u64>> = c0.chunks(n).map(|c| c.to_vec()).collect();
            let c1v: Vec<Vec<u64>> = c1.chunks(n).map(|c| c.to_vec()).collect();
            let (p0, p1) = (local_powers(&x0, m), local_powers(&x1, m));
            let (m0, m1) = (masked_powers(&p0, &a), masked_powers(&p1, &b));
            let s0 = powers_from_cross(0, &p0, &a, &m1, &c0v, &powers);
            let s1 = powers_from_cross(1, &p1, &b, &m0, &c1v, &powers);
            for (idx, &k) in powers.iter().enumerate() {
                for e in 0..n {
                    let x = x0[e].wrapping_add(x1[e]);
                    let got = s0[idx][e].wrapping_add(s1[idx][e]);
                    assert_eq!(got, x.wrapping_pow(k as u32), "power {k}");
                }
            }
        }
    }
}
