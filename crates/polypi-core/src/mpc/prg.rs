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
}

impl Purpose {
    fn code(self) -> u64 {
        match self {
            Purpose::InputMask => 0,
            Purpose::ProductShare => 1,
            Purpose::WeightMask => 2,
            Purpose::PolyMask(g) => 3 + 2 * (g as u64 % 4),
            Purpose::PolyPowers(g) => 4 + 2 * (g as u64 % 4),
            Purpose::Compare(g) => 11 + (g as u64 % 5),
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
    /// inferences count from 1.
    pub fn stream(&self, inference: u64, layer: usize, purpose: Purpose) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(self.0);
        rng.set_stream((inference << 20) | ((layer as u64 & 0xffff) << 4) | purpose.code());
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
