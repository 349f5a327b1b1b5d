//! RLWE encryption with plaintext modulus `t = 2^64` for the dealer-free linear layers
//! (docs/two-party.md). Built on `fhe-math`'s RNS polynomials (NTT, uniform and centered-binomial
//! samplers); the encryption itself is the textbook BGV form with the message in the low bits:
//!
//! - ring `R_Q = Z_Q[X]/(X^N + 1)`, `N = `[`DEGREE`], `Q = q_0 q_1 q_2 q_3` (NTT primes: `q_0
//!   q_1` of [`PRIME_BITS`] bits, kept by the responses; `q_2 q_3` of [`DROP_PRIME_BITS`] bits,
//!   dropped by the modulus switch; `log2 Q ≈ 212`); plaintexts are polynomials over `Z_t`, `t = 2^64` (the
//!   engine's ring), lifted to their centered representatives;
//! - secret key `s` and errors `e` centered binomial with variance [`NOISE_VARIANCE`]
//!   (`|s_i|, |e_i| <= `[`NOISE_BOUND`]);
//! - symmetric encryption (client): `(b, a) = (-a s + t e + m, a)`, `a` uniform, expanded from a
//!   32-byte seed sent instead of `a`;
//! - public key (client, once per session): `(b_pk, a_pk) = (-a_pk s + t e, a_pk)`;
//! - decryption: `m = [b + a s]_Q mod t` (centered lift), correct while `|b + a s| < Q/2`.
//!
//! The server's response to a linear layer (see [`super::hom`]) is a plaintext-ciphertext product,
//! re-randomised with a fresh public-key encryption of zero, masked with the server's share and
//! flooded with `t * E`, `E` uniform on `[-2^(b-1), 2^(b-1))` where `2^(b-1)` is
//! [`FLOOD_SIGMA`] bits above the worst-case noise ([`flood_bits`]); then it is modulus-switched
//! BGV-style (the correction `δ ≡ c mod q`, `δ ≡ 0 mod t`) from `Q` down to `q_0 q_1`, which
//! multiplies the plaintext by `(q_2 q_3)^-1 mod t` (the client multiplies it back).
//!
//! Security: `N = 8192`, `log2 Q ≈ 212 <= 218`, the HE standard's (Albrecht et al. 2018, table of
//! the HomomorphicEncryption.org standard) bound for 128-bit classical security with a secret
//! from the error distribution. See docs/two-party.md.

use crate::error::{Error, Result};
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Context, Poly, Representation};
use fhe_math::zq::primes::generate_prime;
use num_bigint::BigUint;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;

/// Ring dimension `N` (coefficients per polynomial).
pub const DEGREE: usize = 8192;
/// Bits of each RNS prime of `Q` (each prime is `1 mod 2N`).
pub const PRIME_BITS: usize = 52;
/// Bits of the primes `q_2, q_3` the modulus switch drops: larger than [`PRIME_BITS`] so that
/// the flooded noise of a response summing up to [`super::hom::MAX_NOISE_FAN_IN`] products
/// fits `Q` (and, divided by `q_2 q_3`, the response modulus), while the responses keep their
/// `2 x 52` bits.
pub const DROP_PRIME_BITS: usize = 54;
/// Primes of a fresh ciphertext (`Q = q_0 ... q_3`).
pub const LEVELS: usize = 4;
/// Primes kept in the server's response after the modulus switch (`q_0 q_1`).
pub const RESPONSE_LEVELS: usize = 2;
/// Variance of the centered binomial distribution of the secret key and the errors.
pub const NOISE_VARIANCE: usize = 10;
/// Largest absolute value the centered binomial sampler returns (`2 * NOISE_VARIANCE`).
pub const NOISE_BOUND: f64 = 20.0;
/// Statistical security of the noise flooding per decrypted coefficient, bits: the flood is
/// this many bits above the worst-case noise, so each released coefficient is within statistical
/// distance `2^-60` of one that does not depend on the weights (`2^-40` for up to `2^20`
/// coefficients per inference).
pub const FLOOD_SIGMA: u32 = 60;

/// The plaintext modulus `t`: the engine's ring `2^64` (linear layers) or an NTT-friendly prime
/// below `2^62` (slot-wise products of the polynomial preprocessing, [`super::ole`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainModulus {
    /// `t = 2^64`: plaintext coefficients are ring elements.
    Pow64,
    /// A prime `t = 1 mod 2N`, `t < 2^62`.
    Prime(u64),
}

impl PlainModulus {
    fn big(self) -> BigUint {
        match self {
            PlainModulus::Pow64 => BigUint::from(1u8) << 64,
            PlainModulus::Prime(t) => BigUint::from(t),
        }
    }

    /// `t` as f64.
    fn as_f64(self) -> f64 {
        match self {
            PlainModulus::Pow64 => 2f64.powi(64),
            PlainModulus::Prime(t) => t as f64,
        }
    }

    /// Centered representative of a plaintext coefficient.
    fn lift(self, x: u64) -> i64 {
        match self {
            PlainModulus::Pow64 => x as i64,
            PlainModulus::Prime(t) => center(x % t, t) as i64,
        }
    }

    /// `x mod t` in `[0, t)`.
    fn reduce(self, x: i128) -> u64 {
        match self {
            PlainModulus::Pow64 => x as u64,
            PlainModulus::Prime(t) => x.rem_euclid(t as i128) as u64,
        }
    }

    /// `a b mod t`.
    fn mul(self, a: u64, b: u64) -> u64 {
        match self {
            PlainModulus::Pow64 => a.wrapping_mul(b),
            PlainModulus::Prime(t) => mul_mod(a % t, b % t, t),
        }
    }

    /// `q^-1 mod t` for an odd prime `q` coprime to `t`.
    fn inv(self, q: u64) -> u64 {
        match self {
            PlainModulus::Pow64 => inv_mod_2_64(q),
            PlainModulus::Prime(t) => inv_mod(q % t, t),
        }
    }

    /// The centered representative of `-r q^-1 mod t`, given `q^-1 mod t`.
    fn neg_times(self, r: i128, q_inv: u64) -> i128 {
        match self {
            PlainModulus::Pow64 => {
                ((r as i64 as u64).wrapping_neg()).wrapping_mul(q_inv) as i64 as i128
            }
            PlainModulus::Prime(t) => {
                let k = mul_mod((-r).rem_euclid(t as i128) as u64, q_inv, t);
                center(k, t)
            }
        }
    }
}

fn he_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("homomorphic encryption: {e}"))
}

/// The public parameters: the RNS contexts of fresh ciphertexts and of responses.
#[derive(Debug, Clone)]
pub struct HeParams {
    /// Context of `Q = q_0 q_1 q_2 q_3`.
    pub fresh: Arc<Context>,
    /// Context of `q_0 q_1` (responses after the modulus switch).
    pub resp: Arc<Context>,
    /// The primes `q_0..q_3`.
    pub moduli: Vec<u64>,
}

impl HeParams {
    /// The fixed parameters (deterministic primes `1 mod 2N`: the largest [`PRIME_BITS`]-bit
    /// ones for `q_0, q_1`, the largest [`DROP_PRIME_BITS`]-bit ones for `q_2, q_3`).
    /// Errors: `InvalidArgument` if the prime search or the contexts fail.
    pub fn new() -> Result<HeParams> {
        let mut moduli = Vec::with_capacity(LEVELS);
        for (bits, count) in
            [(PRIME_BITS, RESPONSE_LEVELS), (DROP_PRIME_BITS, LEVELS - RESPONSE_LEVELS)]
        {
            let mut upper = 1u64 << bits;
            for _ in 0..count {
                let p = generate_prime(bits, 2 * DEGREE as u64, upper)
                    .ok_or_else(|| he_err("no NTT prime found"))?;
                moduli.push(p);
                upper = p;
            }
        }
        let fresh = Context::new_arc(&moduli, DEGREE).map_err(he_err)?;
        let resp = Context::new_arc(&moduli[..RESPONSE_LEVELS], DEGREE).map_err(he_err)?;
        Ok(HeParams { fresh, resp, moduli })
    }

    /// `log2 Q` of fresh ciphertexts.
    pub fn log_q(&self) -> f64 {
        self.moduli.iter().map(|q| (*q as f64).log2()).sum()
    }

    /// `log2` of the response modulus `q_0 q_1`.
    pub fn log_q_resp(&self) -> f64 {
        self.moduli[..RESPONSE_LEVELS].iter().map(|q| (*q as f64).log2()).sum()
    }

    /// Bits of a residue modulo `q_i` on the wire (`ceil(log2 q_i)`, 52 here).
    fn widths(&self) -> Vec<u32> {
        self.moduli.iter().map(|q| 64 - q.leading_zeros()).collect()
    }

    /// Bytes of one fresh ciphertext on the wire: the 32-byte seed of `a`, then `b` in NTT form
    /// bit-packed (`BitWriter`: each residue mod `q_i` in `ceil(log2 q_i)` bits).
    pub fn fresh_ct_bytes(&self) -> usize {
        let bits: u64 = self.widths().iter().map(|&w| w as u64 * DEGREE as u64).sum();
        32 + bits.div_ceil(8) as usize
    }

    /// Bytes of one response with `useful` decrypted coefficients: `a` in full and `b` only at
    /// the useful coefficients, both modulo `q_0 q_1`, bit-packed like [`Self::fresh_ct_bytes`].
    pub fn response_bytes(&self, useful: usize) -> usize {
        let bits: u64 = self.widths()[..RESPONSE_LEVELS]
            .iter()
            .map(|&w| w as u64 * (DEGREE + useful) as u64)
            .sum();
        bits.div_ceil(8) as usize
    }
}

/// `n` fresh 32-byte seeds drawn from `rng`, one per parallel task (each task expands its own
/// ChaCha20 stream).
pub(crate) fn task_seeds(rng: &mut ChaCha20Rng, n: usize) -> Vec<[u8; 32]> {
    (0..n)
        .map(|_| {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        })
        .collect()
}

/// A CSPRNG for HE sampling: ChaCha20 seeded from the OS.
/// Errors: `Io` if the OS generator fails.
pub fn he_rng() -> Result<ChaCha20Rng> {
    Ok(ChaCha20Rng::from_seed(crate::mpc::prg::Seed::from_os()?.0))
}

/// Centered representative of `x mod q` as `i128`.
fn center(x: u64, q: u64) -> i128 {
    if x > q / 2 {
        x as i128 - q as i128
    } else {
        x as i128
    }
}

/// The client's secret key `s` (NTT form in both contexts) and its public key.
pub struct SecretKey {
    s: Poly,
    s_resp: Poly,
}

impl std::fmt::Debug for SecretKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<secret>)")
    }
}

/// The client's public key: `a_pk` from a public seed and `b_pk = -a_pk s + t e` (NTT form).
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// Seed of `a_pk`.
    pub seed: [u8; 32],
    /// `a_pk` (NTT form).
    pub a: Poly,
    /// `b_pk` (NTT form).
    pub b: Poly,
}

/// `t * e` for a fresh error `e` (power basis, context `ctx`).
fn scaled_error(ctx: &Arc<Context>, t: PlainModulus, rng: &mut ChaCha20Rng) -> Result<Poly> {
    let mut e =
        Poly::small(ctx, Representation::PowerBasis, NOISE_VARIANCE, rng).map_err(he_err)?;
    e *= &t.big();
    Ok(e)
}

impl SecretKey {
    /// A fresh secret key. Errors: `InvalidArgument` on a sampler failure.
    pub fn generate(p: &HeParams, rng: &mut ChaCha20Rng) -> Result<SecretKey> {
        let s_pb = Poly::small(&p.fresh, Representation::PowerBasis, NOISE_VARIANCE, rng)
            .map_err(he_err)?;
        let q0 = p.moduli[0];
        let coeffs: Vec<i64> =
            s_pb.coefficients().row(0).iter().map(|&x| center(x, q0) as i64).collect();
        let mut s_resp =
            Poly::try_convert_from(&coeffs[..], &p.resp, false, Representation::PowerBasis)
                .map_err(he_err)?;
        s_resp.change_representation(Representation::Ntt);
        let mut s = s_pb;
        s.change_representation(Representation::Ntt);
        Ok(SecretKey { s, s_resp })
    }

    /// The public key for this secret key and plaintext modulus `t`, with `a_pk` from a fresh
    /// seed. Errors: `InvalidArgument` on a sampler failure.
    pub fn public_key(
        &self,
        p: &HeParams,
        t: PlainModulus,
        rng: &mut ChaCha20Rng,
    ) -> Result<PublicKey> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let a = Poly::random_from_seed(&p.fresh, Representation::Ntt, seed);
        let mut e = scaled_error(&p.fresh, t, rng)?;
        e.change_representation(Representation::Ntt);
        let b = &e - &(&a * &self.s);
        Ok(PublicKey { seed, a, b })
    }

    /// Encrypts the plaintext `m` (at most `N` ring elements: coefficients `0..m.len()`, the rest
    /// zero) under a fresh seed for `a`. Returns the wire form: seed, then `b` in NTT form (LE
    /// u64, `LEVELS * N` words). Errors: `InvalidArgument` for more than `N` coefficients.
    /// `t` is the plaintext modulus (`m`'s coefficients are read modulo `t`).
    pub fn encrypt(
        &self,
        p: &HeParams,
        t: PlainModulus,
        m: &[u64],
        rng: &mut ChaCha20Rng,
    ) -> Result<Vec<u8>> {
        if m.len() > DEGREE {
            return Err(he_err(format!("{} coefficients > N = {DEGREE}", m.len())));
        }
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let a = Poly::random_from_seed(&p.fresh, Representation::Ntt, seed);
        let centered: Vec<i64> = m.iter().map(|&x| t.lift(x)).collect();
        let mut b =
            Poly::try_convert_from(&centered[..], &p.fresh, false, Representation::PowerBasis)
                .map_err(he_err)?;
        b += &scaled_error(&p.fresh, t, rng)?;
        b.change_representation(Representation::Ntt);
        b -= &(&a * &self.s);
        Ok(fresh_wire(p, &seed, &b))
    }

    /// Decrypts a response ([`Accumulator::finish`] layout) at its `useful` coefficients, in the
    /// order of `useful`; returns plaintexts modulo `t`, with the modulus switch's factor undone.
    /// Errors: `Protocol` for a message of the wrong size.
    pub fn decrypt_response(
        &self,
        p: &HeParams,
        t: PlainModulus,
        msg: &[u8],
        useful: &[u32],
    ) -> Result<Vec<u64>> {
        if msg.len() != p.response_bytes(useful.len()) {
            return Err(Error::Protocol(format!(
                "HE response of {} bytes, expected {}",
                msg.len(),
                p.response_bytes(useful.len())
            )));
        }
        let n = useful.len();
        let widths = p.widths();
        let mut rd = BitReader::new(msg);
        let mut a_words = Vec::with_capacity(RESPONSE_LEVELS * DEGREE);
        let mut b_words = Vec::with_capacity(RESPONSE_LEVELS * n);
        for (len, out) in [(DEGREE, &mut a_words), (n, &mut b_words)] {
            for (&w, &q) in widths.iter().zip(&p.moduli).take(RESPONSE_LEVELS) {
                for _ in 0..len {
                    let x = rd.read(w);
                    if x >= q {
                        return Err(Error::Protocol("HE response coefficient out of range".into()));
                    }
                    out.push(x);
                }
            }
        }
        let mut a = Poly::try_convert_from(a_words, &p.resp, false, Representation::PowerBasis)
            .map_err(he_err)?;
        a.change_representation(Representation::Ntt);
        let mut as_ = &a * &self.s_resp;
        as_.change_representation(Representation::PowerBasis);
        let c = as_.coefficients();
        let (q0, q1) = (p.moduli[0], p.moduli[1]);
        let q0_inv_q1 = inv_mod(q0 % q1, q1);
        let big_q = q0 as u128 * q1 as u128;
        // The plaintext was multiplied by (q2 q3)^-1 mod t by the modulus switch.
        let undo = p.moduli[RESPONSE_LEVELS..].iter().fold(1u64, |acc, q| t.mul(acc, *q));
        let mut out = Vec::with_capacity(n);
        for (k, &pos) in useful.iter().enumerate() {
            let pos = pos as usize;
            let v0 = add_mod(b_words[k], c[[0, pos]], q0);
            let v1 = add_mod(b_words[n + k], c[[1, pos]], q1);
            // CRT: x = v0 + q0 * ((v1 - v0) q0^-1 mod q1), in [0, q0 q1).
            let d = mul_mod(sub_mod(v1, v0 % q1, q1), q0_inv_q1, q1);
            let x = v0 as u128 + q0 as u128 * d as u128;
            let centered = if x > big_q / 2 { x as i128 - big_q as i128 } else { x as i128 };
            out.push(t.mul(t.reduce(centered), undo));
        }
        Ok(out)
    }
}

fn add_mod(a: u64, b: u64, q: u64) -> u64 {
    ((a as u128 + b as u128) % q as u128) as u64
}

fn sub_mod(a: u64, b: u64, q: u64) -> u64 {
    ((a as u128 + q as u128 - b as u128) % q as u128) as u64
}

/// `a b mod q`.
pub(crate) fn mul_mod(a: u64, b: u64, q: u64) -> u64 {
    ((a as u128 * b as u128) % q as u128) as u64
}

/// `a^-1 mod q` for a prime `q` (Fermat).
pub(crate) fn inv_mod(a: u64, q: u64) -> u64 {
    let (mut base, mut e, mut r) = (a % q, q - 2, 1u64);
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, base, q);
        }
        base = mul_mod(base, base, q);
        e >>= 1;
    }
    r
}

/// `q^-1 mod 2^64` for an odd `q` (Newton iteration).
fn inv_mod_2_64(q: u64) -> u64 {
    let mut x = q; // correct to 3 bits for odd q
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(q.wrapping_mul(x)));
    }
    x
}

/// A received fresh ciphertext (server side): `b` and `a` in NTT form.
pub struct Ciphertext {
    b: Poly,
    a: Poly,
}

/// Parses one fresh ciphertext of [`SecretKey::encrypt`]'s wire form (expanding `a` from its
/// seed). Errors: `Protocol` for a message of the wrong size.
pub fn parse_ciphertext(p: &HeParams, msg: &[u8]) -> Result<Ciphertext> {
    if msg.len() != p.fresh_ct_bytes() {
        return Err(Error::Protocol(format!(
            "HE ciphertext of {} bytes, expected {}",
            msg.len(),
            p.fresh_ct_bytes()
        )));
    }
    let seed: [u8; 32] = msg[..32].try_into().unwrap();
    let mut rd = BitReader::new(&msg[32..]);
    let mut words = Vec::with_capacity(LEVELS * DEGREE);
    for (w, &q) in p.widths().into_iter().zip(&p.moduli) {
        for _ in 0..DEGREE {
            let x = rd.read(w);
            if x >= q {
                return Err(Error::Protocol("HE ciphertext coefficient out of range".into()));
            }
            words.push(x);
        }
    }
    let b = Poly::try_convert_from(words, &p.fresh, false, Representation::Ntt).map_err(he_err)?;
    let a = Poly::random_from_seed(&p.fresh, Representation::Ntt, seed);
    Ok(Ciphertext { b, a })
}

/// Wire form of a fresh ciphertext or public key: the seed of `a`, then `b` (NTT form,
/// bit-packed row by row, [`HeParams::fresh_ct_bytes`] bytes).
fn fresh_wire(p: &HeParams, seed: &[u8; 32], b: &Poly) -> Vec<u8> {
    let mut wr = BitWriter::with_capacity(p.fresh_ct_bytes());
    wr.bytes.extend_from_slice(seed);
    for (row, w) in b.coefficients().outer_iter().zip(p.widths()) {
        for &x in row.iter() {
            wr.write(x, w);
        }
    }
    wr.finish()
}

/// Wire form of the public key: seed of `a_pk`, then `b_pk` (NTT form, bit-packed), as a fresh
/// ciphertext.
pub fn public_key_bytes(p: &HeParams, pk: &PublicKey) -> Vec<u8> {
    fresh_wire(p, &pk.seed, &pk.b)
}

/// Little-endian bit packing of residues (each value in a given number of bits, LSB first),
/// the wire form of ciphertexts: 52-bit residues take 6.5 bytes instead of 8.
struct BitWriter {
    bytes: Vec<u8>,
    acc: u128,
    fill: u32,
}

impl BitWriter {
    fn with_capacity(n: usize) -> BitWriter {
        BitWriter { bytes: Vec::with_capacity(n), acc: 0, fill: 0 }
    }

    /// Appends the low `bits` (<= 64) bits of `x` (`x < 2^bits`).
    fn write(&mut self, x: u64, bits: u32) {
        debug_assert!(bits == 64 || x >> bits == 0);
        self.acc |= (x as u128) << self.fill;
        self.fill += bits;
        while self.fill >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.fill -= 8;
        }
    }

    /// The bytes, the last one zero-padded.
    fn finish(mut self) -> Vec<u8> {
        if self.fill > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// Reads what [`BitWriter`] wrote. The caller checks the message length first; reading past
/// the end yields zero bits.
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u128,
    fill: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> BitReader<'a> {
        BitReader { bytes, pos: 0, acc: 0, fill: 0 }
    }

    /// The next `bits` (<= 64) bits as an integer.
    fn read(&mut self, bits: u32) -> u64 {
        while self.fill < bits {
            let b = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            self.acc |= (b as u128) << self.fill;
            self.fill += 8;
        }
        let x = if bits == 64 { self.acc as u64 } else { (self.acc as u64) & ((1u64 << bits) - 1) };
        self.acc >>= bits;
        self.fill -= bits;
        x
    }
}

/// Parses [`public_key_bytes`]. Errors: `Protocol` for a wrong size or out-of-range words.
pub fn parse_public_key(p: &HeParams, msg: &[u8]) -> Result<PublicKey> {
    let ct = parse_ciphertext(p, msg)?;
    Ok(PublicKey { seed: msg[..32].try_into().unwrap(), a: ct.a, b: ct.b })
}

/// Flood width `b` (bits) for a layer whose outputs sum `fan_in` products of a full-range
/// plaintext (`|m| <= t/2`) with a full-range weight (`|w| <= t/2`): `2^(b-1)` is
/// [`FLOOD_SIGMA`] bits above the worst case of the noise that depends on the weights, counted in
/// units of `t`: the carry `fan_in t/4 + 1` of `m w - c0`, the products `fan_in * NOISE_BOUND *
/// t/2` of the encryption errors with the weights, and the re-randomisation `2 N B^2 + B`.
/// Errors: `InvalidArgument` when the flooded value or the modulus-switched one would not fit
/// (`fan_in` too large for these parameters).
pub fn flood_bits(p: &HeParams, t: PlainModulus, fan_in: usize) -> Result<u32> {
    let t = t.as_f64();
    let b = NOISE_BOUND;
    let n = DEGREE as f64;
    let eta0 = fan_in as f64 * (t / 4.0 + b * t / 2.0) + 1.0 + 2.0 * n * b * b + b;
    let bits = eta0.log2().ceil() as u32 + FLOOD_SIGMA + 1;
    // |V| <= t/2 + t (2^(bits-1) + eta0) must stay below Q/2 (one bit of margin).
    let log_v = t.log2() + (2f64.powi(bits as i32 - 1) + eta0 + 1.0).log2();
    let log_drop: f64 = p.moduli[RESPONSE_LEVELS..].iter().map(|q| (*q as f64).log2()).sum();
    // After the switch: |V'| <= |V| / (q2 q3) + t (1 + N B) (two drops of t/2 (1 + N B) each).
    let after = 2f64.powf(log_v - log_drop) + t * (1.0 + n * b);
    if log_v + 2.0 > p.log_q() || after.log2() + 2.0 > p.log_q_resp() {
        return Err(Error::InvalidArgument(format!(
            "a linear layer with fan-in {fan_in} is too large for the two-party HE parameters \
             (needs log2 Q > {:.0}, have {:.0})",
            log_v + 2.0,
            p.log_q()
        )));
    }
    Ok(bits)
}

/// The server's side of one response: accumulates `sum_j ct_j * w_j`, then
/// [`Accumulator::finish`] re-randomises, masks, floods, switches the modulus and serialises.
pub struct Accumulator {
    b: Poly,
    a: Poly,
}

impl Accumulator {
    /// An empty accumulator (NTT form).
    pub fn new(p: &HeParams) -> Accumulator {
        Accumulator {
            b: Poly::zero(&p.fresh, Representation::Ntt),
            a: Poly::zero(&p.fresh, Representation::Ntt),
        }
    }

    /// Adds `ct * w` for the plaintext `w` in NTT form ([`plaintext_ntt`]).
    pub fn add_product(&mut self, ct: &Ciphertext, w: &Poly) {
        self.b += &(&ct.b * w);
        self.a += &(&ct.a * w);
    }

    /// Finishes the response: adds a fresh public-key encryption of zero, adds the plaintext
    /// `plain[k]` (the negated server share, centered) and the flood `t * E_k` at each useful
    /// coefficient `useful[k]`, switches
    /// from `Q` to `q_0 q_1` and returns the wire form, bit-packed ([`HeParams::response_bytes`]
    /// bytes): `a` (all `N` coefficients, prime 0 then prime 1), then `b` at the useful
    /// coefficients (prime 0 for all, then prime 1 for all).
    /// Errors: `InvalidArgument` on a sampler failure.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        mut self,
        p: &HeParams,
        t: PlainModulus,
        pk: &PublicKey,
        useful: &[u32],
        plain: &[i64],
        flood: u32,
        rng: &mut ChaCha20Rng,
    ) -> Result<Vec<u8>> {
        let u = Poly::small(&p.fresh, Representation::Ntt, NOISE_VARIANCE, rng).map_err(he_err)?;
        self.b += &(&pk.b * &u);
        self.a += &(&pk.a * &u);
        self.b.change_representation(Representation::PowerBasis);
        self.a.change_representation(Representation::PowerBasis);
        self.b += &scaled_error(&p.fresh, t, rng)?;
        self.a += &scaled_error(&p.fresh, t, rng)?;
        let l = LEVELS;
        let bc = self.b.coefficients();
        let ac = self.a.coefficients();
        // 2^64 and 2^128 mod q_i (limbs of the flood), t mod q_i.
        let l64: Vec<u64> = p.moduli.iter().map(|&q| ((1u128 << 64) % q as u128) as u64).collect();
        let l128: Vec<u64> = p.moduli.iter().zip(&l64).map(|(&q, &x)| mul_mod(x, x, q)).collect();
        let t_mod: Vec<u64> = match t {
            PlainModulus::Pow64 => l64.clone(),
            PlainModulus::Prime(tp) => p.moduli.iter().map(|&q| tp % q).collect(),
        };
        let switch = Switch::new(p, t);
        // 2^(flood-1) mod q_i: the offset that centers the flood.
        let half: Vec<u64> = p.moduli.iter().map(|&q| pow2_mod(flood - 1, q)).collect();
        let mut out = BitWriter::with_capacity(p.response_bytes(useful.len()));
        // a: every coefficient.
        let mut a_rows = vec![vec![0u64; DEGREE]; RESPONSE_LEVELS];
        let mut res = [0u64; LEVELS];
        for k in 0..DEGREE {
            for i in 0..l {
                res[i] = ac[[i, k]];
            }
            switch.apply(&mut res);
            for (row, r) in a_rows.iter_mut().zip(&res) {
                row[k] = *r;
            }
        }
        // b: the useful coefficients, masked and flooded.
        let mut b_rows = vec![vec![0u64; useful.len()]; RESPONSE_LEVELS];
        for (k, &pos) in useful.iter().enumerate() {
            let pos = pos as usize;
            let e = flood_sample(flood, rng);
            let plain_k = plain[k] as i128;
            for i in 0..l {
                let q = p.moduli[i];
                // t * E mod q, E = e[0] + e[1] 2^64 + e[2] 2^128 - 2^(flood-1).
                let mut em = e[0] % q;
                em = add_mod(em, mul_mod(e[1] % q, l64[i], q), q);
                em = add_mod(em, mul_mod(e[2] % q, l128[i], q), q);
                em = sub_mod(em, half[i], q);
                let te = mul_mod(em, t_mod[i], q);
                let m = plain_k.rem_euclid(q as i128) as u64;
                res[i] = add_mod(add_mod(bc[[i, pos]], te, q), m, q);
            }
            switch.apply(&mut res);
            for (row, r) in b_rows.iter_mut().zip(&res) {
                row[k] = *r;
            }
        }
        let widths = p.widths();
        for rows in [&a_rows, &b_rows] {
            for (row, &w) in rows.iter().zip(&widths) {
                for &x in row {
                    out.write(x, w);
                }
            }
        }
        Ok(out.finish())
    }
}

fn pow2_mod(e: u32, q: u64) -> u64 {
    let mut r = 1u64 % q;
    for _ in 0..e {
        r = add_mod(r, r, q);
    }
    r
}

/// Uniform `E + 2^(bits-1)` on `[0, 2^bits)` as three little-endian limbs (`bits <= 192`).
fn flood_sample(bits: u32, rng: &mut ChaCha20Rng) -> [u64; 3] {
    let mut e = [rng.next_u64(), rng.next_u64(), rng.next_u64()];
    for (i, limb) in e.iter_mut().enumerate() {
        let lo = 64 * i as u32;
        if bits <= lo {
            *limb = 0;
        } else if bits < lo + 64 {
            *limb &= (1u64 << (bits - lo)) - 1;
        }
    }
    e
}

/// BGV modulus switch of one coefficient from `q_0..q_3` to `q_0 q_1`, dropping `q_3` then `q_2`:
/// `c' = (c - δ) / q` with `δ ≡ c mod q`, `δ ≡ 0 mod t`, `|δ| <= q t / 2`.
struct Switch {
    t: PlainModulus,
    moduli: Vec<u64>,
    /// `q_last^-1 mod t` per dropped prime (index = its level).
    inv_t: Vec<u64>,
    /// `inv_q[last][i] = q_last^-1 mod q_i`.
    inv_q: Vec<Vec<u64>>,
}

impl Switch {
    fn new(p: &HeParams, t: PlainModulus) -> Switch {
        let m = p.moduli.clone();
        let inv_t = m.iter().map(|&q| t.inv(q)).collect();
        let inv_q = m
            .iter()
            .map(|&ql| {
                m.iter().map(|&qi| if qi == ql { 0 } else { inv_mod(ql % qi, qi) }).collect()
            })
            .collect();
        Switch { t, moduli: m, inv_t, inv_q }
    }

    fn apply(&self, res: &mut [u64; LEVELS]) {
        for last in (RESPONSE_LEVELS..LEVELS).rev() {
            let q = self.moduli[last];
            let r = center(res[last], q);
            // k = -r q^-1 mod t (centered), so that δ = r + q k ≡ 0 mod t.
            let k = self.t.neg_times(r, self.inv_t[last]);
            let delta = r + q as i128 * k;
            let kept = res[..last].iter_mut().zip(&self.moduli).zip(&self.inv_q[last]);
            for ((ri, &qi), &inv) in kept {
                let d = delta.rem_euclid(qi as i128) as u64;
                *ri = mul_mod(sub_mod(*ri, d, qi), inv, qi);
            }
        }
    }
}

/// A plaintext polynomial from `N` centered coefficients (ring elements read as `i64`), in NTT
/// form for [`Accumulator::add_product`]. Errors: `InvalidArgument` for more than `N`.
pub fn plaintext_ntt(p: &HeParams, t: PlainModulus, coeffs: &[u64]) -> Result<Poly> {
    let c: Vec<i64> = coeffs.iter().map(|&x| t.lift(x)).collect();
    let mut w = Poly::try_convert_from(&c[..], &p.fresh, false, Representation::PowerBasis)
        .map_err(he_err)?;
    w.change_representation(Representation::Ntt);
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverses() {
        let p = HeParams::new().unwrap();
        for &q in &p.moduli {
            assert_eq!(q.wrapping_mul(inv_mod_2_64(q)), 1);
            assert_eq!(q % (2 * DEGREE as u64), 1);
            assert!(q < 1 << DROP_PRIME_BITS);
        }
        assert_eq!(mul_mod(inv_mod(5, p.moduli[0]), 5, p.moduli[0]), 1);
        assert!(p.log_q() <= 218.0, "log Q {} over the 128-bit bound for N = 8192", p.log_q());
        assert!(p.moduli[..RESPONSE_LEVELS].iter().all(|&q| q < 1 << PRIME_BITS));
        let distinct: std::collections::BTreeSet<u64> = p.moduli.iter().copied().collect();
        assert_eq!(distinct.len(), LEVELS);
    }

    /// Negacyclic product coefficient `pos` of `m * w` with wrapping arithmetic `mul`/`add`.
    fn neg_coeff(m: &[u64], w: &[u64], pos: usize, t: PlainModulus) -> u64 {
        let mut want = 0u64;
        for (j, &wj) in w.iter().enumerate() {
            if wj == 0 {
                continue;
            }
            let (i, neg) = if pos >= j { (pos - j, false) } else { (pos + DEGREE - j, true) };
            let x = t.mul(m[i], wj) as i128;
            let v = want as i128 + if neg { -x } else { x };
            want = t.reduce(v);
        }
        want
    }

    /// Encrypt, multiply by a plaintext, finish (mask, flood, switch), decrypt: the client gets
    /// `m * w - c0` exactly (negacyclic product mod t) at the useful coefficients.
    fn round_trip(t: PlainModulus, dense: bool) {
        let p = HeParams::new().unwrap();
        let mut rng = ChaCha20Rng::from_seed([3u8; 32]);
        let sk = SecretKey::generate(&p, &mut rng).unwrap();
        let pk =
            parse_public_key(&p, &public_key_bytes(&p, &sk.public_key(&p, t, &mut rng).unwrap()))
                .unwrap();
        let m: Vec<u64> = (0..DEGREE).map(|_| t.reduce(rng.next_u64() as i128)).collect();
        let mut w = vec![0u64; DEGREE];
        let fan_in = if dense { DEGREE } else { 9 };
        for k in 0..fan_in {
            w[if dense { k } else { k * 37 }] = t.reduce(rng.next_u64() as i128);
        }
        let ct = parse_ciphertext(&p, &sk.encrypt(&p, t, &m, &mut rng).unwrap()).unwrap();
        let mut acc = Accumulator::new(&p);
        acc.add_product(&ct, &plaintext_ntt(&p, t, &w).unwrap());
        let useful: Vec<u32> = vec![0, 5, 400, 8191];
        let c0: Vec<u64> = useful.iter().map(|_| t.reduce(rng.next_u64() as i128)).collect();
        let plain: Vec<i64> = c0.iter().map(|&c| t.lift(t.reduce(-(c as i128)))).collect();
        let flood = flood_bits(&p, t, fan_in).unwrap();
        let msg = acc.finish(&p, t, &pk, &useful, &plain, flood, &mut rng).unwrap();
        assert_eq!(msg.len(), p.response_bytes(useful.len()));
        let got = sk.decrypt_response(&p, t, &msg, &useful).unwrap();
        for (k, &pos) in useful.iter().enumerate() {
            let want = neg_coeff(&m, &w, pos as usize, t);
            assert_eq!(got[k], t.reduce(want as i128 - c0[k] as i128), "coefficient {pos}");
        }
        assert!(sk.decrypt_response(&p, t, &msg[8..], &useful).is_err());
        // A residue out of range (all bits set) is refused, not reduced.
        let mut bad = msg.clone();
        bad[..7].fill(0xff);
        assert!(sk.decrypt_response(&p, t, &bad, &useful).is_err());
    }

    proptest::proptest! {
        #[test]
        fn bit_packing_round_trips(vals in proptest::collection::vec((proptest::prelude::any::<u64>(), 1u32..=64), 0..200)) {
            let mut w = BitWriter::with_capacity(0);
            let vals: Vec<(u64, u32)> = vals.into_iter().map(|(x, b)| (if b == 64 { x } else { x & ((1 << b) - 1) }, b)).collect();
            for &(x, b) in &vals {
                w.write(x, b);
            }
            let total: u32 = vals.iter().map(|v| v.1).sum();
            let bytes = w.finish();
            proptest::prop_assert_eq!(bytes.len(), total.div_ceil(8) as usize);
            let mut r = BitReader::new(&bytes);
            for &(x, b) in &vals {
                proptest::prop_assert_eq!(r.read(b), x);
            }
        }
    }

    #[test]
    fn product_round_trip_is_exact_mod_2_64() {
        round_trip(PlainModulus::Pow64, false);
    }

    /// A dense kernel (all `N` coefficients full-range: the largest noise of one product).
    #[test]
    fn dense_product_round_trip_is_exact_mod_2_64() {
        round_trip(PlainModulus::Pow64, true);
    }

    #[test]
    fn product_round_trip_is_exact_mod_a_prime() {
        let t = generate_prime(60, 2 * DEGREE as u64, 1 << 60).unwrap();
        round_trip(PlainModulus::Prime(t), true);
    }

    #[test]
    fn oversized_fan_in_is_refused() {
        let p = HeParams::new().unwrap();
        assert!(flood_bits(&p, PlainModulus::Pow64, super::super::hom::MAX_NOISE_FAN_IN).is_ok());
        assert!(flood_bits(&p, PlainModulus::Pow64, 1 << 30).is_err());
    }
}
