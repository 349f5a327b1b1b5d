//! The dealer-stream provider of [`super::Preprocessing`]: a party's offline phase in dealer mode
//! (expand its seed, receive the dealer's corrections; see [`crate::engine::party::Offline`]).

use super::{Material, Preprocessing};
use crate::engine::party::Offline;
use crate::engine::plain::EncodedPlan;
use crate::engine::walk::{walk, LayerTrace};
use crate::error::Result;
use crate::model::Plan;
use crate::mpc::prg::Seed;
use crate::net::Channel;

/// A party's dealer-mode preprocessing: its seed from the dealer and (client) `F = W - B`.
pub struct DealerStream<'a> {
    party: usize,
    seed: &'a Seed,
    masked_weights: &'a EncodedPlan,
}

impl<'a> DealerStream<'a> {
    /// The provider of `party` (0 = server, 1 = client) with its dealer seed and (client) the
    /// masked weights `F` it received at setup (the server passes its encoded plan; unused).
    pub fn new(party: usize, seed: &'a Seed, masked_weights: &'a EncodedPlan) -> Self {
        DealerStream { party, seed, masked_weights }
    }
}

impl Preprocessing for DealerStream<'_> {
    fn prepare(
        &mut self,
        plan: &Plan,
        inference: u64,
        batch: usize,
        link: &mut dyn Channel,
    ) -> Result<(Vec<Option<Material>>, Vec<LayerTrace>)> {
        let mut off =
            Offline::new(self.party, self.seed, inference, self.masked_weights, Some(link));
        let (_, traces) = walk(plan, &mut off, batch)?;
        Ok((std::mem::take(&mut off.material), traces))
    }
}
