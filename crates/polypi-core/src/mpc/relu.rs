//! Secure DReLU, ReLU and MaxPool with dealer-generated FSS keys (design.md §4), in the style of
//! the dealer-model protocols of SIGMA (Gupta et al., PETS 2024, §4) / LLAMA (Gupta et al., PETS
//! 2022), on the DCF of [`crate::mpc::fss`].
//!
//! **Comparison ring and its bound.** Shares live in `Z_2^64`, but the sign is computed on the
//! low `l` bits only (`l` = [`RING_BITS`] = 36 in the engine; every function takes it as `bits`,
//! `2..=64`): the shares reduced mod `2^l` sum to `x mod 2^l` locally, so DReLU on `Z_2^l` is
//! exact whenever **`-2^(l-1) <= x < 2^(l-1)`** (ring units; with `f = 16` frac bits and
//! `l = 36`: `|x| < 2^19 = 524288` in real units). Outside that range the result is wrong (the
//! sign of `x mod 2^l`); no party can see it, so the plan's range check must keep ReLU inputs and
//! max-pool differences inside. The selection step stays on the full 64-bit ring: ReLU and
//! MaxPool outputs are exact within the bound.
//!
//! **Correlated randomness (per element).** A mask `r = r0 + r1` (each `r_b` expanded by party `b`
//! from its own seed); a random bit `rd = rd0 ^ rd1` (likewise); DCF keys for
//! `alpha = r mod 2^(l-1)` (root seeds expanded by each party, correction words from the dealer to
//! both); XOR shares `c0 ^ c1 = r_{l-1} ^ rd` (bit `l-1` of `r`); arithmetic shares of `rd` and of
//! `r * rd`. The server expands all its shares; the client receives `c1`, `rd - a0` and
//! `r*rd - p0` from the dealer.
//!
//! **Online, 2 rounds.**
//! 1. Both open `x^ = x + r` (one simultaneous exchange of one ring element each).
//! 2. Sign (Boyle et al., Eurocrypt 2021, §4.1: MSB from a comparison of the lower bits), on
//!    `Z_2^l`: `MSB_l(x) = x^_{l-1} ^ r_{l-1} ^ [x^ mod 2^(l-1) < r mod 2^(l-1)]`, so each party
//!    evaluates its DCF key at `x^ mod 2^(l-1)` and gets an XOR share of `d^ = DReLU(x) ^ rd`
//!    (DReLU = 1 - MSB). Both open `d^` (one bit each, packed 64 per word).
//! 3. Select: with `d = d^ + (1 - 2 d^) rd`, `ReLU(x) = (x^ - r) d` is linear in the shares of `r`,
//!    `rd`, `r*rd` given the public `x^, d^`: no truncation, exact.
//!
//! **What each party learns: nothing.** It sees `x^ = x + r` (uniform, `r` unknown to it), `d^ =
//! DReLU(x) ^ rd` (a uniform bit, `rd` unknown to it) and its own DCF key, which alone is
//! pseudorandom ([`crate::mpc::fss`]); the dealer sees no input. The bound above is a
//! correctness condition only: a value outside it gives a wrong result, not a leak.
//!
//! **Costs per element** (`l = 36`, DCF width 35, [`fss::depth`] 29 levels): online 8 + 1/8
//! bytes each way (16.25 both ways), 2 rounds per layer. Dealer: [`fss::key_bytes`]`(l - 1)` =
//! 480 bytes to each party + 16 bytes + 1 bit more to the client (976.1 bytes per element; it
//! was 2048.1 with a 63-bit comparison without early termination). DCF work: 29 AES calls per
//! element and party online; 116 at the dealer.
//!
//! **DReLU alone** ([`drelu`]): 1 round (step 1), XOR shares `d^_b ^ rd_b`.
//!
//! **MaxPool** ([`maxpool`]): a tree of `max(a, b) = b + ReLU(a - b)` over the valid elements of
//! each window (padding is -inf: left out), one ReLU batch per level, `ceil(log2(k*k))` levels
//! (2 for 2x2, 4 for 3x3): 2 rounds per level. Exact as long as every difference `a - b` is
//! inside the bound above.

use super::fss;
use crate::error::{Error, Result};
use crate::net::{exchange_ring, recv_ring, send_ring, Channel};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

/// Width `l` in bits of the comparison ring `Z_2^l` the engine uses for DReLU / ReLU / MaxPool:
/// exact for inputs (and max-pool differences) in `[-2^35, 2^35)` ring units, i.e. `|x| < 2^19`
/// in real units at 16 frac bits (see the module docs).
pub const RING_BITS: u32 = 36;

fn check_bits(bits: u32) -> Result<()> {
    if !(2..=64).contains(&bits) {
        return Err(Error::InvalidArgument(format!("comparison ring width {bits} not in 2..=64")));
    }
    Ok(())
}

/// `2^(bits-1) - 1`: the low `bits - 1` bits, the DCF's input.
fn low_mask(bits: u32) -> u64 {
    (1u64 << (bits - 1)) - 1
}

fn words(n: usize) -> usize {
    n.div_ceil(64)
}

fn ring(rng: &mut ChaCha20Rng, n: usize) -> Vec<u64> {
    let mut v = vec![0u64; n];
    rng.fill_bytes(bytemuck::cast_slice_mut(&mut v));
    v
}

/// Clears the unused high bits of the last word of a packed bit vector of `n` bits.
fn clear_tail(v: &mut [u64], n: usize) {
    if !n.is_multiple_of(64) {
        if let Some(last) = v.last_mut() {
            *last &= (1u64 << (n % 64)) - 1;
        }
    }
}

fn get_bit(v: &[u64], j: usize) -> u64 {
    (v[j / 64] >> (j % 64)) & 1
}

/// What a party expands from its own seed for one comparison level of `n` elements, in this
/// order from one ChaCha20 stream: `r_b` (n words), root seeds (n x 16 bytes), `rd_b` (packed);
/// the server then also `c0` (packed), `a0` (n), `p0` (n).
struct Drawn {
    r: Vec<u64>,
    roots: Vec<u128>,
    rd: Vec<u64>,
    c: Vec<u64>,
    a: Vec<u64>,
    p: Vec<u64>,
}

fn draw(rng: &mut ChaCha20Rng, party: usize, n: usize) -> Drawn {
    let r = ring(rng, n);
    let mut rb = vec![0u8; 16 * n];
    rng.fill_bytes(&mut rb);
    let roots = fss::roots_from_bytes(&rb);
    let mut rd = ring(rng, words(n));
    clear_tail(&mut rd, n);
    let (c, a, p) = if party == 0 {
        let mut c = ring(rng, words(n));
        clear_tail(&mut c, n);
        (c, ring(rng, n), ring(rng, n))
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    Drawn { r, roots, rd, c, a, p }
}

/// One party's correlated randomness for one batch of `n` secure comparisons (one ReLU layer,
/// or one level of a max-pool tree) on the ring `Z_2^bits`. Memory: about
/// `fss::key_bytes(bits - 1) + 40` bytes per element (520 for `bits = 36`).
#[derive(Clone)]
pub struct ReluMaterial {
    n: usize,
    bits: u32,
    r: Vec<u64>,
    roots: Vec<u128>,
    cws: Vec<u64>,
    rd: Vec<u64>,
    c: Vec<u64>,
    a: Vec<u64>,
    p: Vec<u64>,
}

impl std::fmt::Debug for ReluMaterial {
    /// Never prints the secret shares.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReluMaterial {{ n: {}, bits: {}, .. }}", self.n, self.bits)
    }
}

impl ReluMaterial {
    /// Number of elements this material serves.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when it serves no element.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Words the dealer sends to the server for `n` comparisons on `Z_2^bits`: the DCF correction
/// words (`fss::cw_words(bits - 1)` per comparison; 0 for a width outside `2..=64`).
pub fn server_words(n: usize, bits: u32) -> usize {
    if check_bits(bits).is_err() {
        return 0;
    }
    n * fss::cw_words(bits - 1)
}

/// Words the dealer sends to the client for `n` comparisons on `Z_2^bits`: `c1` (packed), `a1`,
/// `p1`, then the DCF correction words.
pub fn client_words(n: usize, bits: u32) -> usize {
    words(n) + 2 * n + server_words(n, bits)
}

/// Dealer: the material of one level of `n` comparisons on `Z_2^bits`. `rng0` / `rng1` are the
/// server's and the client's stream (the same streams the parties pass to [`receive`]); returns
/// the message for the server and the message for the client (send each with `send_ring`).
/// Sizes: [`server_words`], [`client_words`].
///
/// Errors: `InvalidArgument` for a width outside `2..=64`.
pub fn deal(
    rng0: &mut ChaCha20Rng,
    rng1: &mut ChaCha20Rng,
    n: usize,
    bits: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    check_bits(bits)?;
    let d0 = draw(rng0, 0, n);
    let d1 = draw(rng1, 1, n);
    let r: Vec<u64> = d0.r.iter().zip(&d1.r).map(|(a, b)| a.wrapping_add(*b)).collect();
    let alphas: Vec<u64> = r.iter().map(|v| v & low_mask(bits)).collect();
    let cws = fss::gen(bits - 1, &alphas, &d0.roots, &d1.roots)?;
    let rd: Vec<u64> = d0.rd.iter().zip(&d1.rd).map(|(a, b)| a ^ b).collect();
    let mut msb = vec![0u64; words(n)];
    for (j, v) in r.iter().enumerate() {
        msb[j / 64] |= ((v >> (bits - 1)) & 1) << (j % 64);
    }
    let mut client = Vec::with_capacity(client_words(n, bits));
    client.extend(d0.c.iter().zip(&msb).zip(&rd).map(|((c, m), d)| c ^ m ^ d));
    client.extend(d0.a.iter().enumerate().map(|(j, a)| get_bit(&rd, j).wrapping_sub(*a)));
    client.extend(
        r.iter()
            .zip(&d0.p)
            .enumerate()
            .map(|(j, (rv, p))| rv.wrapping_mul(get_bit(&rd, j)).wrapping_sub(*p)),
    );
    client.extend_from_slice(&cws);
    Ok((cws, client))
}

/// Party `party` (0 = server, 1 = client), offline: expands its share of one level of `n`
/// comparisons on `Z_2^bits` from `rng` (its seed's stream, drawn in the same order as the
/// dealer) and receives the dealer's message from `dealer` ([`server_words`] or
/// [`client_words`] ring elements).
///
/// Errors: `InvalidArgument` for a width outside `2..=64`; `Protocol` if the dealer's message has
/// another length; peer errors.
pub fn receive(
    party: usize,
    rng: &mut ChaCha20Rng,
    n: usize,
    bits: u32,
    dealer: &mut dyn Channel,
) -> Result<ReluMaterial> {
    check_bits(bits)?;
    let d = draw(rng, party, n);
    if party == 0 {
        let cws = recv_ring(dealer, server_words(n, bits))?;
        return Ok(ReluMaterial {
            n,
            bits,
            r: d.r,
            roots: d.roots,
            cws,
            rd: d.rd,
            c: d.c,
            a: d.a,
            p: d.p,
        });
    }
    let mut msg = recv_ring(dealer, client_words(n, bits))?;
    let w = words(n);
    let cws = msg.split_off(w + 2 * n);
    let p = msg.split_off(w + n);
    let a = msg.split_off(w);
    let mut c = msg;
    clear_tail(&mut c, n);
    Ok(ReluMaterial { n, bits, r: d.r, roots: d.roots, cws, rd: d.rd, c, a, p })
}

fn check_len(m: &ReluMaterial, x: &[u64]) -> Result<()> {
    if m.n != x.len() {
        return Err(Error::InvalidArgument(format!(
            "secure comparison: material for {} elements, input has {}",
            m.n,
            x.len()
        )));
    }
    Ok(())
}

/// Round 1 and the local DCF evaluation: returns the opened `x^ = x + r` and this party's XOR
/// share of `d^ = DReLU(x) ^ rd` (packed).
fn open_and_compare(
    party: usize,
    m: &ReluMaterial,
    x: &[u64],
    peer: &mut dyn Channel,
) -> Result<(Vec<u64>, Vec<u64>)> {
    check_len(m, x)?;
    let mine: Vec<u64> = x.iter().zip(&m.r).map(|(a, b)| a.wrapping_add(*b)).collect();
    let theirs = exchange_ring(peer, &mine)?;
    let xh: Vec<u64> = mine.iter().zip(&theirs).map(|(a, b)| a.wrapping_add(*b)).collect();
    let bits = m.bits;
    let lows: Vec<u64> = xh.iter().map(|v| v & low_mask(bits)).collect();
    let mut d = fss::eval(party, bits - 1, &m.roots, &m.cws, &lows)?;
    for (w, c) in d.iter_mut().zip(&m.c) {
        *w ^= c;
    }
    if party == 0 {
        // 1 ^ x^_{l-1}, public: added by the server only.
        for (j, v) in xh.iter().enumerate() {
            d[j / 64] ^= ((!v >> (bits - 1)) & 1) << (j % 64);
        }
    }
    clear_tail(&mut d, m.n);
    Ok((xh, d))
}

/// Online DReLU: XOR shares (packed 64 per word, bit `j % 64` of word `j / 64`) of
/// `DReLU(x_j) = [x_j >= 0]` (signed), from this party's shares `x`; exact for
/// `-2^(l-1) <= x_j < 2^(l-1)` (`l` = the material's ring width). 1 round: one ring element
/// each way per element. Consumes `m` (one-time material).
///
/// Errors: `InvalidArgument` if `m` does not fit `x`; `Protocol` for a peer message of the wrong
/// length; peer errors.
pub fn drelu(
    party: usize,
    m: &ReluMaterial,
    x: &[u64],
    peer: &mut dyn Channel,
) -> Result<Vec<u64>> {
    let (_, mut d) = open_and_compare(party, m, x, peer)?;
    for (w, r) in d.iter_mut().zip(&m.rd) {
        *w ^= r;
    }
    Ok(d)
}

/// Online ReLU: this party's additive shares of `max(x_j, 0)` (signed), exact for
/// `-2^(l-1) <= x_j < 2^(l-1)` (`l` = the material's ring width). 2 rounds; per element
/// 8 + 1/8 bytes each way. `m` must serve `x.len()` elements and is used once.
///
/// Errors: `InvalidArgument` if `m` does not fit `x`; `Protocol` for a peer message of the wrong
/// length; peer errors.
pub fn relu(party: usize, m: &ReluMaterial, x: &[u64], peer: &mut dyn Channel) -> Result<Vec<u64>> {
    let (xh, d) = open_and_compare(party, m, x, peer)?;
    let theirs = exchange_ring(peer, &d)?;
    let mut dh: Vec<u64> = d.iter().zip(&theirs).map(|(a, b)| a ^ b).collect();
    clear_tail(&mut dh, m.n);
    let server = party == 0;
    Ok((0..m.n)
        .map(|j| {
            let t = xh[j].wrapping_mul(m.a[j]).wrapping_sub(m.p[j]);
            if get_bit(&dh, j) == 1 {
                let base = if server { xh[j] } else { 0 };
                base.wrapping_sub(t).wrapping_sub(m.r[j])
            } else {
                t
            }
        })
        .collect())
}

/// The windows of a max-pool over `[n, c, h, w]` (kernel `k`, stride `s`, padding `p`, padding
/// left out): output shape `[n, c, oh, ow]` and, per output, the flat input indices of its valid
/// elements in row-major window order. Errors: `InvalidArgument` for `k == 0`, `s == 0`, or a
/// window larger than the padded input.
pub fn pool_windows(
    shape: &[usize],
    k: usize,
    s: usize,
    p: usize,
) -> Result<(Vec<usize>, Vec<Vec<u32>>)> {
    if shape.len() != 4 || k == 0 || s == 0 || shape[2] + 2 * p < k || shape[3] + 2 * p < k {
        return Err(Error::InvalidArgument(format!(
            "max-pool: kernel {k} stride {s} padding {p} on input {shape:?}"
        )));
    }
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut win = Vec::with_capacity(n * c * oh * ow);
    for nc in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut v = Vec::with_capacity(k * k);
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * s + ky) as isize - p as isize;
                        let ix = (ox * s + kx) as isize - p as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            v.push((nc * h * w + iy as usize * w + ix as usize) as u32);
                        }
                    }
                }
                win.push(v);
            }
        }
    }
    Ok((vec![n, c, oh, ow], win))
}

/// Output shape `[n, c, oh, ow]` and comparisons per tree level ([`pool_levels`]) of a max-pool
/// over `shape = [n, c, h, w]` with window `(kernel, stride, padding)`, without listing the windows
/// (what the dealer and the offline phase need). Errors: as [`pool_windows`].
pub fn pool_sizes(
    shape: &[usize],
    (k, s, p): (usize, usize, usize),
) -> Result<(Vec<usize>, Vec<usize>)> {
    if shape.len() != 4 || k == 0 || s == 0 || shape[2] + 2 * p < k || shape[3] + 2 * p < k {
        return Err(Error::InvalidArgument(format!(
            "max-pool: kernel {k} stride {s} padding {p} on input {shape:?}"
        )));
    }
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let valid = |o: usize, len: usize| {
        (0..k).filter(|&q| (o * s + q) >= p && (o * s + q - p) < len).count()
    };
    // Window sizes as a histogram (few distinct values), so that counting never allocates one
    // entry per window.
    let hist = |o: usize, len: usize| {
        let mut m = std::collections::BTreeMap::<usize, usize>::new();
        for i in 0..o {
            *m.entry(valid(i, len)).or_default() += 1;
        }
        m
    };
    let (hy, hx) = (hist(oh, h), hist(ow, w));
    let sizes =
        hy.iter().flat_map(|(a, ca)| hx.iter().map(move |(b, cb)| (a * b, ca * cb * n * c)));
    Ok((vec![n, c, oh, ow], pool_levels_weighted(sizes.collect())))
}

/// [`pool_levels`] of `count` windows of each `size`, given as `(size, count)` pairs.
fn pool_levels_weighted(mut hist: Vec<(usize, usize)>) -> Vec<usize> {
    let mut levels = Vec::new();
    while hist.iter().any(|&(s, k)| s > 1 && k > 0) {
        levels.push(hist.iter().map(|&(s, k)| (s / 2) * k).sum());
        for (s, _) in hist.iter_mut() {
            *s = s.div_ceil(2);
        }
    }
    levels
}

/// Comparisons per level of the max-pool tree over windows of the given sizes (pairs of each
/// level; an odd element passes to the next level). Empty when every window has <= 1 element.
pub fn pool_levels(sizes: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut cnt: Vec<usize> = sizes.collect();
    let mut levels = Vec::new();
    while cnt.iter().any(|&c| c > 1) {
        levels.push(cnt.iter().map(|c| c / 2).sum());
        for c in cnt.iter_mut() {
            *c = c.div_ceil(2);
        }
    }
    levels
}

/// Online max-pool on this party's shares `x` (`[n, c, h, w]` flattened, `shape` its shape;
/// window `(kernel, stride, padding)`):
/// returns the shares of the output (`[n, c, oh, ow]`, as [`pool_windows`]). `levels` is the
/// material of each tree level (sizes [`pool_levels`]). A window with no valid element gives
/// `i64::MIN` (as the plaintext twin). 2 rounds per level.
///
/// Errors: `InvalidArgument` for a bad geometry or material that does not fit; peer errors.
pub fn maxpool(
    party: usize,
    levels: &[ReluMaterial],
    x: &[u64],
    shape: &[usize],
    (k, s, p): (usize, usize, usize),
    peer: &mut dyn Channel,
) -> Result<(Vec<usize>, Vec<u64>)> {
    if shape.iter().product::<usize>() != x.len() {
        return Err(Error::InvalidArgument(format!(
            "max-pool: input of {} elements for shape {shape:?}",
            x.len()
        )));
    }
    let (out_shape, win) = pool_windows(shape, k, s, p)?;
    // Current candidates per window, flat, with offsets.
    let mut vals: Vec<u64> = Vec::with_capacity(win.iter().map(|v| v.len()).sum());
    let mut cnt: Vec<usize> = Vec::with_capacity(win.len());
    for v in &win {
        vals.extend(v.iter().map(|&i| x[i as usize]));
        cnt.push(v.len());
    }
    drop(win);
    let want = pool_levels(cnt.iter().copied());
    if want.len() != levels.len() || want.iter().zip(levels).any(|(a, m)| *a != m.n) {
        return Err(Error::InvalidArgument("max-pool: material does not fit the windows".into()));
    }
    for m in levels {
        // Differences a - b of every pair, in window order.
        let mut diff = Vec::with_capacity(m.n);
        let mut off = 0;
        for &c in &cnt {
            for q in 0..c / 2 {
                let (a, b) = (vals[off + 2 * q], vals[off + 2 * q + 1]);
                diff.push(a.wrapping_sub(b));
            }
            off += c;
        }
        let rl = relu(party, m, &diff, peer)?;
        let mut next = Vec::with_capacity(vals.len() - m.n);
        let (mut off, mut k2) = (0, 0);
        for c in cnt.iter_mut() {
            for q in 0..*c / 2 {
                next.push(vals[off + 2 * q + 1].wrapping_add(rl[k2]));
                k2 += 1;
            }
            if *c % 2 == 1 {
                next.push(vals[off + *c - 1]);
            }
            off += *c;
            *c = c.div_ceil(2);
        }
        vals = next;
    }
    // Every count is now 0 or 1.
    let mut out = Vec::with_capacity(cnt.len());
    let mut off = 0;
    for &c in &cnt {
        if c == 1 {
            out.push(vals[off]);
            off += 1;
        } else {
            out.push(if party == 0 { i64::MIN as u64 } else { 0 });
        }
    }
    Ok((out_shape, out))
}

/// Dealer helper: deals and sends the material of every level (`sizes`, e.g. `[n]` for a ReLU
/// layer or [`pool_levels`] for a max-pool) on `Z_2^bits` to the server and the client,
/// flushing both.
///
/// Errors: `InvalidArgument` for a width outside `2..=64`; peer errors.
pub fn deal_and_send(
    rng0: &mut ChaCha20Rng,
    rng1: &mut ChaCha20Rng,
    sizes: &[usize],
    bits: u32,
    server: &mut dyn Channel,
    client: &mut dyn Channel,
) -> Result<()> {
    for &n in sizes {
        let (m0, m1) = deal(rng0, rng1, n, bits)?;
        send_ring(server, &m0)?;
        send_ring(client, &m1)?;
    }
    server.flush()?;
    client.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::mem_pair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    fn signed(v: u64) -> i64 {
        v as i64
    }

    /// Runs `f(party, material, shares, channel)` for both parties on secret `xs`, comparisons
    /// on `Z_2^bits`; the dealer sends over in-memory channels. Returns both parties' outputs.
    fn run2<T: Send>(
        sizes: &[usize],
        bits: u32,
        xs: &[u64],
        seed: u64,
        f: impl Fn(usize, Vec<ReluMaterial>, Vec<u64>, &mut dyn Channel) -> T + Sync,
    ) -> (T, T) {
        let mut g = ChaCha20Rng::seed_from_u64(seed);
        let (s0, s1) = (g.next_u64(), g.next_u64());
        let share0: Vec<u64> = (0..xs.len()).map(|_| g.next_u64()).collect();
        let share1: Vec<u64> = xs.iter().zip(&share0).map(|(x, a)| x.wrapping_sub(*a)).collect();
        let (mut ds, mut sd) = mem_pair();
        let (mut dc, mut cd) = mem_pair();
        deal_and_send(
            &mut ChaCha20Rng::seed_from_u64(s0),
            &mut ChaCha20Rng::seed_from_u64(s1),
            sizes,
            bits,
            &mut ds,
            &mut dc,
        )
        .unwrap();
        let mut r0 = ChaCha20Rng::seed_from_u64(s0);
        let mut r1 = ChaCha20Rng::seed_from_u64(s1);
        let m0: Vec<_> =
            sizes.iter().map(|&n| receive(0, &mut r0, n, bits, &mut sd).unwrap()).collect();
        let m1: Vec<_> =
            sizes.iter().map(|&n| receive(1, &mut r1, n, bits, &mut cd).unwrap()).collect();
        let (mut a, mut b) = mem_pair();
        std::thread::scope(|s| {
            let f = &f;
            let h = s.spawn(move || f(0, m0, share0, &mut a));
            let y1 = f(1, m1, share1, &mut b);
            (h.join().unwrap(), y1)
        })
    }

    /// `v` sign-extended from its low `bits` bits: a value inside `[-2^(bits-1), 2^(bits-1))`.
    fn in_range(v: u64, bits: u32) -> u64 {
        (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
    }

    fn interesting() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (-1000i64..1000).prop_map(|v| v as u64),
            (-(1i64 << 40)..(1i64 << 40)).prop_map(|v| v as u64),
            prop_oneof![Just(1i64 << 40), Just(-(1i64 << 40)), Just(i64::MIN), Just(i64::MAX)]
                .prop_map(|v| v as u64),
        ]
    }

    /// `raw` brought inside the range of width `bits`, plus the range's ends.
    fn inputs(raw: &[u64], bits: u32) -> Vec<u64> {
        let half = 1u64 << (bits - 1);
        let ends = [half.wrapping_neg(), half.wrapping_neg() + 1, half - 1, half - 2, 0];
        raw.iter().map(|v| in_range(*v, bits)).chain(ends).collect()
    }

    /// The engine's width, the full ring, or any other.
    fn width() -> impl Strategy<Value = u32> {
        prop_oneof![Just(RING_BITS), Just(64u32), 2u32..=64]
    }

    fn relu_twin(x: u64) -> u64 {
        if signed(x) < 0 {
            0
        } else {
            x
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn relu_matches_twin(
            raw in prop::collection::vec(interesting(), 1..300),
            bits in width(),
            seed in any::<u64>(),
        ) {
            let xs = inputs(&raw, bits);
            let (y0, y1) =
                run2(&[xs.len()], bits, &xs, seed, |p, m, x, ch| relu(p, &m[0], &x, ch).unwrap());
            for (j, x) in xs.iter().enumerate() {
                prop_assert_eq!(y0[j].wrapping_add(y1[j]), relu_twin(*x), "x = {}", signed(*x));
            }
        }

        #[test]
        fn relu_drelu_matches_twin(
            raw in prop::collection::vec(interesting(), 1..200),
            bits in width(),
            seed in any::<u64>(),
        ) {
            let xs = inputs(&raw, bits);
            let (d0, d1) =
                run2(&[xs.len()], bits, &xs, seed, |p, m, x, ch| drelu(p, &m[0], &x, ch).unwrap());
            for (j, x) in xs.iter().enumerate() {
                prop_assert_eq!(get_bit(&d0, j) ^ get_bit(&d1, j), (signed(*x) >= 0) as u64);
            }
        }

        /// The engine's bound: values just inside `[-2^(l-1), 2^(l-1))` (l = RING_BITS) are exact,
        /// whatever the (uniform) shares.
        #[test]
        fn relu_exact_just_inside_the_bound(
            ks in prop::collection::vec((0u64..64, any::<bool>()), 1..64),
            seed in any::<u64>(),
        ) {
            let half = 1u64 << (RING_BITS - 1);
            let xs: Vec<u64> = ks
                .iter()
                .map(|&(k, neg)| if neg { half.wrapping_neg().wrapping_add(k) } else { half - 1 - k })
                .collect();
            let (y0, y1) = run2(&[xs.len()], RING_BITS, &xs, seed, |p, m, x, ch| {
                relu(p, &m[0], &x, ch).unwrap()
            });
            for (j, x) in xs.iter().enumerate() {
                prop_assert_eq!(y0[j].wrapping_add(y1[j]), relu_twin(*x), "x = {}", signed(*x));
            }
        }

        #[test]
        fn relu_maxpool_matches_twin(
            n in 1usize..3, c in 1usize..3, h in 1usize..8, w in 1usize..8,
            cfg in 0usize..3, seed in any::<u64>(), wide in any::<bool>(),
            vals in prop::collection::vec(-(1i64 << 61)..(1i64 << 61), 3 * 2 * 8 * 8),
        ) {
            let (k, s, p) = [(2, 2, 0), (3, 2, 1), (3, 1, 1)][cfg];
            prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
            // Differences stay inside the bound: values in [-2^(l-2), 2^(l-2)).
            let bits = if wide { 64 } else { RING_BITS };
            let shape = [n, c, h, w];
            let xs: Vec<u64> =
                vals[..n * c * h * w].iter().map(|v| in_range(*v as u64, bits - 1)).collect();
            let (_, win) = pool_windows(&shape, k, s, p).unwrap();
            let sizes = pool_levels(win.iter().map(|v| v.len()));
            prop_assert_eq!(&pool_sizes(&shape, (k, s, p)).unwrap().1, &sizes);
            let (y0, y1) = run2(&sizes, bits, &xs, seed, |pa, m, x, ch| {
                maxpool(pa, &m, &x, &shape, (k, s, p), ch).unwrap().1
            });
            for (o, v) in win.iter().enumerate() {
                let want = v.iter().map(|&i| signed(xs[i as usize])).max().unwrap_or(i64::MIN);
                prop_assert_eq!(signed(y0[o].wrapping_add(y1[o])), want);
            }
        }
    }

    #[test]
    fn relu_outside_the_bound_is_the_sign_mod_2l() {
        // Documented behaviour, not a leak: past the bound the sign is that of x mod 2^l.
        let half = 1i64 << (RING_BITS - 1);
        let xs: Vec<u64> = [half, -half - 1, 3 * half].iter().map(|v| *v as u64).collect();
        let (d0, d1) =
            run2(&[3], RING_BITS, &xs, 5, |p, m, x, ch| drelu(p, &m[0], &x, ch).unwrap());
        let got: Vec<u64> = (0..3).map(|j| get_bit(&d0, j) ^ get_bit(&d1, j)).collect();
        assert_eq!(got, vec![0, 1, 0]);
    }

    #[test]
    fn relu_edges_and_costs() {
        let xs: Vec<u64> =
            [0i64, 1, -1, 65536, -65536, 1 << 34, -(1 << 34), (1 << 35) - 1, -(1 << 35)]
                .iter()
                .map(|v| *v as u64)
                .collect();
        let (y0, y1) = run2(&[xs.len()], RING_BITS, &xs, 3, |p, m, x, ch| {
            let y = relu(p, &m[0], &x, ch).unwrap();
            (y, ch.stats())
        });
        for (j, x) in xs.iter().enumerate() {
            assert_eq!(y0.0[j].wrapping_add(y1.0[j]), relu_twin(*x));
        }
        // 2 rounds; 9 ring elements + 1 packed word each way.
        assert_eq!(y0.1.send_phases, 2);
        assert_eq!(y0.1.bytes_sent, 8 * 9 + 8);
        // Dealer: 60 words of DCF key per element (29 levels), to both; + c1, a1, p1.
        assert_eq!(server_words(9, RING_BITS), 9 * 60);
        assert_eq!(client_words(9, RING_BITS), 1 + 18 + 9 * 60);
        assert_eq!(client_words(9, 64), 1 + 18 + 9 * 116);
    }

    #[test]
    fn relu_rejects_bad_messages() {
        let (mut a, mut b) = mem_pair();
        send_ring(&mut a, &[1, 2, 3]).unwrap();
        let mut r = ChaCha20Rng::seed_from_u64(1);
        assert!(matches!(receive(1, &mut r, 2, RING_BITS, &mut b), Err(Error::Protocol(_))));
        for bad in [0, 1, 65] {
            let mut r = ChaCha20Rng::seed_from_u64(1);
            assert!(matches!(receive(0, &mut r, 2, bad, &mut b), Err(Error::InvalidArgument(_))));
            let mut r2 = ChaCha20Rng::seed_from_u64(2);
            let mut r = ChaCha20Rng::seed_from_u64(1);
            assert!(matches!(deal(&mut r, &mut r2, 2, bad), Err(Error::InvalidArgument(_))));
        }
        let m = {
            let (mut ds, mut sd) = mem_pair();
            let (mut dc, _cd) = mem_pair();
            let mut g0 = ChaCha20Rng::seed_from_u64(1);
            let mut g1 = ChaCha20Rng::seed_from_u64(2);
            deal_and_send(&mut g0, &mut g1, &[2], RING_BITS, &mut ds, &mut dc).unwrap();
            receive(0, &mut ChaCha20Rng::seed_from_u64(1), 2, RING_BITS, &mut sd).unwrap()
        };
        assert!(matches!(relu(0, &m, &[1, 2, 3], &mut a), Err(Error::InvalidArgument(_))));
        // The peer answers the opening with one element too few.
        send_ring(&mut b, &[5]).unwrap();
        assert!(matches!(relu(0, &m, &[1, 2], &mut a), Err(Error::Protocol(_))));
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::mpc::fss::bench::sched_s as cpu_s;
    use crate::net::mem_pair;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// `cargo test --release -p polypi-core --lib relu_bench -- --ignored --nocapture`: one ReLU
    /// layer of NET-R18's total size (557,056 elements), wall and CPU time of the online phase
    /// (both parties in this process) and of the dealer.
    #[test]
    #[ignore]
    fn relu_bench() {
        let n = 557_056;
        let mut g = ChaCha20Rng::seed_from_u64(1);
        let xs: Vec<u64> = (0..n).map(|_| (g.next_u64() >> 40).wrapping_sub(1 << 23)).collect();
        let x0: Vec<u64> = (0..n).map(|_| g.next_u64()).collect();
        let x1: Vec<u64> = xs.iter().zip(&x0).map(|(x, a)| x.wrapping_sub(*a)).collect();
        let (mut ds, mut sd) = mem_pair();
        let (mut dc, mut cd) = mem_pair();
        let (c0, w0) = (cpu_s(), std::time::Instant::now());
        deal_and_send(
            &mut ChaCha20Rng::seed_from_u64(7),
            &mut ChaCha20Rng::seed_from_u64(8),
            &[n],
            RING_BITS,
            &mut ds,
            &mut dc,
        )
        .unwrap();
        let deal = (w0.elapsed().as_secs_f64(), cpu_s() - c0);
        let m0 = receive(0, &mut ChaCha20Rng::seed_from_u64(7), n, RING_BITS, &mut sd).unwrap();
        let m1 = receive(1, &mut ChaCha20Rng::seed_from_u64(8), n, RING_BITS, &mut cd).unwrap();
        let (mut a, mut b) = mem_pair();
        let (c0, w0) = (cpu_s(), std::time::Instant::now());
        let (y0, y1) = std::thread::scope(|s| {
            let h = s.spawn(|| relu(0, &m0, &x0, &mut a).unwrap());
            let y1 = relu(1, &m1, &x1, &mut b).unwrap();
            (h.join().unwrap(), y1)
        });
        let online = (w0.elapsed().as_secs_f64(), cpu_s() - c0);
        // Freeing the keys (page unmapping) is a cost of its own: the engine does it after the
        // online phase (`Online::finish`).
        let c1 = cpu_s();
        drop((m0, m1));
        let free_ms = (cpu_s() - c1) * 1e3;
        let ok = xs
            .iter()
            .zip(y0.iter().zip(&y1))
            .all(|(x, (u, v))| u.wrapping_add(*v) == if (*x as i64) < 0 { 0 } else { *x });
        assert!(ok);
        let threads = rayon::current_num_threads();
        println!(
            "ReLU n={n} ({threads} rayon threads): online wall {:.0} ms, CPU {:.0} ms (both \
             parties); freeing both parties' material CPU {free_ms:.0} ms; dealer wall {:.0} ms, CPU \
             {:.0} ms; dealer bytes {:.1} MB",
            online.0 * 1e3,
            online.1 * 1e3,
            deal.0 * 1e3,
            deal.1 * 1e3,
            (ds.stats().bytes_sent + dc.stats().bytes_sent) as f64 / 1e6
        );
    }
}
