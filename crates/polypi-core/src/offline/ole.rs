//! Batched oblivious linear evaluation over `Z_2^64` by homomorphic encryption, for the
//! dealer-free polynomial preprocessing (docs/two-party.md).
//!
//! The client holds vectors `u_j`, the server vectors `v_kj`; the client learns, per output `k`
//! and element `e`, the integer `Z_k[e] = sum_j v_kj[e] u_j[e] + c_k[e]`, the server keeps
//! `-c_k[e] mod 2^64`, so the two are additive shares of `sum_j v_kj u_j mod 2^64`. Each of
//! `u, v < 2^64`, so `sum_j v u < J 2^128`, and the server's mask `c_k` is uniform on
//! `[0, 2^(128 + ceil(log2 J) + MASK_SIGMA))`: the client's `Z_k` is within statistical distance
//! `2^-MASK_SIGMA` of a value independent of the server's inputs, per element.
//!
//! The integer `Z_k < T` is computed modulo `OLE_PRIMES` plaintext primes `t_i` (`T = prod
//! t_i`) with slot (SIMD) packing: `N` elements per ciphertext, slot values = the negacyclic NTT
//! of the plaintext coefficients modulo `t_i` (`fhe-math`'s NTT), so a plaintext-ciphertext
//! product multiplies slot-wise. The encryption, flooding and modulus switch are [`super::he`]'s
//! with plaintext modulus `t_i`; the client recovers `Z_k mod 2^64` from its residues by
//! Garner's mixed-radix CRT (exact since `Z_k < T`).

use super::he::{self, inv_mod, mul_mod, HeParams, PlainModulus, PublicKey, SecretKey, DEGREE};
use crate::error::{Error, Result};
use fhe_math::ntt::NttOperator;
use fhe_math::zq::primes::generate_prime;
use fhe_math::zq::Modulus;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

/// Plaintext primes of the CRT (`T ≈ 2^179`).
pub const OLE_PRIMES: usize = 3;
/// Bits of each plaintext prime.
pub const OLE_PRIME_BITS: usize = 60;
/// Statistical security of the server's masks, bits per element.
pub const MASK_SIGMA: u32 = 40;

/// The CRT primes and their NTTs.
pub struct Ole {
    primes: Vec<u64>,
    ntt: Vec<NttOperator>,
}

impl std::fmt::Debug for Ole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ole({:?})", self.primes)
    }
}

fn ole_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("oblivious linear evaluation: {e}"))
}

fn chunks(n: usize) -> usize {
    n.div_ceil(DEGREE)
}

impl Ole {
    /// The fixed primes: the largest [`OLE_PRIME_BITS`]-bit primes `1 mod 2N` (distinct from
    /// the ciphertext primes, which have fewer bits). Errors: `InvalidArgument` if none is found.
    pub fn new() -> Result<Ole> {
        let mut primes = Vec::with_capacity(OLE_PRIMES);
        let mut ntt = Vec::with_capacity(OLE_PRIMES);
        let mut upper = 1u64 << OLE_PRIME_BITS;
        for _ in 0..OLE_PRIMES {
            let t = generate_prime(OLE_PRIME_BITS, 2 * DEGREE as u64, upper)
                .ok_or_else(|| ole_err("no plaintext prime"))?;
            let m = Modulus::new(t).map_err(ole_err)?;
            ntt.push(NttOperator::new(&m, DEGREE).ok_or_else(|| ole_err("no NTT"))?);
            primes.push(t);
            upper = t;
        }
        Ok(Ole { primes, ntt })
    }

    /// The plaintext moduli, in order.
    pub fn moduli(&self) -> Vec<PlainModulus> {
        self.primes.iter().map(|&t| PlainModulus::Prime(t)).collect()
    }

    /// `log2 T`.
    pub fn log_t(&self) -> f64 {
        self.primes.iter().map(|&t| (t as f64).log2()).sum()
    }

    /// Bits of the server's mask for outputs that sum `terms` products: `128 + ceil(log2
    /// terms) + MASK_SIGMA`. Errors: `InvalidArgument` when `Z` could reach `T`.
    pub fn mask_bits(&self, terms: usize) -> Result<u32> {
        let bits = 128 + (terms.max(1) as f64).log2().ceil() as u32 + MASK_SIGMA;
        if (bits + 1) as f64 >= self.log_t() {
            return Err(ole_err(format!("{terms} products per output exceed the CRT modulus")));
        }
        Ok(bits)
    }

    /// Slot values (`len <= N`, read mod `t_i`, zero-padded) to plaintext coefficients.
    fn encode(&self, i: usize, v: &[u64]) -> Vec<u64> {
        let t = self.primes[i];
        let mut c = vec![0u64; DEGREE];
        for (x, y) in c.iter_mut().zip(v) {
            *x = y % t;
        }
        self.ntt[i].backward(&mut c);
        c
    }

    /// Plaintext coefficients to slot values (in place).
    fn decode(&self, i: usize, c: &mut [u64]) {
        self.ntt[i].forward(c);
    }

    /// Bytes of the client's upload of `vectors` vectors of `n` elements.
    pub fn upload_bytes(&self, he: &HeParams, vectors: usize, n: usize) -> usize {
        OLE_PRIMES * vectors * chunks(n) * he.fresh_ct_bytes()
    }

    /// Bytes of the server's response of `outputs` outputs of `n` elements.
    pub fn response_bytes(&self, he: &HeParams, outputs: usize, n: usize) -> usize {
        OLE_PRIMES * outputs * chunks(n) * he.response_bytes(DEGREE)
    }

    /// The client's upload: every vector encrypted slot-wise under every prime (order: prime,
    /// vector, chunk of `N` elements). All vectors have the same length `n`.
    /// Errors: `InvalidArgument` for vectors of different lengths.
    pub fn client_upload(
        &self,
        he: &HeParams,
        sk: &SecretKey,
        vectors: &[Vec<u64>],
        rng: &mut ChaCha20Rng,
    ) -> Result<Vec<u8>> {
        let n = vectors.first().map_or(0, |v| v.len());
        if vectors.iter().any(|v| v.len() != n) {
            return Err(ole_err("vectors of different lengths"));
        }
        let nc = chunks(n);
        let jobs: Vec<(usize, usize, usize)> = (0..OLE_PRIMES)
            .flat_map(|i| (0..vectors.len()).flat_map(move |j| (0..nc).map(move |c| (i, j, c))))
            .collect();
        let seeds = he::task_seeds(rng, jobs.len());
        let cts: Vec<Vec<u8>> = jobs
            .par_iter()
            .zip(&seeds)
            .map(|(&(i, j, c), s)| {
                let hi = ((c + 1) * DEGREE).min(n);
                let m = self.encode(i, &vectors[j][c * DEGREE..hi]);
                sk.encrypt(
                    he,
                    PlainModulus::Prime(self.primes[i]),
                    &m,
                    &mut ChaCha20Rng::from_seed(*s),
                )
            })
            .collect::<Result<_>>()?;
        Ok(cts.concat())
    }

    /// The server's response to [`Ole::client_upload`] of `vectors` vectors of `n` elements:
    /// for each output `k`, `terms[k]` lists `(j, v)`: the client's vector `j` times the
    /// server's `v` (`n` elements). `pks[i]` is the client's public key for prime `i`. Returns
    /// the message and the server's shares `-c_k mod 2^64` (one vector per output).
    /// Errors: `Protocol` for an upload of the wrong size; `InvalidArgument` for too many terms.
    #[allow(clippy::too_many_arguments)]
    pub fn server_respond(
        &self,
        he: &HeParams,
        pks: &[PublicKey],
        upload: &[u8],
        vectors: usize,
        n: usize,
        terms: &[Vec<(usize, Vec<u64>)>],
        rng: &mut ChaCha20Rng,
    ) -> Result<(Vec<u8>, Vec<Vec<u64>>)> {
        if upload.len() != self.upload_bytes(he, vectors, n) || pks.len() != OLE_PRIMES {
            return Err(Error::Protocol(format!(
                "OLE upload of {} bytes, expected {}",
                upload.len(),
                self.upload_bytes(he, vectors, n)
            )));
        }
        let nc = chunks(n);
        let ct_bytes = he.fresh_ct_bytes();
        let cts: Vec<he::Ciphertext> = upload
            .par_chunks(ct_bytes)
            .map(|m| he::parse_ciphertext(he, m))
            .collect::<Result<_>>()?;
        let ct = |i: usize, j: usize, c: usize| &cts[(i * vectors + j) * nc + c];
        // Masks c_k, uniform on [0, 2^bits), as three limbs per element.
        let mut masks = Vec::with_capacity(terms.len());
        for tk in terms {
            if tk.iter().any(|(j, v)| *j >= vectors || v.len() != n) {
                return Err(ole_err("bad term"));
            }
            let bits = self.mask_bits(tk.len())?;
            let m: Vec<[u64; 3]> = (0..n)
                .map(|_| {
                    let mut l = [rng.next_u64(), rng.next_u64(), rng.next_u64()];
                    l[2] &= (1u64 << (bits - 128)) - 1;
                    l
                })
                .collect();
            masks.push(m);
        }
        let shares: Vec<Vec<u64>> =
            masks.iter().map(|m| m.iter().map(|l| l[0].wrapping_neg()).collect()).collect();
        let jobs: Vec<(usize, usize, usize)> = (0..OLE_PRIMES)
            .flat_map(|i| (0..terms.len()).flat_map(move |k| (0..nc).map(move |c| (i, k, c))))
            .collect();
        let seeds = he::task_seeds(rng, jobs.len());
        let resp: Vec<Vec<u8>> = jobs
            .par_iter()
            .zip(&seeds)
            .map(|(&(i, k, c), s)| {
                let t = self.primes[i];
                let pt = PlainModulus::Prime(t);
                let (lo, hi) = (c * DEGREE, ((c + 1) * DEGREE).min(n));
                let mut acc = he::Accumulator::new(he);
                for (j, v) in &terms[k] {
                    let w = he::plaintext_ntt(he, pt, &self.encode(i, &v[lo..hi]))?;
                    acc.add_product(ct(i, *j, c), &w);
                }
                // +c_k mod t in the slots (Z stays a non-negative integer below T), as
                // plaintext coefficients.
                let l64 = ((1u128 << 64) % t as u128) as u64;
                let l128 = mul_mod(l64, l64, t);
                let c_mod: Vec<u64> = masks[k][lo..hi]
                    .iter()
                    .map(|l| {
                        let x = (l[0] % t) as u128
                            + mul_mod(l[1] % t, l64, t) as u128
                            + mul_mod(l[2] % t, l128, t) as u128;
                        (x % t as u128) as u64
                    })
                    .collect();
                let plain: Vec<i64> = self
                    .encode(i, &c_mod)
                    .iter()
                    .map(|&x| if x > t / 2 { x as i64 - t as i64 } else { x as i64 })
                    .collect();
                let useful: Vec<u32> = (0..DEGREE as u32).collect();
                let flood = he::flood_bits(he, pt, DEGREE * terms[k].len())?;
                acc.finish(he, pt, &pks[i], &useful, &plain, flood, &mut ChaCha20Rng::from_seed(*s))
            })
            .collect::<Result<_>>()?;
        Ok((resp.concat(), shares))
    }

    /// The client's shares `Z_k mod 2^64` of `outputs` outputs of `n` elements from the
    /// server's response. Errors: `Protocol` for a response of the wrong size.
    pub fn client_finish(
        &self,
        he: &HeParams,
        sk: &SecretKey,
        resp: &[u8],
        outputs: usize,
        n: usize,
    ) -> Result<Vec<Vec<u64>>> {
        if resp.len() != self.response_bytes(he, outputs, n) {
            return Err(Error::Protocol(format!(
                "OLE response of {} bytes, expected {}",
                resp.len(),
                self.response_bytes(he, outputs, n)
            )));
        }
        let nc = chunks(n);
        let rb = he.response_bytes(DEGREE);
        let useful: Vec<u32> = (0..DEGREE as u32).collect();
        // residues[i][k][e]
        let residues: Vec<Vec<u64>> = (0..OLE_PRIMES * outputs * nc)
            .into_par_iter()
            .map(|idx| {
                let i = idx / (outputs * nc);
                let mut c = sk.decrypt_response(
                    he,
                    PlainModulus::Prime(self.primes[i]),
                    &resp[idx * rb..(idx + 1) * rb],
                    &useful,
                )?;
                self.decode(i, &mut c);
                Ok(c)
            })
            .collect::<Result<_>>()?;
        let (t0, t1, t2) = (self.primes[0], self.primes[1], self.primes[2]);
        let t0_inv_t1 = inv_mod(t0 % t1, t1);
        let t0_inv_t2 = inv_mod(t0 % t2, t2);
        let t1_inv_t2 = inv_mod(t1 % t2, t2);
        let mut out = vec![vec![0u64; n]; outputs];
        for (k, o) in out.iter_mut().enumerate() {
            for (e, z) in o.iter_mut().enumerate() {
                let (c, s) = (e / DEGREE, e % DEGREE);
                let r = |i: usize| residues[(i * outputs + k) * nc + c][s];
                let (z0, z1, z2) = (r(0), r(1), r(2));
                // Garner: Z = z0 + t0 (y1 + t1 y2), exact since Z < t0 t1 t2.
                let y1 = mul_mod((z1 + t1 - z0 % t1) % t1, t0_inv_t1, t1);
                let d = mul_mod((z2 + t2 - z0 % t2) % t2, t0_inv_t2, t2);
                let y2 = mul_mod((d + t2 - y1 % t2) % t2, t1_inv_t2, t2);
                *z = z0.wrapping_add(t0.wrapping_mul(y1.wrapping_add(t1.wrapping_mul(y2))));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_slotwise_products() {
        let he = HeParams::new().unwrap();
        let ole = Ole::new().unwrap();
        assert!(ole.log_t() > 179.0);
        let mut rng = ChaCha20Rng::from_seed([9u8; 32]);
        let sk = SecretKey::generate(&he, &mut rng).unwrap();
        let pks: Vec<PublicKey> =
            ole.moduli().into_iter().map(|t| sk.public_key(&he, t, &mut rng).unwrap()).collect();
        // Two chunks (n > N), two client vectors, two outputs with one and two terms; extreme
        // values included.
        let n = DEGREE + 5;
        let mut u: Vec<Vec<u64>> =
            (0..2).map(|_| (0..n).map(|_| rng.next_u64()).collect()).collect();
        u[0][0] = u64::MAX;
        let v: Vec<Vec<u64>> = (0..3).map(|_| (0..n).map(|_| rng.next_u64()).collect()).collect();
        let mut v0 = v[0].clone();
        v0[0] = u64::MAX;
        let terms = vec![vec![(0, v0.clone())], vec![(1, v[1].clone()), (0, v[2].clone())]];
        let up = ole.client_upload(&he, &sk, &u, &mut rng).unwrap();
        let (resp, srv) = ole.server_respond(&he, &pks, &up, 2, n, &terms, &mut rng).unwrap();
        let cli = ole.client_finish(&he, &sk, &resp, 2, n).unwrap();
        for e in 0..n {
            let want0 = v0[e].wrapping_mul(u[0][e]);
            let want1 = v[1][e].wrapping_mul(u[1][e]).wrapping_add(v[2][e].wrapping_mul(u[0][e]));
            assert_eq!(cli[0][e].wrapping_add(srv[0][e]), want0, "element {e}");
            assert_eq!(cli[1][e].wrapping_add(srv[1][e]), want1, "element {e}");
        }
        assert!(ole.client_finish(&he, &sk, &resp[1..], 2, n).is_err());
        assert!(ole.server_respond(&he, &pks, &up[1..], 2, n, &terms, &mut rng).is_err());
    }
}
