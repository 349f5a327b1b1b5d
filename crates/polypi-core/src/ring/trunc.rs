//! Truncation: dividing fixed-point values by `2^bits` after a product.
//!
//! [`trunc_public`] is the plaintext twin (arithmetic shift = floor division). [`trunc_local`] is
//! SecureML's local share truncation (Mohassel & Zhang 2017, Thm. 1): party 0 computes
//! `x0 >> bits`, party 1 computes `-((-x1) >> bits)` (logical shifts). If the shared value satisfies
//! `|x| < 2^l` with `l + 1 < 64`, the shares then hold `floor(x / 2^bits)` or one more, except with
//! probability at most `2^(l + 1 - 64)` per element, when the result is off by about `2^(64-bits)`.

/// Plaintext twin: `floor(x / 2^bits)` on two's-complement values (arithmetic shift), in place.
pub fn trunc_public(x: &mut [u64], bits: u32) {
    if bits == 0 {
        return;
    }
    for v in x.iter_mut() {
        *v = ((*v as i64) >> bits) as u64;
    }
}

/// SecureML local truncation of this party's shares by `bits` (party 0 = server, 1 = client).
pub fn trunc_local(x: &mut [u64], bits: u32, party: usize) {
    if bits == 0 {
        return;
    }
    if party == 0 {
        for v in x.iter_mut() {
            *v >>= bits;
        }
    } else {
        for v in x.iter_mut() {
            *v = (v.wrapping_neg() >> bits).wrapping_neg();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Secure truncation of a random sharing equals the plaintext twin within 1 LSB (the
        /// failure event has probability < 2^-20 for |x| < 2^43 and does not occur in practice).
        #[test]
        fn local_trunc_matches_twin_within_one(x in -(1i64 << 43)..(1i64 << 43), r in any::<u64>(), bits in 1u32..32) {
            let x = x as u64;
            let mut s0 = [x.wrapping_sub(r)];
            let mut s1 = [r];
            trunc_local(&mut s0, bits, 0);
            trunc_local(&mut s1, bits, 1);
            let mut twin = [x];
            trunc_public(&mut twin, bits);
            let diff = s0[0].wrapping_add(s1[0]).wrapping_sub(twin[0]) as i64;
            prop_assert!((0..=1).contains(&diff), "diff {}", diff);
        }
    }
}
