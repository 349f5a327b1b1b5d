//! Function secret sharing: a distributed comparison function (DCF) over `n`-bit unsigned inputs
//! (`1 <= n <= 63`) with one output bit, `f_alpha(x) = [x < alpha]`, shared by XOR.
//!
//! Construction: the DCF of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function Secret
//! Sharing for Mixed-Mode and Fixed-Point Secure Computation", Eurocrypt 2021, §3.2 (Fig. 1), with
//! output group `Z_2` (so every `(-1)^t` sign of the paper disappears) and payload `beta = 1`,
//! plus **early termination** (Boyle, Gilboa, Ishai, "Function Secret Sharing: Improvements and
//! Extensions", CCS 2016, §3.2.1): the GGM tree has one level per input bit for the top
//! `depth(n) = n - leaf_bits(n)` bits (most significant first, `leaf_bits(n) = min(n, 6)`), and a
//! leaf covers the `2^leaf_bits` inputs that share those top bits with one 64-bit output word
//! (bit `y` of it: the output at low bits `y`). Along the path of `alpha` the two parties' seeds
//! differ and their control bits `t0 ^ t1 = 1`; off the path they are equal, so everything
//! cancels. The value correction `V_CW` of level `i` makes the outputs of the side that leaves the
//! path sum to `[x < alpha]` (1 when `alpha_i = 1` and `x_i = 0`); the leaf correction word
//! `CW_leaf = Convert(s0) ^ Convert(s1) ^ [y < alpha_low]_y ^ (V0 ^ V1)` (a 64-bit vector over `y`)
//! fixes the leaf on the path. `Convert(s)` = the high 64 bits of the 126-bit leaf seed (identity
//! on part of a pseudorandom seed, as BGI16 allow for a group no larger than the seed).
//!
//! PRG: fixed-key AES-128 in Matyas-Meyer-Oseas style, `G_side(s) = AES_K(s | side) ^ (s | side)`
//! (Guo, Katz, Wang, Yu, "Efficient and Secure Multiparty Computation from Fixed-Key Block
//! Ciphers", S&P 2020: a correlation-robust hash of a uniform input), from the `aes` crate (AES-NI
//! where the CPU has it, detected at run time). A 128-bit block splits into a 126-bit seed (bits
//! 2..127), the control bit `t` (bit 0) and the value bit `v` (bit 1); the two sides differ in bit
//! 0 of the AES input. Evaluation follows one path, so it needs **one AES call per level**:
//! `depth(n)` calls per evaluation (29 for the 35-bit DCF of a 36-bit comparison ring, see
//! [`crate::mpc::relu`]). Key generation needs `4 depth(n)` calls per key pair.
//!
//! Evaluation runs chunks of 64 keys level by level (one `encrypt_blocks` call per level keeps
//! the AES-NI pipeline full) on rayon's pool; on CPUs with AVX-512F (detected at run time) the
//! per-level correction of four keys runs in one 512-bit vector, otherwise a portable path does
//! the same (tested bit for bit equal). Measured on the 2-core AMD EPYC dev machine (AES-NI,
//! AVX-512; `fss_bench` below): 35-bit DCF eval 51-68 ns per element and party (AES alone 36 ns),
//! key generation about 510 ns per element.
//!
//! What a key reveals: each party's key is its root seed and the correction words. Every seed
//! correction word is `s0 ^ s1` of the children that leave the path, and the leaf word is masked
//! by `Convert` of the on-path leaf seeds; one party knows only its own seeds, to which the other
//! party's are pseudorandom (they come from the other root through the PRG), so one key alone is
//! pseudorandom and says nothing about `alpha` (BGI16 / BCG+21 security argument, unchanged by
//! early termination); the outputs are XOR shares, each uniform on its own.
//!
//! Keys: each party's key is its root seed (16 bytes, expanded by the party from its own dealer
//! seed, never sent) plus the correction words, which are the **same for both parties**:
//! per level one 128-bit word (seed correction in bits 2..127, `t_L` / `t_R` corrections in bits
//! 0 / 1) and one bit `V_CW`; the `depth` value bits are packed in one u64, and the leaf
//! correction is one u64. Wire size per key: `(2 depth(n) + 2) * 8` bytes (480 bytes for
//! `n = 35`, 960 for `n = 63`), see [`cw_words`].
//! Layout of a batch: blocks of 64 consecutive keys (the last one shorter, `m` keys), level-major
//! inside a block (level `i`, key `j`: words `2 (i m + j)`, `+1`; then the `m` packed value words;
//! then the `m` leaf words), so that batched evaluation reads the correction words of one level
//! contiguously.

use crate::error::{Error, Result};
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Largest supported input width in bits.
pub const MAX_BITS: u32 = 63;

/// Input bits resolved inside one leaf (early termination): a leaf's output is one u64 word.
const LEAF_BITS: u32 = 6;

/// The public fixed AES key of the PRG (the first 16 bytes of the fractional part of pi).
const FIXED_KEY: [u8; 16] = [
    0x24, 0x3f, 0x6a, 0x88, 0x85, 0xa3, 0x08, 0xd3, 0x13, 0x19, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x44,
];

/// Elements processed together (one `encrypt_blocks` call per level for the whole chunk, so the
/// AES pipeline stays full).
const CHUNK: usize = 64;

/// Elements per parallel task (rayon) of [`gen`] and [`eval`]: a multiple of 64 and of `CHUNK`.
const TASK: usize = 4096;

const SEED_MASK: u128 = !3u128;

fn cipher() -> &'static Aes128 {
    static C: OnceLock<Aes128> = OnceLock::new();
    C.get_or_init(|| Aes128::new(&FIXED_KEY.into()))
}

/// Input bits resolved in the leaf for width `bits`: `min(bits, 6)`.
fn leaf_bits(bits: u32) -> u32 {
    bits.min(LEAF_BITS)
}

/// Tree levels (AES calls per evaluation) of a DCF of width `bits`: `bits - min(bits, 6)`.
pub fn depth(bits: u32) -> u32 {
    bits - leaf_bits(bits)
}

/// u64 words of the correction words of one key of width `bits`: `2 * depth(bits) + 2`.
pub fn cw_words(bits: u32) -> usize {
    2 * depth(bits) as usize + 2
}

/// Key bytes per element that travel from the dealer to each party: `8 * cw_words(bits)`.
pub fn key_bytes(bits: u32) -> usize {
    8 * cw_words(bits)
}

fn check_bits(bits: u32) -> Result<()> {
    if bits == 0 || bits > MAX_BITS {
        return Err(Error::InvalidArgument(format!("DCF width {bits} not in 1..={MAX_BITS}")));
    }
    Ok(())
}

/// Root seeds from 16-byte chunks of uniform bytes (bits 0 and 1 cleared: they carry `t` and `v`
/// in an expanded block). `bytes.len()` must be a multiple of 16.
pub fn roots_from_bytes(bytes: &[u8]) -> Vec<u128> {
    bytes.chunks_exact(16).map(|c| u128::from_le_bytes(c.try_into().unwrap()) & SEED_MASK).collect()
}

#[inline]
fn to_block(x: u128) -> Block {
    Block::from(x.to_le_bytes())
}

#[inline]
fn from_block(b: &Block) -> u128 {
    u128::from_le_bytes((*b).into())
}

/// `Convert` of a leaf seed: its high 64 bits.
#[inline]
fn convert(s: u128) -> u64 {
    (s >> 64) as u64
}

/// Dealer: the correction words of `alphas.len()` DCF key pairs for `f(x) = [x < alpha]` on
/// `bits`-bit inputs, given the two parties' root seeds (one per element each, as from
/// [`roots_from_bytes`]). Only the low `bits` bits of each alpha count.
///
/// Returns `cw_words(bits) * n` u64s (layout in the module docs), the same for both parties.
/// Cost: `4 * depth(bits)` AES calls per element.
///
/// Errors: `InvalidArgument` for a width outside `1..=63` or slices of different lengths.
pub fn gen(bits: u32, alphas: &[u64], roots0: &[u128], roots1: &[u128]) -> Result<Vec<u64>> {
    check_bits(bits)?;
    let n = alphas.len();
    if roots0.len() != n || roots1.len() != n {
        return Err(Error::InvalidArgument(
            "DCF gen: root seeds and alphas differ in length".into(),
        ));
    }
    let stride = cw_words(bits);
    let mut out = vec![0u64; n * stride];
    out.par_chunks_mut(TASK * stride).enumerate().for_each(|(t, o)| {
        let r = t * TASK..(t * TASK + TASK).min(n);
        gen_seg(bits, &alphas[r.clone()], &roots0[r.clone()], &roots1[r], o)
    });
    Ok(out)
}

fn gen_seg(bits: u32, alphas: &[u64], roots0: &[u128], roots1: &[u128], out: &mut [u64]) {
    let n = alphas.len();
    let stride = cw_words(bits);
    let (levels, lb) = (depth(bits) as usize, leaf_bits(bits));
    let aes = cipher();
    let mut blocks = [Block::default(); 4 * CHUNK];
    let mut ins = [0u128; 4 * CHUNK];
    let (mut s0, mut s1) = ([0u128; CHUNK], [0u128; CHUNK]);
    let (mut t0, mut t1) = ([0u128; CHUNK], [0u128; CHUNK]);
    let (mut va, mut vbits) = ([0u64; CHUNK], [0u64; CHUNK]);
    for start in (0..n).step_by(CHUNK) {
        let m = CHUNK.min(n - start);
        let out = &mut out[start * stride..(start + m) * stride];
        for j in 0..m {
            s0[j] = roots0[start + j] & SEED_MASK;
            s1[j] = roots1[start + j] & SEED_MASK;
            (t0[j], t1[j], va[j], vbits[j]) = (0, 1, 0, 0);
        }
        for i in 0..levels {
            let pos = bits as usize - 1 - i;
            for j in 0..m {
                ins[4 * j] = s0[j];
                ins[4 * j + 1] = s0[j] | 1;
                ins[4 * j + 2] = s1[j];
                ins[4 * j + 3] = s1[j] | 1;
            }
            for (b, x) in blocks.iter_mut().zip(&ins[..4 * m]) {
                *b = to_block(*x);
            }
            aes.encrypt_blocks(&mut blocks[..4 * m]);
            for j in 0..m {
                let g = |k: usize| from_block(&blocks[4 * j + k]) ^ ins[4 * j + k];
                let (l0, r0, l1, r1) = (g(0), g(1), g(2), g(3));
                let a = (alphas[start + j] >> pos) & 1;
                let (keep0, keep1, lose0, lose1) =
                    if a == 0 { (l0, l1, r0, r1) } else { (r0, r1, l0, l1) };
                let s_cw = (lose0 ^ lose1) & SEED_MASK;
                let v = |x: u128| ((x >> 1) & 1) as u64;
                let t = |x: u128| x & 1;
                // Leaving the path to the left (alpha_i = 1, x_i = 0) means x < alpha.
                let v_cw = v(lose0) ^ v(lose1) ^ va[j] ^ a;
                va[j] ^= v(keep0) ^ v(keep1) ^ v_cw;
                let tl_cw = t(l0) ^ t(l1) ^ a as u128 ^ 1;
                let tr_cw = t(r0) ^ t(r1) ^ a as u128;
                let t_keep_cw = if a == 0 { tl_cw } else { tr_cw };
                let w = s_cw | tl_cw | (tr_cw << 1);
                let o = 2 * (i * m + j);
                out[o] = w as u64;
                out[o + 1] = (w >> 64) as u64;
                vbits[j] |= v_cw << i;
                let corr = s_cw | t_keep_cw;
                let k0 = keep0 ^ if t0[j] == 1 { corr } else { 0 };
                let k1 = keep1 ^ if t1[j] == 1 { corr } else { 0 };
                s0[j] = k0 & SEED_MASK;
                s1[j] = k1 & SEED_MASK;
                t0[j] = k0 & 1;
                t1[j] = k1 & 1;
            }
        }
        for j in 0..m {
            // [y < alpha_low] for every y of the leaf on alpha's path (alpha_low < 64).
            let low = alphas[start + j] & ((1u64 << lb) - 1);
            let below = (1u64 << low) - 1;
            let leaf = convert(s0[j]) ^ convert(s1[j]) ^ below ^ va[j].wrapping_neg();
            out[2 * levels * m + j] = vbits[j];
            out[(2 * levels + 1) * m + j] = leaf;
        }
    }
}

/// Party `party` (0 or 1): evaluates its DCF keys (root seeds `roots`, correction words `cws` as
/// produced by [`gen`]) at the points `xs` (low `bits` bits). Returns the output bits packed
/// 64 per u64 (bit `j % 64` of word `j / 64`); XOR with the other party's result gives
/// `[x_j < alpha_j]`. Cost: `depth(bits)` AES calls per element.
///
/// Errors: `InvalidArgument` for a bad width or party, `Protocol` if `cws` does not hold
/// `cw_words(bits) * xs.len()` words or `roots` has another length than `xs`.
pub fn eval(party: usize, bits: u32, roots: &[u128], cws: &[u64], xs: &[u64]) -> Result<Vec<u64>> {
    check_bits(bits)?;
    if party > 1 {
        return Err(Error::InvalidArgument(format!("DCF eval: party {party} is not 0 or 1")));
    }
    let n = xs.len();
    let stride = cw_words(bits);
    if roots.len() != n || cws.len() != n * stride {
        return Err(Error::Protocol(format!(
            "DCF eval: {} root seeds and {} correction words for {} points",
            roots.len(),
            cws.len(),
            n
        )));
    }
    let mut out = vec![0u64; n.div_ceil(64)];
    out.par_chunks_mut(TASK / 64).enumerate().for_each(|(t, o)| {
        let r = t * TASK..(t * TASK + TASK).min(n);
        let c = r.start * stride..r.end * stride;
        eval_seg(party, bits, &roots[r.clone()], &cws[c], &xs[r], o)
    });
    Ok(out)
}

/// [`eval`] on one segment (its first element starts word 0 of `out`): chunks of `CHUNK` keys,
/// each giving one output word; full chunks take the AVX-512 path where the CPU has it.
fn eval_seg(party: usize, bits: u32, roots: &[u128], cws: &[u64], xs: &[u64], out: &mut [u64]) {
    let n = xs.len();
    let stride = cw_words(bits);
    let simd = simd_available();
    for (k, start) in (0..n).step_by(CHUNK).enumerate() {
        let m = CHUNK.min(n - start);
        let (r, c, x) = (
            &roots[start..start + m],
            &cws[start * stride..(start + m) * stride],
            &xs[start..start + m],
        );
        out[k] = match simd {
            #[cfg(target_arch = "x86_64")]
            true if m == CHUNK => {
                // SAFETY: `simd_available` checked AVX-512F at run time; the slices hold a full
                // chunk (`m == CHUNK`).
                unsafe { x86::eval_chunk_avx512(party, bits, r, c, x) }
            }
            _ => eval_chunk(party, bits, r, c, x),
        };
    }
}

/// Whether the AVX-512 evaluation path can run (x86-64 with AVX-512F, detected at run time).
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Portable evaluation of one chunk of `m <= CHUNK` keys (`cws`: the chunk's `m * cw_words(bits)`
/// words); returns the output bits, bit `j` for key `j`.
fn eval_chunk(party: usize, bits: u32, roots: &[u128], cws: &[u64], xs: &[u64]) -> u64 {
    let m = xs.len();
    let (levels, lb) = (depth(bits) as usize, leaf_bits(bits));
    let aes = cipher();
    let mut blocks = [Block::default(); CHUNK];
    let mut ins = [0u128; CHUNK];
    let mut s = [0u128; CHUNK];
    let mut t = [0u128; CHUNK];
    let mut v = [0u64; CHUNK];
    let vc = &cws[2 * levels * m..(2 * levels + 1) * m];
    for j in 0..m {
        s[j] = roots[j] & SEED_MASK;
        t[j] = party as u128;
    }
    for i in 0..levels {
        let pos = bits as usize - 1 - i;
        let lvl = &cws[2 * i * m..2 * (i + 1) * m];
        for j in 0..m {
            ins[j] = s[j] | ((xs[j] >> pos) & 1) as u128;
            blocks[j] = to_block(ins[j]);
        }
        aes.encrypt_blocks(&mut blocks[..m]);
        for j in 0..m {
            let side = ins[j] & 1;
            let mut g = from_block(&blocks[j]) ^ ins[j];
            let w = lvl[2 * j] as u128 | ((lvl[2 * j + 1] as u128) << 64);
            let vb = ((vc[j] >> i) & 1) as u128;
            let corr = (w & SEED_MASK) | ((w >> side) & 1) | (vb << 1);
            g ^= corr & t[j].wrapping_neg();
            t[j] = g & 1;
            v[j] ^= ((g >> 1) & 1) as u64;
            s[j] = g & SEED_MASK;
        }
    }
    let leaf_cw = &cws[(2 * levels + 1) * m..(2 * levels + 2) * m];
    let mut word = 0u64;
    for j in 0..m {
        word |= leaf_bit(s[j], t[j] as u64, v[j], leaf_cw[j], xs[j], lb) << j;
    }
    word
}

/// The output bit at a leaf: `v ^ bit y of (Convert(s) ^ t * CW_leaf)`, `y` = low `lb` bits of x.
#[inline]
fn leaf_bit(s: u128, t: u64, v: u64, leaf_cw: u64, x: u64, lb: u32) -> u64 {
    let leaf = convert(s) ^ (leaf_cw & t.wrapping_neg());
    let y = x & ((1u64 << lb) - 1);
    v ^ ((leaf >> y) & 1)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// [`eval_chunk`] for a full chunk of `CHUNK` keys with AVX-512F: the AES calls stay in the
    /// `aes` crate (one `encrypt_blocks` per level); the per-level correction of four keys at a
    /// time runs in one 512-bit vector (a key's 128-bit block in one 128-bit lane: the low u64
    /// carries `t` in bit 0 and `v` in bit 1, as in the scalar code). Same output as
    /// [`eval_chunk`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `roots` and `xs` hold `CHUNK` entries and `cws`
    /// `CHUNK * cw_words(bits)` words.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn eval_chunk_avx512(
        party: usize,
        bits: u32,
        roots: &[u128],
        cws: &[u64],
        xs: &[u64],
    ) -> u64 {
        const M: usize = CHUNK;
        const G: usize = CHUNK / 4;
        assert!(roots.len() == M && xs.len() == M && cws.len() == M * cw_words(bits));
        let (levels, lb) = (depth(bits) as usize, leaf_bits(bits));
        let aes = cipher();
        let mut blocks = [Block::default(); M];
        let mut ins = [0u128; M];
        let vc = &cws[2 * levels * M..(2 * levels + 1) * M];
        // Per lane pair (lo, hi): bit 0 of lo only; the seed mask !3 on lo.
        let one_lo = _mm512_set_epi64(0, 1, 0, 1, 0, 1, 0, 1);
        let seed_mask = _mm512_set_epi64(-1, !3, -1, !3, -1, !3, -1, !3);
        // Spreads four u64 over the lo lanes of four keys (hi lanes zero).
        let spread = _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0);
        let lo_lanes: __mmask8 = 0x55;
        let init_t = if party == 1 { _mm512_set1_epi64(-1) } else { _mm512_setzero_si512() };
        let mut t = [init_t; G];
        let mut v = [_mm512_setzero_si512(); G];
        for j in 0..M {
            let s = roots[j] & SEED_MASK;
            ins[j] = if levels > 0 { s | ((xs[j] >> (bits - 1)) & 1) as u128 } else { s };
            blocks[j] = to_block(ins[j]);
        }
        for i in 0..levels {
            aes.encrypt_blocks(&mut blocks);
            let ins_p = ins.as_mut_ptr() as *mut __m512i;
            let blk_p = blocks.as_mut_ptr() as *mut __m512i;
            // SAFETY (pointer arithmetic and loads below): level i's correction words are the
            // 2M words at 2iM (inside `cws`, length checked above); `ins`, `blocks` hold M
            // 16-byte entries = G vectors; `vc` and `xs` hold M words = G groups of 4.
            let lvl = unsafe { cws.as_ptr().add(2 * i * M) } as *const __m512i;
            let vshift = _mm512_set1_epi64(i as i64);
            let next = i + 1 < levels;
            let xshift = _mm512_set1_epi64(if next { (bits as usize - 2 - i) as i64 } else { 0 });
            for g in 0..G {
                let (x, b, w, vcs) = unsafe {
                    (
                        _mm512_loadu_si512(ins_p.add(g)),
                        _mm512_loadu_si512(blk_p.add(g)),
                        _mm512_loadu_si512(lvl.add(g)),
                        _mm256_loadu_si256(vc.as_ptr().add(4 * g) as *const __m256i),
                    )
                };
                let mut e = _mm512_xor_si512(b, x);
                // t correction: bit `side` of the low word of the correction word.
                let side = _mm512_and_si512(x, one_lo);
                let tcw = _mm512_and_si512(_mm512_srlv_epi64(w, side), one_lo);
                // v correction: bit i of the packed value word, into bit 1.
                let vcs =
                    _mm512_maskz_permutexvar_epi64(lo_lanes, spread, _mm512_castsi256_si512(vcs));
                let vb = _mm512_slli_epi64::<1>(_mm512_and_si512(
                    _mm512_srlv_epi64(vcs, vshift),
                    one_lo,
                ));
                let corr =
                    _mm512_or_si512(_mm512_or_si512(_mm512_and_si512(w, seed_mask), tcw), vb);
                e = _mm512_xor_si512(e, _mm512_and_si512(corr, t[g]));
                let tb = _mm512_and_si512(e, one_lo);
                t[g] = _mm512_sub_epi64(_mm512_setzero_si512(), _mm512_unpacklo_epi64(tb, tb));
                v[g] = _mm512_xor_si512(v[g], _mm512_and_si512(_mm512_srli_epi64::<1>(e), one_lo));
                let mut nx = _mm512_and_si512(e, seed_mask);
                if next {
                    let xv =
                        unsafe { _mm256_loadu_si256(xs.as_ptr().add(4 * g) as *const __m256i) };
                    let xv = _mm512_maskz_permutexvar_epi64(
                        lo_lanes,
                        spread,
                        _mm512_castsi256_si512(xv),
                    );
                    nx = _mm512_or_si512(
                        nx,
                        _mm512_and_si512(_mm512_srlv_epi64(xv, xshift), one_lo),
                    );
                }
                unsafe {
                    _mm512_storeu_si512(ins_p.add(g), nx);
                    _mm512_storeu_si512(blk_p.add(g), nx);
                }
            }
        }
        let mut ts = [0u64; 2 * M];
        let mut vs = [0u64; 2 * M];
        for g in 0..G {
            // SAFETY: `ts`, `vs` hold 2M = 8G words.
            unsafe {
                _mm512_storeu_si512(ts.as_mut_ptr().add(8 * g) as *mut __m512i, t[g]);
                _mm512_storeu_si512(vs.as_mut_ptr().add(8 * g) as *mut __m512i, v[g]);
            }
        }
        let leaf_cw = &cws[(2 * levels + 1) * M..(2 * levels + 2) * M];
        let mut word = 0u64;
        for j in 0..M {
            word |= leaf_bit(ins[j], ts[2 * j] & 1, vs[2 * j], leaf_cw[j], xs[j], lb) << j;
        }
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn roots(rng: &mut ChaCha20Rng, n: usize) -> Vec<u128> {
        let mut b = vec![0u8; 16 * n];
        rng.fill_bytes(&mut b);
        roots_from_bytes(&b)
    }

    fn bit(v: &[u64], j: usize) -> u64 {
        (v[j / 64] >> (j % 64)) & 1
    }

    fn check(bits: u32, alphas: &[u64], xs: &[u64], seed: u64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (r0, r1) = (roots(&mut rng, alphas.len()), roots(&mut rng, alphas.len()));
        let cw = gen(bits, alphas, &r0, &r1).unwrap();
        assert_eq!(cw.len(), alphas.len() * cw_words(bits));
        let y0 = eval(0, bits, &r0, &cw, xs).unwrap();
        let y1 = eval(1, bits, &r1, &cw, xs).unwrap();
        let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        for j in 0..xs.len() {
            let want = ((xs[j] & mask) < (alphas[j] & mask)) as u64;
            assert_eq!(
                bit(&y0, j) ^ bit(&y1, j),
                want,
                "bits {bits} x {} alpha {}",
                xs[j],
                alphas[j]
            );
        }
    }

    #[test]
    fn fss_dcf_edges() {
        let m = (1u64 << 63) - 1;
        let a = [0, 1, 5, m, m, 0, 1 << 62, 1 << 62, 77, 77, 77];
        let x = [0, 0, 5, m, m - 1, m, (1 << 62) - 1, 1 << 62, 76, 77, 78];
        check(63, &a, &x, 1);
        check(1, &[0, 1, 1, 0], &[0, 0, 1, 1], 2);
        check(8, &[200, 3, 255], &[199, 3, 0], 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn fss_dcf_correct(
            bits in 1u32..=63,
            pairs in prop::collection::vec((any::<u64>(), any::<u64>(), any::<i8>()), 1..150),
            seed in any::<u64>(),
        ) {
            // Mix uniform points with points next to alpha.
            let alphas: Vec<u64> = pairs.iter().map(|p| p.0).collect();
            let xs: Vec<u64> = pairs
                .iter()
                .map(|p| if p.2 % 2 == 0 { p.1 } else { p.0.wrapping_add((p.2 as i64 / 2) as u64) })
                .collect();
            check(bits, &alphas, &xs, seed);
        }
    }

    #[test]
    fn fss_dcf_keys_and_shares_look_uniform() {
        // Same alpha for all keys: one party's output shares and the correction words must still
        // look uniform (a key alone hides alpha and the output).
        let n = 4096;
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (r0, r1) = (roots(&mut rng, n), roots(&mut rng, n));
        let alphas = vec![1u64 << 40; n];
        let xs: Vec<u64> = (0..n as u64).collect(); // all below alpha: output 1 everywhere
        let cw = gen(63, &alphas, &r0, &r1).unwrap();
        let band = 1848..=2248; // 4096/2 +- 6.25 sd
        for p in 0..2 {
            let y = eval(p, 63, if p == 0 { &r0 } else { &r1 }, &cw, &xs).unwrap();
            let ones: u32 = y.iter().map(|w| w.count_ones()).sum();
            assert!(band.contains(&(ones as usize)), "party {p}: {ones} ones");
        }
        // Seed correction words: bit 20 of the level-0 and level-40 words (low halves).
        let layout = |j: usize, lvl: usize| (j / 64) * 64 * cw_words(63) + 2 * (lvl * 64 + j % 64);
        for lvl in [0usize, 40] {
            let ones = (0..n).filter(|j| (cw[layout(*j, lvl)] >> 20) & 1 == 1).count();
            assert!(band.contains(&ones), "level {lvl}: {ones}");
        }
        // Root seeds of the two parties are independent: XOR looks uniform.
        let ones = r0.iter().zip(&r1).filter(|(a, b)| ((*a ^ *b) >> 70) & 1 == 1).count();
        assert!(band.contains(&ones));
    }

    #[test]
    fn fss_dcf_exhaustive_small_widths() {
        // Every point of the domain, for widths below, at and above the leaf size (6 bits), and
        // alphas at the ends and inside a leaf.
        for bits in [1u32, 2, 5, 6, 7, 9] {
            let size = 1u64 << bits;
            for alpha in [0, 1, size / 2, size / 2 + 1, size - 1, 37 % size] {
                let xs: Vec<u64> = (0..size).collect();
                check(bits, &vec![alpha; xs.len()], &xs, alpha + 10 * bits as u64);
            }
        }
    }

    #[test]
    fn fss_dcf_simd_path_equals_portable() {
        // Full chunks take the AVX-512 path where the CPU has it; it must give the portable
        // path's bits exactly, for every width.
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        for bits in 1..=63u32 {
            let n = 2 * CHUNK;
            let (r0, r1) = (roots(&mut rng, n), roots(&mut rng, n));
            let alphas: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
            let xs: Vec<u64> = alphas
                .iter()
                .enumerate()
                .map(|(j, a)| if j % 3 == 0 { rng.next_u64() } else { a ^ (1 << (j % 8)) })
                .collect();
            let cw = gen(bits, &alphas, &r0, &r1).unwrap();
            let stride = cw_words(bits);
            for (p, r) in [(0, &r0), (1, &r1)] {
                let fast = eval(p, bits, r, &cw, &xs).unwrap();
                for (k, want) in fast.iter().enumerate() {
                    let c = k * CHUNK..(k + 1) * CHUNK;
                    let slow = eval_chunk(
                        p,
                        bits,
                        &r[c.clone()],
                        &cw[c.start * stride..c.end * stride],
                        &xs[c],
                    );
                    assert_eq!(*want, slow, "bits {bits} party {p} chunk {k}");
                }
            }
            check(bits, &alphas, &xs, bits as u64);
        }
    }

    #[test]
    fn fss_dcf_key_sizes() {
        assert_eq!(depth(35), 29);
        assert_eq!(cw_words(35), 60);
        assert_eq!(key_bytes(35), 480);
        assert_eq!((depth(6), cw_words(6)), (0, 2));
        assert_eq!((depth(63), cw_words(63)), (57, 116));
    }

    #[test]
    fn fss_dcf_rejects_bad_input() {
        assert!(gen(0, &[1], &[0], &[0]).is_err());
        assert!(gen(64, &[1], &[0], &[0]).is_err());
        assert!(gen(8, &[1], &[0], &[]).is_err());
        assert!(matches!(eval(0, 8, &[0], &[0; 3], &[1]), Err(Error::Protocol(_))));
        assert!(eval(2, 8, &[0], &[0; 6], &[1]).is_err());
    }
}

#[cfg(test)]
pub(crate) mod bench {
    use super::*;

    /// CPU seconds of all threads of this process (`CLOCK_PROCESS_CPUTIME_ID`, ns resolution;
    /// the CPU clock of /proc/self/stat ticks in 10 ms).
    pub(crate) fn sched_s() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return 0.0;
        }
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    /// Minimum over `reps` repetitions of the CPU seconds ([`sched_s`]) of `f` (the machine may
    /// be shared: the minimum is the least disturbed run).
    fn min_cpu(reps: usize, mut f: impl FnMut()) -> f64 {
        (0..reps)
            .map(|_| {
                let c = sched_s();
                f();
                sched_s() - c
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// `RAYON_NUM_THREADS=1 cargo test --release -p polypi-core --lib fss_bench -- --ignored
    /// --nocapture`: CPU ns per element of gen and eval at the width of the ReLU comparison
    /// ([`crate::mpc::relu::RING_BITS`]` - 1`), and of the bare AES calls of one eval.
    #[test]
    #[ignore]
    fn fss_bench() {
        let n: usize =
            std::env::var("FSS_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 18);
        let r0: Vec<u128> = (0..n as u128).map(|i| (i * 0x9e3779b97f4a7c15) << 2).collect();
        let r1: Vec<u128> = (0..n as u128).map(|i| (i * 0x7f4a7c159e3779b9 + 5) << 2).collect();
        let a: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) >> 1).collect();
        let bits = crate::mpc::relu::RING_BITS - 1;
        let mut cw = Vec::new();
        let g = min_cpu(2, || cw = gen(bits, &a, &r0, &r1).unwrap());
        let mut y = Vec::new();
        let e = min_cpu(7, || y = eval(0, bits, &r0, &cw, &a).unwrap());
        let aes = cipher();
        let mut blocks = vec![Block::default(); CHUNK];
        let raw = min_cpu(7, || {
            for _ in 0..(n / CHUNK) * depth(bits) as usize {
                aes.encrypt_blocks(&mut blocks);
            }
        });
        let per = |t: f64| t * 1e9 / n as f64;
        println!(
            "n {n}, {bits} bits, CPU ns/elem (min of runs): gen {:.1}, eval {:.1}, bare AES of an \
             eval {:.1} [{}]",
            per(g),
            per(e),
            per(raw),
            y[0] & 1
        );
    }
}
