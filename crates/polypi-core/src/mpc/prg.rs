//! Seeded correlated randomness (design.md §4, dealer). The dealer shares a 256-bit seed with each
//! party; both expand it with ChaCha20 (`rand_chacha`, a CSPRNG) on a stream chosen by
//! (inference, layer, purpose), so a party and the dealer draw the same values without sending
//! them, and every inference and layer gets independent randomness.

use crate::error::{Error, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;

/// What a stream of randomness is for (part of the ChaCha20 stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Client: the mask `A` of a linear layer's input.
    InputMask,
    /// Server: its share `c0` of `A*B`.
    ProductShare,
    /// Server (session-wide): the weight mask `B`, so that `F = W - B` can be sent once.
    WeightMask,
    /// Both: a party's share of the polynomial mask `r` of power group `g`.
    PolyMask(u8),
    /// Server: its shares of `r^2..r^m` of power group `g`.
    PolyPowers(u8),
    /// Reserved for comparison protocols (DReLU keys etc.).
    Compare(u8),
    /// Both (ESPN share powers): a party's Beaver masks of its own share powers `x_p^1..x_p^(m-1)`
    /// of power group `g` (server: `a`, client: `b`).
    ShareMask(u8),
    /// Server (ESPN share powers): its shares `c0` of the cross products `a_i * b_j` of group `g`.
    ShareProduct(u8),
}

impl Purpose {
    /// 8-bit code: distinct for every purpose and every group index below 32.
    fn code(self) -> u64 {
        match self {
            Purpose::InputMask => 0,
            Purpose::ProductShare => 1,
            Purpose::WeightMask => 2,
            Purpose::Compare(g) => 8 + (g as u64 % 8),
            Purpose::PolyMask(g) => 32 + (g as u64 % 32),
            Purpose::PolyPowers(g) => 64 + (g as u64 % 32),
            Purpose::ShareMask(g) => 96 + (g as u64 % 32),
            Purpose::ShareProduct(g) => 128 + (g as u64 % 32),
        }
    }
}

/// A 256-bit seed shared by the dealer and one party.
#[derive(Clone)]
pub struct Seed(pub [u8; 32]);

impl std::fmt::Debug for Seed {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(<secret>)")
    }
}

impl Seed {
    /// A fresh seed from the operating system's CSPRNG.
    /// Errors: `Io` if the OS generator fails.
    pub fn from_os() -> Result<Seed> {
        let mut s = [0u8; 32];
        rand_chacha::rand_core::OsRng.try_fill_bytes(&mut s).map_err(|e| {
            Error::Io(std::io::Error::other(format!("OS random number generator: {e}")))
        })?;
        Ok(Seed(s))
    }

    /// The ChaCha20 stream for `(inference, layer, purpose)`. `inference` 0 is the session setup;
    /// inferences count from 1. Stream id: inference (40 bits) | layer (16 bits) | purpose (8).
    pub fn stream(&self, inference: u64, layer: usize, purpose: Purpose) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(self.0);
        rng.set_stream((inference << 24) | ((layer as u64 & 0xffff) << 8) | purpose.code());
        rng
    }

    /// `n` uniform ring elements from the stream for `(inference, layer, purpose)`.
    pub fn ring(&self, inference: u64, layer: usize, purpose: Purpose, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; n];
        self.stream(inference, layer, purpose).fill_bytes(bytemuck::cast_slice_mut(&mut v));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let s = Seed([7u8; 32]);
        let a = s.ring(1, 3, Purpose::InputMask, 64);
        assert_eq!(a, s.ring(1, 3, Purpose::InputMask, 64));
        assert_ne!(a, s.ring(2, 3, Purpose::InputMask, 64));
        assert_ne!(a, s.ring(1, 4, Purpose::InputMask, 64));
        assert_ne!(a, s.ring(1, 3, Purpose::ProductShare, 64));
        assert_ne!(s.ring(1, 3, Purpose::PolyMask(0), 8), s.ring(1, 3, Purpose::PolyMask(1), 8));
        // Up to 7 power groups (degree 8) never share a stream, across all purposes.
        let mut codes: Vec<u64> = (0..8u8)
            .flat_map(|g| {
                [
                    Purpose::PolyMask(g),
                    Purpose::PolyPowers(g),
                    Purpose::ShareMask(g),
                    Purpose::ShareProduct(g),
                    Purpose::Compare(g),
                ]
            })
            .chain([Purpose::InputMask, Purpose::ProductShare, Purpose::WeightMask])
            .map(Purpose::code)
            .collect();
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert!(codes.iter().all(|&c| c < 256));
        assert_eq!(format!("{:?}", s), "Seed(<secret>)");
    }

    #[test]
    fn ring_elements_look_uniform() {
        // Each of the 64 bit positions is set in about half of 4096 draws (binomial, sd = 32).
        let v = Seed::from_os().unwrap().ring(1, 0, Purpose::InputMask, 4096);
        for bit in 0..64 {
            let ones = v.iter().filter(|x| (*x >> bit) & 1 == 1).count();
            assert!((1848..=2248).contains(&ones), "bit {bit}: {ones} ones");
        }
    }
}
