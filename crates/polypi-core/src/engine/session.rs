//! The session protocol between server, client and dealer, over any [`Channel`]s, and an
//! in-process runner of all three roles ([`run_local`]).
//!
//! Session (one client connection):
//! 1. dealer -> server: the server's 256-bit seed; dealer -> client: the client's seed (fresh
//!    from the OS CSPRNG for every session).
//! 2. server -> client and server -> dealer: the public plan skeleton (JSON; no weights), with
//!    the calibrated input and logit maxima of the range guard ([`super::guard`]) when the model
//!    has calibrated ranges (field `range_guard`).
//! 3. server -> client: `F = W - B` for every linear layer, one message each (once per session).
//! 4. per inference: client -> server and client -> dealer: the batch size (u64 LE; 0 ends the
//!    session); offline phase (dealer -> client corrections, streamed layer by layer); online
//!    phase; server -> client: its share of the logits.

use super::guard::{GuardBounds, GuardCheck, GuardPolicy, RangeViolation};
use super::party::{check_supported, linear_indices, Material, Online};
use super::plain::{check_input, EncodedPlan, FixedBackend};
use super::report::{merge, InferenceReport, LayerReport, SetupReport};
use super::walk::{walk, LayerTrace};
use crate::error::{Error, Result};
use crate::model::Plan;
use crate::mpc::prg::Seed;
use crate::mpc::{CLIENT, SERVER};
use crate::net::{emulated_pair, mem_pair, recv_ring, send_ring, Channel, LinkModel};
#[cfg(feature = "two-party")]
use crate::offline::two_party::{check_two_party_supported, TwoPartyClient, TwoPartyServer};
use crate::offline::{weight_masks, Dealer};
use crate::offline::{DealerStream, Preprocessing};
use crate::ring::{FixedPoint, RingTensor};
use std::time::{Duration, Instant};

/// Largest batch a peer may ask for (guards allocations against a hostile peer).
pub const MAX_BATCH: usize = 4096;

/// Largest plan skeleton message accepted, in bytes (the public JSON plan without weights; the
/// seeds' largest networks need well under 1 MB).
pub const MAX_SKELETON_BYTES: usize = 16 << 20;

/// What one session may ask for and how long its phases may take. Deployed servers and dealers
/// set all of them (`polypi serve --max-batch ...`); in-process runs use the default (batch up to
/// [`MAX_BATCH`], no phase deadlines).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    /// Largest batch of one inference; a larger request ends the session with `Protocol`.
    pub max_batch: usize,
    /// Deadline of the setup (seeds, skeleton, `F = W - B`), from the session's start.
    pub setup_timeout: Option<Duration>,
    /// Deadline of one inference (offline and online phase and the output), from the batch
    /// request.
    pub inference_timeout: Option<Duration>,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { max_batch: MAX_BATCH, setup_timeout: None, inference_timeout: None }
    }
}

fn deadline_after(t: Option<Duration>) -> Option<Instant> {
    t.map(|t| Instant::now() + t)
}

fn recv_seed(ch: &mut dyn Channel) -> Result<Seed> {
    let m = ch.recv_expect(32)?;
    let s: [u8; 32] = m
        .as_slice()
        .try_into()
        .map_err(|_| Error::Protocol(format!("expected a 32-byte seed, got {} bytes", m.len())))?;
    Ok(Seed(s))
}

fn send_batch(ch: &mut dyn Channel, batch: usize) -> Result<()> {
    ch.send(&(batch as u64).to_le_bytes())?;
    ch.flush()
}

fn recv_batch(ch: &mut dyn Channel, max_batch: usize) -> Result<usize> {
    let m = ch.recv_expect(8)?;
    let b: [u8; 8] =
        m.as_slice().try_into().map_err(|_| Error::Protocol("expected a batch size".into()))?;
    let b = u64::from_le_bytes(b);
    let max = max_batch.min(MAX_BATCH);
    if b > max as u64 {
        return Err(Error::Protocol(format!(
            "the client asked for batch {b}; this session allows at most {max}"
        )));
    }
    Ok(b as usize)
}

/// The range-guard field of the skeleton message (absent: no calibrated ranges).
#[derive(serde::Deserialize)]
struct GuardField {
    #[serde(default)]
    range_guard: Option<GuardBounds>,
    /// `Some("two-party")` when the server runs the dealer-free preprocessing.
    #[serde(default)]
    preprocessing: Option<String>,
}

/// The skeleton's `preprocessing` value of the dealer-free mode (absent in dealer mode).
const TWO_PARTY: &str = "two-party";

/// The skeleton message: the plan's fields, plus `range_guard` when there is one.
#[derive(serde::Serialize)]
struct SkeletonMessage<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_guard: Option<GuardBounds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preprocessing: Option<&'static str>,
}

/// Serialises the skeleton straight to JSON (no `serde_json::Value` round trip, which would
/// print every f32 as its f64 expansion): without a guard the bytes are exactly
/// `serde_json::to_vec(&plan.public_skeleton())`, what [`crate::cost::session_cost`] counts.
fn skeleton_message(
    plan: &Plan,
    guard: Option<GuardBounds>,
    preprocessing: Option<&'static str>,
) -> Result<Vec<u8>> {
    let skeleton = plan.public_skeleton();
    serde_json::to_vec(&SkeletonMessage { plan: &skeleton, range_guard: guard, preprocessing })
        .map_err(|e| Error::Protocol(e.to_string()))
}

/// Receives the skeleton; returns it with the guard bounds and whether the server runs the
/// two-party preprocessing.
fn recv_skeleton(ch: &mut dyn Channel) -> Result<(Plan, Option<GuardBounds>, bool)> {
    let m = ch.recv_max(MAX_SKELETON_BYTES)?;
    let p: Plan = serde_json::from_slice(&m)
        .map_err(|e| Error::Protocol(format!("bad plan skeleton: {e}")))?;
    p.check_skeleton()?;
    let g: GuardField = serde_json::from_slice(&m)
        .map_err(|e| Error::Protocol(format!("bad range guard in the plan skeleton: {e}")))?;
    if let Some(b) = &g.range_guard {
        b.check()?;
    }
    let two_party = match g.preprocessing.as_deref() {
        None => false,
        Some(TWO_PARTY) => true,
        Some(other) => {
            return Err(Error::Protocol(format!("unknown preprocessing mode '{other}'")));
        }
    };
    Ok((p, g.range_guard, two_party))
}

/// What one party measured for one inference.
#[derive(Debug, Clone, Default)]
pub struct PartyTraces {
    /// Offline phase, per layer.
    pub offline: Vec<LayerTrace>,
    /// Online phase, per layer.
    pub online: Vec<LayerTrace>,
    /// Offline phase wall time, ms.
    pub offline_ms: f64,
    /// Online phase wall time, ms.
    pub online_ms: f64,
    /// Recorded per-layer output shares (only with `record`).
    pub recorded: Vec<Option<RingTensor>>,
    /// Bytes of the output reveal (server -> client).
    pub output_bytes: u64,
}

/// Runs the server's side of one session until the client ends it: returns its traces per
/// inference. `plan` holds the weights; `enc` is `EncodedPlan::new(plan)`.
///
/// Errors: peer errors (`PeerDisconnected`, `Protocol`, `VersionMismatch`), `InvalidArgument` for
/// a plan with layers that have no 2PC protocol.
pub fn serve_session(
    plan: &Plan,
    enc: &EncodedPlan,
    client: &mut dyn Channel,
    dealer: &mut dyn Channel,
    record: bool,
) -> Result<Vec<PartyTraces>> {
    serve_session_guarded(plan, enc, None, client, dealer, record)
}

/// [`serve_session`] that also sends the client the calibrated maxima of its range guard
/// (`guard`, from [`crate::model::range::Ranges::io_max`]; `None`: the client runs unguarded).
/// Errors: as [`serve_session`].
pub fn serve_session_guarded(
    plan: &Plan,
    enc: &EncodedPlan,
    guard: Option<GuardBounds>,
    client: &mut dyn Channel,
    dealer: &mut dyn Channel,
    record: bool,
) -> Result<Vec<PartyTraces>> {
    serve_session_limited(plan, enc, guard, &SessionLimits::default(), client, dealer, record)
}

/// [`serve_session_guarded`] under `limits`: the setup and every inference must finish within
/// their deadlines (set on both channels with [`Channel::set_deadline`]), and a batch above
/// `limits.max_batch` ends the session.
/// Errors: as [`serve_session`]; `PeerDisconnected` when a deadline passes; `Protocol` for a
/// batch over the limit.
pub fn serve_session_limited(
    plan: &Plan,
    enc: &EncodedPlan,
    guard: Option<GuardBounds>,
    limits: &SessionLimits,
    client: &mut dyn Channel,
    dealer: &mut dyn Channel,
    record: bool,
) -> Result<Vec<PartyTraces>> {
    serve_session_mode(plan, enc, guard, limits, client, Some(dealer), record)
}

/// [`serve_session_limited`] without a dealer: the correlated randomness is produced between
/// server and client alone ([`crate::offline::two_party`], docs/two-party.md) before each
/// inference's online phase, which is the same as in dealer mode.
/// Errors: as [`serve_session_limited`]; `Graph` for a plan with a layer that has no two-party
/// generator (polynomial, ReLU, max-pool), before anything is sent.
#[cfg(feature = "two-party")]
pub fn serve_session_two_party(
    plan: &Plan,
    enc: &EncodedPlan,
    guard: Option<GuardBounds>,
    limits: &SessionLimits,
    client: &mut dyn Channel,
    record: bool,
) -> Result<Vec<PartyTraces>> {
    check_two_party_supported(plan)?;
    serve_session_mode(plan, enc, guard, limits, client, None, record)
}

/// The server's source of correlated randomness: the dealer's channel, or (two-party mode) its
/// HE state, the material then coming over the client's channel.
enum ServerSource<'d, 'e> {
    Dealer(&'d mut dyn Channel),
    #[cfg(feature = "two-party")]
    TwoParty(Box<TwoPartyServer<'e>>),
    #[cfg(not(feature = "two-party"))]
    #[allow(dead_code)]
    Never(std::marker::PhantomData<&'e ()>),
}

impl ServerSource<'_, '_> {
    /// Sets the dealer channel's deadline (no-op in two-party mode).
    fn set_dealer_deadline(&mut self, deadline: Option<Instant>) {
        if let ServerSource::Dealer(d) = self {
            d.set_deadline(deadline);
        }
    }
}

/// The server's session in either mode: with `dealer` (dealer stream) or without (two-party).
fn serve_session_mode(
    plan: &Plan,
    enc: &EncodedPlan,
    guard: Option<GuardBounds>,
    limits: &SessionLimits,
    client: &mut dyn Channel,
    mut dealer: Option<&mut dyn Channel>,
    record: bool,
) -> Result<Vec<PartyTraces>> {
    check_supported(plan)?;
    let setup_deadline = deadline_after(limits.setup_timeout);
    client.set_deadline(setup_deadline);
    if let Some(d) = dealer.as_deref_mut() {
        d.set_deadline(setup_deadline);
    }
    let seed = match dealer.as_deref_mut() {
        Some(d) => recv_seed(d)?,
        None => Seed::from_os()?,
    };
    let skeleton = plan.public_skeleton();
    let mode = if dealer.is_some() { None } else { Some(TWO_PARTY) };
    let json = skeleton_message(plan, guard, mode)?;
    client.send(&json)?;
    client.flush()?;
    let mut source = match dealer {
        Some(d) => {
            d.send(&json)?;
            d.flush()?;
            send_masked_weights(&skeleton, enc, &seed, client)?;
            ServerSource::Dealer(d)
        }
        #[cfg(feature = "two-party")]
        None => ServerSource::TwoParty(Box::new(TwoPartyServer::setup(seed.clone(), enc, client)?)),
        #[cfg(not(feature = "two-party"))]
        None => {
            return Err(Error::InvalidArgument(
                "this build has no two-party preprocessing (feature `two-party`)".into(),
            ))
        }
    };
    client.set_deadline(None);
    source.set_dealer_deadline(None);
    let mut out = Vec::new();
    let mut inference = 0u64;
    loop {
        let batch = recv_batch(client, limits.max_batch)?;
        if batch == 0 {
            return Ok(out);
        }
        let deadline = deadline_after(limits.inference_timeout);
        client.set_deadline(deadline);
        source.set_dealer_deadline(deadline);
        inference += 1;
        let mut tr = PartyTraces::default();
        let t0 = Instant::now();
        let (material, traces) = match &mut source {
            ServerSource::Dealer(d) => {
                DealerStream::new(SERVER, &seed, enc).prepare(plan, inference, batch, *d)?
            }
            #[cfg(feature = "two-party")]
            ServerSource::TwoParty(tp) => tp.prepare(plan, inference, batch, client)?,
            #[cfg(not(feature = "two-party"))]
            ServerSource::Never(_) => unreachable!("never constructed"),
        };
        tr.offline = traces;
        tr.offline_ms = t0.elapsed().as_secs_f64() * 1e3;
        // The client says when its offline phase is done: the online phase starts now.
        let go = client.recv_max(0)?;
        if !go.is_empty() {
            return Err(Error::Protocol("expected the online-start message".into()));
        }
        let t1 = Instant::now();
        let mut on = Online::new(SERVER, plan.frac_bits, enc, material, client, Vec::new(), record);
        let (y0, traces) = walk(plan, &mut on, batch)?;
        tr.recorded = std::mem::take(&mut on.recorded);
        let spent = on.finish();
        let before = client.stats().bytes_sent;
        send_ring(client, &y0.data)?;
        client.flush()?;
        tr.output_bytes = client.stats().bytes_sent - before;
        tr.online = traces;
        tr.online_ms = t1.elapsed().as_secs_f64() * 1e3;
        // Freed after the output is sent (see `Online::finish`).
        drop(spent);
        client.set_deadline(None);
        source.set_dealer_deadline(None);
        out.push(tr);
    }
}

/// Dealer mode's setup step 3: sends `F = W - B` for every linear layer (`B` from the server's
/// dealer seed), one message each.
fn send_masked_weights(
    skeleton: &Plan,
    enc: &EncodedPlan,
    seed: &Seed,
    client: &mut dyn Channel,
) -> Result<()> {
    let masks = weight_masks(skeleton, seed)?;
    for idx in linear_indices(enc) {
        let f: Vec<u64> = if let Some(w) = enc.conv.get(&idx) {
            w.weight
                .iter()
                .zip(&masks.conv[&idx].weight)
                .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)))
                .collect()
        } else {
            let w = &enc.linear[&idx];
            w.weight_t
                .iter()
                .zip(&masks.linear[&idx].weight_t)
                .map(|(x, y)| x.wrapping_sub(*y))
                .collect()
        };
        send_ring(client, &f)?;
    }
    client.flush()
}

/// Runs the dealer's side of one session: fresh seeds for both parties, then the correlated
/// randomness of every inference the client asks for.
///
/// Errors: peer errors; `Io` if the OS random generator fails.
pub fn deal_session(
    server: &mut dyn Channel,
    client: &mut dyn Channel,
) -> Result<Vec<PartyTraces>> {
    deal_session_limited(server, client, &SessionLimits::default())
}

/// [`deal_session`] under `limits` (batch limit, setup and per-inference deadlines on both
/// channels). Errors: as [`deal_session`]; `PeerDisconnected` when a deadline passes;
/// `Protocol` for a batch over the limit.
pub fn deal_session_limited(
    server: &mut dyn Channel,
    client: &mut dyn Channel,
    limits: &SessionLimits,
) -> Result<Vec<PartyTraces>> {
    let setup_deadline = deadline_after(limits.setup_timeout);
    server.set_deadline(setup_deadline);
    client.set_deadline(setup_deadline);
    let seed_s = Seed::from_os()?;
    let seed_c = Seed::from_os()?;
    server.send(&seed_s.0)?;
    server.flush()?;
    client.send(&seed_c.0)?;
    client.flush()?;
    let (skeleton, _, two_party) = recv_skeleton(server)?;
    if two_party {
        return Err(Error::Protocol(
            "the server announced two-party preprocessing to its dealer".into(),
        ));
    }
    let masks = weight_masks(&skeleton, &seed_s)?;
    server.set_deadline(None);
    client.set_deadline(None);
    let mut out = Vec::new();
    let mut inference = 0u64;
    loop {
        let batch = recv_batch(client, limits.max_batch)?;
        if batch == 0 {
            return Ok(out);
        }
        let deadline = deadline_after(limits.inference_timeout);
        server.set_deadline(deadline);
        client.set_deadline(deadline);
        inference += 1;
        let t0 = Instant::now();
        let mut d = Dealer::new(&seed_s, &seed_c, inference, &masks, client).with_server(server);
        let (_, traces) = walk(&skeleton, &mut d, batch)?;
        server.flush()?;
        client.flush()?;
        server.set_deadline(None);
        client.set_deadline(None);
        out.push(PartyTraces {
            offline: traces,
            offline_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        });
    }
}

/// The client's side of a session: connect once, then [`ClientSession::infer`] any number of
/// times, then [`ClientSession::close`].
pub struct ClientSession<'a> {
    server: &'a mut dyn Channel,
    /// Where the correlated randomness comes from.
    source: ClientSource<'a>,
    seed: Seed,
    skeleton: Plan,
    masked: EncodedPlan,
    inference: u64,
    guard: Option<GuardBounds>,
    policy: GuardPolicy,
    /// Setup cost.
    pub setup: SetupReport,
}

/// The client's source of correlated randomness: the dealer's channel, or (two-party mode) its
/// own HE key and seed, the material then coming over the server's channel.
enum ClientSource<'a> {
    Dealer(&'a mut dyn Channel),
    #[cfg(feature = "two-party")]
    TwoParty(Box<TwoPartyClient>),
}

impl ClientSource<'_> {
    /// The dealer's channel (None in two-party mode).
    fn dealer(&mut self) -> Option<&mut dyn Channel> {
        match self {
            ClientSource::Dealer(d) => Some(&mut **d),
            #[cfg(feature = "two-party")]
            ClientSource::TwoParty(_) => None,
        }
    }
}

/// The client's result of one inference.
#[derive(Debug, Clone)]
pub struct ClientInference {
    /// Logits `[batch, classes]`, decoded.
    pub logits: Vec<f32>,
    /// The client's measurements.
    pub traces: PartyTraces,
    /// A failed range-guard check (only in [`crate::engine::guard::GuardMode::Warn`]; in `Refuse` it is an error).
    pub range_violation: Option<RangeViolation>,
}

impl<'a> ClientSession<'a> {
    /// Receives the seed, the plan skeleton and `F = W - B`.
    /// Errors: peer errors; `Protocol` for a malformed skeleton or weight message.
    /// Errors also: `Protocol` when the server runs the two-party preprocessing (connect with
    /// [`ClientSession::connect_two_party`]).
    pub fn connect(server: &'a mut dyn Channel, dealer: &'a mut dyn Channel) -> Result<Self> {
        let t0 = Instant::now();
        let seed = recv_seed(dealer)?;
        let (skeleton, guard, two_party) = recv_skeleton(server)?;
        if two_party {
            return Err(Error::Protocol(
                "the server runs two-party preprocessing (no dealer); connect without a dealer \
                 (--preprocessing two-party)"
                    .into(),
            ));
        }
        let mut masked = EncodedPlan::new(&skeleton)?;
        for idx in linear_indices(&masked) {
            if let Some(c) = masked.conv.get_mut(&idx) {
                let g = c.geom;
                let per = (g.c_out / g.groups) * (g.c_in / g.groups) * g.kh * g.kw;
                let all = recv_ring(server, per * g.groups)?;
                c.weight = all.chunks(per.max(1)).map(|x| x.to_vec()).collect();
            } else if let Some(l) = masked.linear.get_mut(&idx) {
                l.weight_t = recv_ring(server, l.in_features * l.out_features)?;
            }
        }
        let setup = SetupReport {
            ms: t0.elapsed().as_secs_f64() * 1e3,
            bytes: server.stats().bytes_received,
        };
        Ok(ClientSession {
            server,
            source: ClientSource::Dealer(dealer),
            seed,
            skeleton,
            masked,
            inference: 0,
            guard,
            policy: GuardPolicy::default(),
            setup,
        })
    }

    /// Connects without a dealer (docs/two-party.md): receives the plan skeleton, refuses it
    /// when a layer has no two-party generator, draws the client's own seed and RLWE key and
    /// sends the public key. No `F = W - B` is sent in this mode.
    /// Errors: peer errors; `Protocol` for a malformed skeleton or a server in dealer mode;
    /// `Graph` for a plan with polynomial, ReLU or max-pool layers (nothing is sent then).
    #[cfg(feature = "two-party")]
    pub fn connect_two_party(server: &'a mut dyn Channel) -> Result<Self> {
        let t0 = Instant::now();
        let (skeleton, guard, two_party) = recv_skeleton(server)?;
        if !two_party {
            return Err(Error::Protocol(
                "the server runs dealer-mode preprocessing; connect with a dealer".into(),
            ));
        }
        check_two_party_supported(&skeleton)?;
        let masked = EncodedPlan::new(&skeleton)?;
        let seed = Seed::from_os()?;
        let tp = TwoPartyClient::setup(seed.clone(), &skeleton, server)?;
        // Both ways: the skeleton in, the client's public keys out.
        let st = server.stats();
        let setup = SetupReport {
            ms: t0.elapsed().as_secs_f64() * 1e3,
            bytes: st.bytes_received + st.bytes_sent,
        };
        Ok(ClientSession {
            server,
            source: ClientSource::TwoParty(Box::new(tp)),
            seed,
            skeleton,
            masked,
            inference: 0,
            guard,
            policy: GuardPolicy::default(),
            setup,
        })
    }

    /// The calibrated maxima the server sent for the range guard (`None`: the model has no
    /// calibrated ranges, the guard cannot check anything).
    pub fn guard_bounds(&self) -> Option<GuardBounds> {
        self.guard
    }

    /// Sets the range-guard policy (default: refuse, margin 2). Errors: `InvalidArgument` for a
    /// margin that is not a finite number >= 1.
    pub fn set_guard_policy(&mut self, policy: GuardPolicy) -> Result<()> {
        if !(policy.margin.is_finite() && policy.margin >= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "range guard margin must be >= 1, got {}",
                policy.margin
            )));
        }
        self.policy = policy;
        Ok(())
    }

    /// Applies the guard policy to one check: `Err` in refuse mode, the violation in warn mode.
    fn guard_check(&self, check: GuardCheck, values: &[f32]) -> Result<Option<RangeViolation>> {
        self.policy.apply(self.guard.as_ref(), check, values, self.skeleton.frac_bits)
    }

    /// The public plan the server sent (shapes, labels, normalisation).
    pub fn plan(&self) -> &Plan {
        &self.skeleton
    }

    /// One private inference of `batch` samples; `input` is `[batch, C, H, W]`, normalised.
    /// Errors: `ShapeMismatch` (nothing is sent then), `RangeExceeded` for an input that does not
    /// fit the ring, peer errors; with the range guard in refuse mode, `RangeGuard` for an input
    /// outside the calibrated range (nothing is sent then) or for revealed logits outside the
    /// calibrated range (the session stays usable).
    pub fn infer(&mut self, input: &[f32], batch: usize, record: bool) -> Result<ClientInference> {
        check_input(&self.skeleton, input, batch)?;
        if batch > MAX_BATCH {
            return Err(Error::InvalidArgument(format!("batch {batch} > {MAX_BATCH}")));
        }
        let mut violation = self.guard_check(GuardCheck::Input, input)?;
        let fp = FixedPoint { frac_bits: self.skeleton.frac_bits };
        let x = fp.encode_slice(input)?;
        self.inference += 1;
        send_batch(self.server, batch)?;
        if let Some(d) = self.source.dealer() {
            send_batch(d, batch)?;
        }
        let mut tr = PartyTraces::default();
        let t0 = Instant::now();
        let (material, traces): (Vec<Option<Material>>, _) = match &mut self.source {
            ClientSource::Dealer(d) => DealerStream::new(CLIENT, &self.seed, &self.masked)
                .prepare(&self.skeleton, self.inference, batch, *d)?,
            #[cfg(feature = "two-party")]
            ClientSource::TwoParty(tp) => {
                tp.prepare(&self.skeleton, self.inference, batch, &mut *self.server)?
            }
        };
        tr.offline = traces;
        tr.offline_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.server.send(&[])?;
        let t1 = Instant::now();
        let mut on = Online::new(
            CLIENT,
            self.skeleton.frac_bits,
            &self.masked,
            material,
            &mut *self.server,
            x,
            record,
        );
        let (y1, traces) = walk(&self.skeleton, &mut on, batch)?;
        tr.recorded = std::mem::take(&mut on.recorded);
        let spent = on.finish();
        let y0 = recv_ring(self.server, y1.len())?;
        let logits: Vec<f32> =
            y0.iter().zip(&y1.data).map(|(a, b)| fp.decode(a.wrapping_add(*b)) as f32).collect();
        tr.online = traces;
        tr.online_ms = t1.elapsed().as_secs_f64() * 1e3;
        // Freed once the logits are out (see `Online::finish`).
        drop(spent);
        if let Some(v) = self.guard_check(GuardCheck::Logits, &logits)? {
            violation.get_or_insert(v);
        }
        Ok(ClientInference { logits, traces: tr, range_violation: violation })
    }

    /// Ends the session (server and dealer return).
    pub fn close(self) -> Result<()> {
        send_batch(self.server, 0)?;
        match self.source {
            ClientSource::Dealer(d) => send_batch(d, 0),
            #[cfg(feature = "two-party")]
            ClientSource::TwoParty(_) => Ok(()),
        }
    }
}

/// Transport of [`run_local`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// In-memory channels.
    Mem,
    /// TCP on loopback (127.0.0.1, ephemeral ports).
    Tcp,
    /// TLS 1.3 over TCP on loopback, with fresh in-memory certificates: what a deployment's
    /// links cost (handshakes are part of the session setup, records of every message).
    Tls,
}

/// Options of [`run_local`].
#[derive(Debug, Clone, Copy)]
pub struct LocalOpts {
    /// Channels between the three roles.
    pub transport: Transport,
    /// Compare every layer with the fixed-point twin (keeps all layer outputs: more memory).
    pub check: bool,
}

impl Default for LocalOpts {
    fn default() -> Self {
        LocalOpts { transport: Transport::Mem, check: false }
    }
}

/// Result of one batch of [`run_local`].
#[derive(Debug, Clone)]
pub struct LocalInference {
    /// Logits `[batch, classes]` as the client decoded them.
    pub logits: Vec<f32>,
    /// Merged report of the three roles.
    pub report: InferenceReport,
    /// A failed range-guard check (warn mode only; see [`ClientInference::range_violation`]).
    pub range_violation: Option<RangeViolation>,
}

/// The six channel ends of a three-role session.
pub struct Links {
    /// Server's end towards the client.
    pub server_client: Box<dyn Channel>,
    /// Server's end towards the dealer.
    pub server_dealer: Box<dyn Channel>,
    /// Client's end towards the server.
    pub client_server: Box<dyn Channel>,
    /// Client's end towards the dealer.
    pub client_dealer: Box<dyn Channel>,
    /// Dealer's end towards the server.
    pub dealer_server: Box<dyn Channel>,
    /// Dealer's end towards the client.
    pub dealer_client: Box<dyn Channel>,
}

impl Links {
    /// In-memory links.
    pub fn mem() -> Links {
        let (sc, cs) = mem_pair();
        let (sd, ds) = mem_pair();
        let (cd, dc) = mem_pair();
        Links {
            server_client: Box::new(sc),
            server_dealer: Box::new(sd),
            client_server: Box::new(cs),
            client_dealer: Box::new(cd),
            dealer_server: Box::new(ds),
            dealer_client: Box::new(dc),
        }
    }
}

/// Runs server, client and dealer in this process (server and dealer on their own threads) for
/// each `(input, batch)` of `inputs`, one session. `plan` is the full model.
///
/// Errors: as the three roles; the first error of any role is returned; `InvalidArgument` before
/// anything runs when the correlated randomness would not fit in memory
/// ([`super::bench::check_memory_budget`]).
pub fn run_local(
    plan: &Plan,
    inputs: &[(Vec<f32>, usize)],
    opts: LocalOpts,
) -> Result<(SetupReport, Vec<LocalInference>)> {
    run_local_with_link(plan, inputs, opts, LinkModel::none())
}

/// [`run_local`] with the server-client link emulated by `link` (bandwidth and RTT applied to
/// every message, see [`crate::net::LinkModel`]; presets `lan`, `wan`). The dealer's links are not
/// emulated (offline phase).
pub fn run_local_with_link(
    plan: &Plan,
    inputs: &[(Vec<f32>, usize)],
    opts: LocalOpts,
    link: LinkModel,
) -> Result<(SetupReport, Vec<LocalInference>)> {
    run_local_guarded(plan, None, GuardPolicy::default(), inputs, opts, link)
}

/// [`run_local_with_link`] with the client's range guard: the server sends `guard` (calibrated
/// input/logit maxima, see [`super::guard`]) and the client applies `policy`. In refuse mode the
/// first violation ends the run with `RangeGuard`; in warn mode it is reported in
/// [`LocalInference::range_violation`].
/// Errors: as [`run_local`]; `RangeGuard`; `InvalidArgument` for a margin < 1.
pub fn run_local_guarded(
    plan: &Plan,
    guard: Option<GuardBounds>,
    policy: GuardPolicy,
    inputs: &[(Vec<f32>, usize)],
    opts: LocalOpts,
    link: LinkModel,
) -> Result<(SetupReport, Vec<LocalInference>)> {
    run_local_mode(plan, guard, policy, inputs, opts, link, false)
}

/// [`run_local_guarded`] without a dealer: server and client produce the correlated randomness
/// alone ([`serve_session_two_party`], [`ClientSession::connect_two_party`]); only the
/// server-client link exists (emulated by `link`, so the preprocessing traffic pays it too).
/// The reports' `bytes_two_party` / `preprocessing_bytes` count the preprocessing traffic.
/// Errors: as [`run_local`]; `Graph` for a plan with polynomial, ReLU or max-pool layers.
#[cfg(feature = "two-party")]
pub fn run_local_two_party(
    plan: &Plan,
    guard: Option<GuardBounds>,
    policy: GuardPolicy,
    inputs: &[(Vec<f32>, usize)],
    opts: LocalOpts,
    link: LinkModel,
) -> Result<(SetupReport, Vec<LocalInference>)> {
    check_two_party_supported(plan)?;
    run_local_mode(plan, guard, policy, inputs, opts, link, true)
}

fn run_local_mode(
    plan: &Plan,
    guard: Option<GuardBounds>,
    policy: GuardPolicy,
    inputs: &[(Vec<f32>, usize)],
    opts: LocalOpts,
    link: LinkModel,
    two_party: bool,
) -> Result<(SetupReport, Vec<LocalInference>)> {
    check_supported(plan)?;
    for (x, b) in inputs {
        check_input(plan, x, *b)?;
    }
    super::bench::check_memory_budget(plan, inputs.iter().map(|(_, b)| *b).max().unwrap_or(1))?;
    let enc = EncodedPlan::new(plan)?;
    let links = match (opts.transport, two_party) {
        (Transport::Mem, _) => Links::mem(),
        (Transport::Tcp, false) => super::tcp_links(false)?,
        (Transport::Tls, false) => super::tcp_links(true)?,
        // No dealer: only the server-client connection is opened (the dealer ends stay unused
        // in-memory placeholders).
        (Transport::Tcp, true) => super::tcp_server_client(false)?,
        (Transport::Tls, true) => super::tcp_server_client(true)?,
    };
    let mut links = links;
    if !link.is_none() {
        let (a, b) = emulated_pair(links.server_client, links.client_server, link);
        links.server_client = Box::new(a);
        links.client_server = Box::new(b);
    }
    let Links {
        mut server_client,
        mut server_dealer,
        mut client_server,
        mut client_dealer,
        mut dealer_server,
        mut dealer_client,
    } = links;
    let record = opts.check;
    std::thread::scope(|s| {
        let enc_ref = &enc;
        let limits = SessionLimits::default();
        let server = s.spawn(move || {
            if two_party {
                #[cfg(feature = "two-party")]
                return serve_session_two_party(
                    plan,
                    enc_ref,
                    guard,
                    &limits,
                    &mut *server_client,
                    record,
                );
            }
            serve_session_limited(
                plan,
                enc_ref,
                guard,
                &limits,
                &mut *server_client,
                &mut *server_dealer,
                record,
            )
        });
        let dealer = if two_party {
            None
        } else {
            Some(s.spawn(move || deal_session(&mut *dealer_server, &mut *dealer_client)))
        };
        let client_result = (|| -> Result<(SetupReport, Vec<ClientInference>)> {
            let mut sess = if two_party {
                #[cfg(feature = "two-party")]
                {
                    ClientSession::connect_two_party(&mut *client_server)?
                }
                #[cfg(not(feature = "two-party"))]
                unreachable!("two-party runs need the two-party feature")
            } else {
                ClientSession::connect(&mut *client_server, &mut *client_dealer)?
            };
            sess.set_guard_policy(policy)?;
            let mut outs = Vec::new();
            for (x, b) in inputs {
                outs.push(sess.infer(x, *b, record)?);
            }
            let setup = sess.setup.clone();
            sess.close()?;
            Ok((setup, outs))
        })();
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Vec<PartyTraces>>>,
                    who: &str|
         -> Result<Vec<PartyTraces>> {
            h.join().map_err(|_| Error::Protocol(format!("{who} thread panicked")))?
        };
        // Drop nothing early: if the client failed, its channels are dropped when this closure
        // returns, which unblocks the other roles with PeerDisconnected.
        let (setup, client_outs) = match client_result {
            Ok(v) => v,
            Err(e) => {
                drop(client_server);
                drop(client_dealer);
                let _ = server.join();
                if let Some(d) = dealer {
                    let _ = d.join();
                }
                return Err(e);
            }
        };
        let server_tr = join(server, "server")?;
        let dealer_tr = match dealer {
            Some(d) => join(d, "dealer")?,
            None => vec![PartyTraces::default(); server_tr.len()],
        };
        let mut results = Vec::new();
        for (k, ci) in client_outs.into_iter().enumerate() {
            let batch = inputs[k].1;
            let (st, dt) = (&server_tr[k], &dealer_tr[k]);
            let mut layers = merge(
                plan,
                batch,
                &st.offline,
                &ci.traces.offline,
                &dt.offline,
                &st.online,
                &ci.traces.online,
            );
            let mut max_err = None;
            if record {
                let errs = check_against_twin(
                    plan,
                    &enc,
                    &inputs[k].0,
                    batch,
                    &st.recorded,
                    &ci.traces.recorded,
                )?;
                for (l, e) in layers.iter_mut().zip(&errs) {
                    l.max_abs_error = *e;
                }
                max_err = errs.last().copied().flatten();
            }
            layers.push(LayerReport {
                name: "output".into(),
                kind: "Reveal".into(),
                out_shape: vec![plan.num_classes()],
                bytes_server_to_client: st.output_bytes,
                rounds: 1,
                ..Default::default()
            });
            let mut report = InferenceReport {
                batch,
                layers,
                online_ms: ci.traces.online_ms,
                offline_ms: st.offline_ms.max(ci.traces.offline_ms).max(dt.offline_ms),
                max_abs_error: max_err,
                ..Default::default()
            };
            report.total();
            results.push(LocalInference {
                logits: ci.logits,
                report,
                range_violation: ci.range_violation,
            });
        }
        Ok((setup, results))
    })
}

/// Per layer: max |decode(s0 + s1) - decode(twin)|.
fn check_against_twin(
    plan: &Plan,
    enc: &EncodedPlan,
    input: &[f32],
    batch: usize,
    s0: &[Option<RingTensor>],
    s1: &[Option<RingTensor>],
) -> Result<Vec<Option<f64>>> {
    let fp = FixedPoint { frac_bits: plan.frac_bits };
    let x = fp.encode_slice(input)?;
    let mut twin = FixedBackend::new(enc, &x, plan.frac_bits, true);
    walk(plan, &mut twin, batch)?;
    Ok((0..plan.layers.len())
        .map(|i| {
            let (a, b, t) =
                (s0.get(i)?.as_ref()?, s1.get(i)?.as_ref()?, twin.recorded.get(i)?.as_ref()?);
            Some(
                a.data
                    .iter()
                    .zip(&b.data)
                    .zip(&t.data)
                    .map(|((x, y), z)| (fp.decode(x.wrapping_add(*y)) - fp.decode(*z)).abs())
                    .fold(0.0, f64::max),
            )
        })
        .collect())
}
