//! Reports of a secure run (design.md §6): per layer and in total, online and offline time (ms),
//! bytes each way, rounds, MACs and, with `--check`, the max |error| against the fixed-point twin.

use super::walk::LayerTrace;
use crate::model::{LayerOp, Plan};
use serde::Serialize;

/// One layer of one inference.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerReport {
    /// Layer name (from the graph).
    pub name: String,
    /// Op kind ("Conv2d", "Poly", ...).
    pub kind: String,
    /// Per-sample output shape.
    pub out_shape: Vec<usize>,
    /// Multiply-accumulates of the whole batch (linear layers only).
    pub macs: u64,
    /// Online time at the server, ms (it does the online compute).
    pub online_ms: f64,
    /// Offline time, ms: the slowest of server, client and dealer for this layer.
    pub offline_ms: f64,
    /// Online bytes server -> client.
    pub bytes_server_to_client: u64,
    /// Online bytes client -> server.
    pub bytes_client_to_server: u64,
    /// Offline bytes the dealer sends for this layer, to the server and the client together.
    pub bytes_from_dealer: u64,
    /// Offline bytes between server and client for this layer, both ways: the dealer-free
    /// (two-party) preprocessing (docs/two-party.md); 0 (and omitted) in dealer mode.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_two_party: u64,
    /// Online communication rounds of this layer.
    pub rounds: u64,
    /// Max |secure - fixed-point twin| of this layer's output (decoded), when checked.
    pub max_abs_error: Option<f64>,
}

/// One inference (one batch) of a session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InferenceReport {
    /// Samples in the batch.
    pub batch: usize,
    /// Per-layer rows; the last row is the output reveal.
    pub layers: Vec<LayerReport>,
    /// Client wall time of the online phase, from sending its first message to decoded logits, ms.
    pub online_ms: f64,
    /// Wall time of the offline phase (dealer + both parties, concurrently), ms.
    pub offline_ms: f64,
    /// Online bytes in both directions between server and client.
    pub online_bytes: u64,
    /// Offline bytes from the dealer, to the server and the client together.
    pub offline_bytes: u64,
    /// Offline bytes between server and client (two-party preprocessing), both ways; 0 (and
    /// omitted) in dealer mode.
    #[serde(skip_serializing_if = "is_zero")]
    pub preprocessing_bytes: u64,
    /// Online rounds.
    pub rounds: u64,
    /// Max |error| over the logits against the fixed-point twin, when checked.
    pub max_abs_error: Option<f64>,
}

/// Session setup (once per client connection): seeds, plan skeleton, `F = W - B`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupReport {
    /// Client wall time of the setup, ms.
    pub ms: f64,
    /// Bytes of the setup: server -> client (skeleton + masked weights) in dealer mode; both
    /// ways in two-party mode (skeleton, and the client's public keys to the server).
    pub bytes: u64,
}

/// Builds an inference report from the traces of the three roles (index = layer) plus the output
/// reveal of `output_bytes` bytes.
pub fn merge(
    plan: &Plan,
    batch: usize,
    server_off: &[LayerTrace],
    client_off: &[LayerTrace],
    dealer: &[LayerTrace],
    server_on: &[LayerTrace],
    client_on: &[LayerTrace],
) -> Vec<LayerReport> {
    let z = LayerTrace::default();
    plan.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let so = server_off.get(i).unwrap_or(&z);
            let co = client_off.get(i).unwrap_or(&z);
            let de = dealer.get(i).unwrap_or(&z);
            let sn = server_on.get(i).unwrap_or(&z);
            let cn = client_on.get(i).unwrap_or(&z);
            let macs = match &l.op {
                LayerOp::Conv2d(c) => c.geom.macs() * batch as u64,
                LayerOp::Linear(c) => (c.in_features * c.out_features * batch) as u64,
                _ => 0,
            };
            LayerReport {
                name: l.name.clone(),
                kind: l.op.kind().to_string(),
                out_shape: l.out_shape.clone(),
                macs,
                online_ms: sn.ms,
                offline_ms: so.ms.max(co.ms).max(de.ms),
                bytes_server_to_client: sn.stats.bytes_sent,
                bytes_client_to_server: cn.stats.bytes_sent,
                bytes_from_dealer: de.stats.bytes_sent,
                // The parties send nothing during a dealer-mode offline phase, so this is the
                // two-party preprocessing traffic.
                bytes_two_party: so.stats.bytes_sent + co.stats.bytes_sent,
                // Every protocol here communicates in at most one flight per layer (linear: one
                // way; polynomial: one simultaneous exchange); the send-phase counters can only
                // add more (e.g. a multi-round comparison).
                rounds: if sn.stats.messages_sent + cn.stats.messages_sent > 0 {
                    sn.stats.send_phases.max(cn.stats.send_phases).max(1)
                } else {
                    0
                },
                max_abs_error: None,
            }
        })
        .collect()
}

impl InferenceReport {
    /// Fills the totals from the layer rows.
    pub fn total(&mut self) {
        self.online_bytes =
            self.layers.iter().map(|l| l.bytes_server_to_client + l.bytes_client_to_server).sum();
        self.offline_bytes = self.layers.iter().map(|l| l.bytes_from_dealer).sum();
        self.preprocessing_bytes = self.layers.iter().map(|l| l.bytes_two_party).sum();
        self.rounds = self.layers.iter().map(|l| l.rounds).sum();
    }

    /// A fixed-width text table of the layers and the totals (times in ms, sizes in bytes/MB).
    /// With two-party preprocessing a last column gives each layer's preprocessing bytes (both
    /// ways); the `offline` column is then the preprocessing time.
    pub fn table(&self) -> String {
        let two_party = self.preprocessing_bytes > 0;
        let prep = |v: &str| if two_party { format!(" {v:>12}") } else { String::new() };
        let mut s = format!(
            "{:<18} {:<13} {:>9} {:>9} {:>11} {:>11} {:>6} {:>10}{}\n",
            "layer",
            "op",
            "online",
            "offline",
            "bytes c->s",
            "bytes s->c",
            "rounds",
            "max|err|",
            prep("prep bytes")
        );
        for l in &self.layers {
            s += &format!(
                "{:<18} {:<13} {:>9.2} {:>9.2} {:>11} {:>11} {:>6} {:>10}{}\n",
                truncate(&l.name, 18),
                l.kind,
                l.online_ms,
                l.offline_ms,
                l.bytes_client_to_server,
                l.bytes_server_to_client,
                l.rounds,
                l.max_abs_error.map(|e| format!("{e:.2e}")).unwrap_or_else(|| "-".into()),
                prep(&l.bytes_two_party.to_string())
            );
        }
        let (what, offline) = if self.preprocessing_bytes > 0 {
            ("two-party preprocessing", self.preprocessing_bytes)
        } else {
            ("offline (dealer)", self.offline_bytes)
        };
        s += &format!(
            "total: online {:.2} ms, offline {:.2} ms, online {:.3} MB, {what} {:.3} MB, {} rounds{}\n",
            self.online_ms,
            self.offline_ms,
            self.online_bytes as f64 / 1e6,
            offline as f64 / 1e6,
            self.rounds,
            self.max_abs_error.map(|e| format!(", max |logit error| {e:.2e}")).unwrap_or_default()
        );
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "~"
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
