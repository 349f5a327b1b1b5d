//! Link emulation for benchmarks (design.md §6): bandwidth and latency of a LAN or WAN applied to
//! channels running on one machine. OWNER: net helper.
//!
//! [`LinkModel`] describes a link (bandwidth in bit/s, round-trip time in ms), with the presets of
//! Cheetah's evaluation so that numbers compare: `lan` = 3 Gbit/s, 0.3 ms RTT; `wan` = 400 Mbit/s,
//! 40 ms RTT. [`emulated_pair`] wraps the two endpoints of an existing channel pair so that every
//! message becomes available to the receiver at
//!
//! ```text
//! delivery = max(send time, link free time) + bytes * 8 / bandwidth + rtt / 2
//! ```
//!
//! with one serialization queue per direction (`link free time` = when the previous message in
//! the same direction finished going onto the wire). The receiver sleeps until the delivery time;
//! computation that overlaps a transfer hides it, as on a real link. Only payload bytes are
//! charged (no framing, TCP/IP headers or slow start), so emulated times are a slight lower bound
//! of a real link's.
//!
//! **In-process only.** Both endpoints share the per-direction clocks (`Arc<Mutex<..>>`), so
//! both must live in the same process (threads of one `polypi infer` or one benchmark, over
//! [`super::mem_pair`] or TCP loopback). Across machines, clocks are not synchronised; there
//! use a real link or OS-level shaping (`tc netem`). Every message of the pair must go through
//! the wrappers (a message that bypasses them is delivered without delay).

use super::mem::{mem_pair, MemChannel};
use super::{Channel, ChannelStats};
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A network link: bandwidth and round-trip latency. `none` (infinite bandwidth, 0 RTT) means no
/// emulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// Bandwidth of each direction, in bit/s (`f64::INFINITY` for no limit).
    pub bandwidth_bits_per_s: f64,
    /// Round-trip time, in ms; each message is charged half of it.
    pub rtt_ms: f64,
}

fn secs(s: f64) -> Duration {
    if s <= 0.0 || s.is_nan() {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    }
}

impl LinkModel {
    /// LAN preset: 3 Gbit/s, 0.3 ms RTT.
    pub fn lan() -> Self {
        LinkModel { bandwidth_bits_per_s: 3e9, rtt_ms: 0.3 }
    }

    /// WAN preset: 400 Mbit/s, 40 ms RTT.
    pub fn wan() -> Self {
        LinkModel { bandwidth_bits_per_s: 400e6, rtt_ms: 40.0 }
    }

    /// No emulation: infinite bandwidth, 0 ms RTT.
    pub fn none() -> Self {
        LinkModel { bandwidth_bits_per_s: f64::INFINITY, rtt_ms: 0.0 }
    }

    /// A custom link of `mbit_per_s` Mbit/s (10^6 bit/s) and `rtt_ms` ms RTT.
    /// Errors: `InvalidArgument` unless the bandwidth is positive and the RTT finite and >= 0.
    pub fn new(mbit_per_s: f64, rtt_ms: f64) -> Result<Self> {
        if mbit_per_s.is_nan() || mbit_per_s <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "link bandwidth must be positive, got {mbit_per_s} Mbit/s"
            )));
        }
        if !rtt_ms.is_finite() || rtt_ms < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "link RTT must be a finite number of ms >= 0, got {rtt_ms} ms"
            )));
        }
        Ok(LinkModel { bandwidth_bits_per_s: mbit_per_s * 1e6, rtt_ms })
    }

    /// Parses `lan`, `wan`, `none`, or `<Mbit/s>mbit:<RTT>ms` (e.g. `100mbit:10ms`,
    /// `0.5mbit:250ms`; `<Gbit/s>gbit` is accepted too). Case and surrounding spaces are ignored.
    /// Errors: `InvalidArgument` naming the text and the accepted forms.
    pub fn parse(text: &str) -> Result<Self> {
        let s = text.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "invalid link '{text}': {why}; expected lan, wan, none or <Mbit/s>mbit:<RTT>ms \
                 such as 100mbit:10ms"
            ))
        };
        match s.as_str() {
            "lan" => return Ok(Self::lan()),
            "wan" => return Ok(Self::wan()),
            "none" => return Ok(Self::none()),
            _ => {}
        }
        let (bw, rtt) = s.split_once(':').ok_or_else(|| bad("no ':' between bandwidth and RTT"))?;
        let (bw, scale) = if let Some(x) = bw.trim().strip_suffix("gbit") {
            (x, 1000.0)
        } else if let Some(x) = bw.trim().strip_suffix("mbit") {
            (x, 1.0)
        } else {
            return Err(bad("the bandwidth must end in 'mbit' (or 'gbit')"));
        };
        let rtt = rtt.trim().strip_suffix("ms").ok_or_else(|| bad("the RTT must end in 'ms'"))?;
        let bw: f64 = bw.trim().parse().map_err(|_| bad("the bandwidth is not a number"))?;
        let rtt: f64 = rtt.trim().parse().map_err(|_| bad("the RTT is not a number"))?;
        if !bw.is_finite() || bw <= 0.0 {
            return Err(bad("the bandwidth must be positive"));
        }
        if !rtt.is_finite() || rtt < 0.0 {
            return Err(bad("the RTT must be >= 0"));
        }
        Self::new(bw * scale, rtt)
    }

    /// True for the `none` model (no delay at all).
    pub fn is_none(&self) -> bool {
        self.bandwidth_bits_per_s.is_infinite() && self.rtt_ms == 0.0
    }

    /// Time to put `bytes` bytes onto the wire: `bytes * 8 / bandwidth`.
    pub fn transfer_time(&self, bytes: u64) -> Duration {
        secs(bytes as f64 * 8.0 / self.bandwidth_bits_per_s)
    }

    /// One-way latency: half the RTT.
    pub fn one_way_latency(&self) -> Duration {
        secs(self.rtt_ms / 2000.0)
    }

    /// Delivery time of one message of `bytes` bytes on an idle link:
    /// `transfer_time(bytes) + one_way_latency()`.
    pub fn message_time(&self, bytes: u64) -> Duration {
        self.transfer_time(bytes) + self.one_way_latency()
    }

    /// Human-readable form for reports, e.g. `400 Mbit/s, 40 ms RTT` or `no emulation`.
    pub fn describe(&self) -> String {
        if self.is_none() {
            "no emulation".into()
        } else {
            format!("{} Mbit/s, {} ms RTT", self.bandwidth_bits_per_s / 1e6, self.rtt_ms)
        }
    }
}

impl FromStr for LinkModel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        LinkModel::parse(s)
    }
}

/// The parseable form: `none` or `<Mbit/s>mbit:<RTT>ms` (`lan` prints as `3000mbit:0.3ms`).
impl fmt::Display for LinkModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            write!(f, "none")
        } else {
            write!(f, "{}mbit:{}ms", self.bandwidth_bits_per_s / 1e6, self.rtt_ms)
        }
    }
}

/// State of one direction of an emulated link.
#[derive(Debug)]
struct Direction {
    /// When the wire of this direction is free again.
    link_free_at: Instant,
    /// Delivery times of the messages in flight, in send order.
    deliveries: VecDeque<Instant>,
}

fn lock(d: &Mutex<Direction>) -> MutexGuard<'_, Direction> {
    // A panic elsewhere cannot leave `Direction` inconsistent; keep going.
    d.lock().unwrap_or_else(|p| p.into_inner())
}

/// One endpoint of an emulated link, made by [`emulated_pair`]: a [`Channel`] that delivers the
/// inner channel's messages no earlier than the [`LinkModel`] allows (see the
/// [module docs](self)). Stats are the inner channel's. In-process only.
pub struct EmulatedChannel<C: Channel> {
    inner: C,
    model: LinkModel,
    outgoing: Arc<Mutex<Direction>>,
    incoming: Arc<Mutex<Direction>>,
}

/// Wraps the two endpoints `a` and `b` of one connected channel pair (e.g. from
/// [`super::mem_pair`] or [`super::tcp_loopback_pair`]) into emulated endpoints sharing the
/// link `model`. Both must be used from the same process.
pub fn emulated_pair<A: Channel, B: Channel>(
    a: A,
    b: B,
    model: LinkModel,
) -> (EmulatedChannel<A>, EmulatedChannel<B>) {
    let now = Instant::now();
    let dir = || Arc::new(Mutex::new(Direction { link_free_at: now, deliveries: VecDeque::new() }));
    let (a_to_b, b_to_a) = (dir(), dir());
    let ea =
        EmulatedChannel { inner: a, model, outgoing: a_to_b.clone(), incoming: b_to_a.clone() };
    let eb = EmulatedChannel { inner: b, model, outgoing: b_to_a, incoming: a_to_b };
    (ea, eb)
}

/// [`emulated_pair`] over a fresh [`mem_pair`].
pub fn emulated_mem_pair(
    model: LinkModel,
) -> (EmulatedChannel<MemChannel>, EmulatedChannel<MemChannel>) {
    let (a, b) = mem_pair();
    emulated_pair(a, b, model)
}

impl<C: Channel> EmulatedChannel<C> {
    /// The link model.
    pub fn model(&self) -> LinkModel {
        self.model
    }

    /// The wrapped channel.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The wrapped channel, mutably (messages sent through it directly are not delayed).
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the channel.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: Channel> Channel for EmulatedChannel<C> {
    /// Records the message's delivery time on the shared link clock, then sends it through the
    /// inner channel. Errors: the inner channel's.
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        if !self.model.is_none() {
            let now = Instant::now();
            let mut d = lock(&self.outgoing);
            let start = d.link_free_at.max(now);
            let on_wire = start + self.model.transfer_time(msg.len() as u64);
            d.link_free_at = on_wire;
            d.deliveries.push_back(on_wire + self.model.one_way_latency());
        }
        self.inner.send(msg)
    }

    /// Receives from the inner channel, then sleeps until the message's emulated delivery time.
    /// Errors: the inner channel's.
    fn recv(&mut self) -> Result<Vec<u8>> {
        self.recv_max(usize::MAX)
    }

    /// [`Channel::recv_max`] of the inner channel, then the emulated delay.
    fn recv_max(&mut self, max_bytes: usize) -> Result<Vec<u8>> {
        let m = self.inner.recv_max(max_bytes)?;
        if !self.model.is_none() {
            let due = lock(&self.incoming).deliveries.pop_front();
            if let Some(due) = due {
                loop {
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep(due - now);
                }
            }
        }
        Ok(m)
    }

    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }

    fn stats(&self) -> ChannelStats {
        self.inner.stats()
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.inner.set_deadline(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_link_parse_presets_and_custom() {
        assert_eq!(LinkModel::parse("lan").unwrap(), LinkModel::lan());
        assert_eq!(LinkModel::parse(" WAN ").unwrap(), LinkModel::wan());
        assert!(LinkModel::parse("none").unwrap().is_none());
        let m: LinkModel = "100mbit:10ms".parse().unwrap();
        assert_eq!(m, LinkModel { bandwidth_bits_per_s: 100e6, rtt_ms: 10.0 });
        let g = LinkModel::parse("1gbit:0.5ms").unwrap();
        assert_eq!(g.bandwidth_bits_per_s, 1e9);
        assert_eq!(LinkModel::parse("100mbit:0ms").unwrap().rtt_ms, 0.0);
        // Display round-trips.
        for m in [LinkModel::lan(), LinkModel::wan(), LinkModel::none(), m] {
            assert_eq!(LinkModel::parse(&m.to_string()).unwrap(), m);
        }
        assert_eq!(LinkModel::wan().describe(), "400 Mbit/s, 40 ms RTT");
    }

    #[test]
    fn net_link_parse_errors_are_clear() {
        for bad in [
            "",
            "lan2",
            "100mbit",
            "100:10ms",
            "100mbit:10",
            "xmbit:10ms",
            "100mbit:yms",
            "0mbit:10ms",
            "-5mbit:10ms",
            "100mbit:-1ms",
            "infmbit:1ms",
            "100mbit:nanms",
        ] {
            match LinkModel::parse(bad) {
                Err(Error::InvalidArgument(msg)) => {
                    assert!(msg.contains(&format!("'{bad}'")), "{msg}");
                    assert!(msg.contains("100mbit:10ms"), "{msg}");
                }
                other => panic!("{bad:?} should not parse, got {other:?}"),
            }
        }
        assert!(matches!(LinkModel::new(0.0, 1.0), Err(Error::InvalidArgument(_))));
        assert!(matches!(LinkModel::new(1.0, f64::NAN), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn net_link_times() {
        let w = LinkModel::wan();
        assert_eq!(w.transfer_time(50_000_000), Duration::from_secs(1));
        assert_eq!(w.one_way_latency(), Duration::from_millis(20));
        assert_eq!(w.message_time(0), Duration::from_millis(20));
        assert_eq!(LinkModel::none().message_time(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn net_link_wan_one_message_lower_bound() {
        let model = LinkModel::wan();
        let (mut a, mut b) = emulated_mem_pair(model);
        let n = 1_000_000; // 20 ms on the wire + 20 ms one way
        let t0 = Instant::now();
        a.send(&vec![3u8; n]).unwrap();
        let m = b.recv().unwrap();
        let took = t0.elapsed();
        assert_eq!(m.len(), n);
        assert!(took >= model.message_time(n as u64), "took {took:?}");
        assert_eq!(a.stats().bytes_sent, n as u64);
        assert_eq!(b.stats().bytes_received, n as u64);
    }

    #[test]
    fn net_link_serialization_queue_and_round_trips() {
        let model = LinkModel::new(100.0, 10.0).unwrap();
        let (mut a, mut b) = emulated_mem_pair(model);
        // Two back-to-back messages share the wire: the second waits for the first.
        let n = 125_000u64; // 10 ms each at 100 Mbit/s
        let t0 = Instant::now();
        a.send(&vec![0u8; n as usize]).unwrap();
        a.send(&vec![0u8; n as usize]).unwrap();
        b.recv().unwrap();
        b.recv().unwrap();
        assert!(t0.elapsed() >= model.transfer_time(2 * n) + model.one_way_latency());
        // Ping-pong: each exchange costs at least one RTT.
        let t1 = Instant::now();
        let h = std::thread::spawn(move || {
            for _ in 0..3 {
                let m = b.recv().unwrap();
                b.send(&m).unwrap();
            }
            b
        });
        for _ in 0..3 {
            a.send(b"x").unwrap();
            a.recv().unwrap();
        }
        let b = h.join().unwrap();
        assert!(t1.elapsed() >= Duration::from_millis(30), "{:?}", t1.elapsed());
        // a: [send send send] recv [send] recv [send] recv
        assert_eq!(a.stats().send_phases, 3);
        assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
        assert_eq!(b.stats().bytes_sent, a.stats().bytes_received);
    }

    #[test]
    fn net_link_none_is_transparent() {
        let (mut a, mut b) = emulated_mem_pair(LinkModel::none());
        a.send(b"abc").unwrap();
        assert_eq!(b.recv().unwrap(), b"abc");
        assert_eq!(b.into_inner().stats().bytes_received, 3);
    }
}
