//! [`MemNetwork`]: an in-process [`Transport`] for tests and benchmarks, with per-link drop
//! probability and delay, partitions, and a seeded RNG (the same seed gives the same drop and
//! delay choices for the same sequence of sends).
//!
//! Messages travel as protobuf-2 bytes and enter the receiver through [`Mailbox::step`], the
//! same decoding path as the gRPC transport. One delivery thread releases each message at its
//! due time; partitions are checked both when a message is sent and when it is delivered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protobuf::Message as _;

use super::{Mailbox, RaftMessage, Transport};

/// How one direction of a link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability in `[0, 1]` that a message is lost.
    pub drop: f64,
    /// Each message is delayed uniformly in `[delay_min, delay_max]` (reordering happens).
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig { drop: 0.0, delay_min: Duration::ZERO, delay_max: Duration::ZERO }
    }
}

/// Counters of what happened to messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub delivered: u64,
    pub dropped: u64,
    pub cut: u64,
    /// Snapshot messages (`MsgSnapshot`) handed to the network, delivered or not.
    pub snapshots: u64,
}

struct InFlight {
    due: Instant,
    seq: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

struct Net {
    mailboxes: HashMap<u64, Mailbox>,
    default_link: LinkConfig,
    links: HashMap<(u64, u64), LinkConfig>,
    /// Directed pairs that cannot talk.
    cut: HashSet<(u64, u64)>,
    rng: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    stats: NetStats,
    stop: bool,
}

impl Net {
    /// splitmix64
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Shared {
    net: Mutex<Net>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An in-memory network between raft nodes of one process. Share it as `Arc<MemNetwork>` (it is
/// the [`Transport`] of every node), then [`attach`](MemNetwork::attach) each node's mailbox.
pub struct MemNetwork {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl MemNetwork {
    pub fn new(seed: u64) -> Arc<MemNetwork> {
        let shared = Arc::new(Shared {
            net: Mutex::new(Net {
                mailboxes: HashMap::new(),
                default_link: LinkConfig::default(),
                links: HashMap::new(),
                cut: HashSet::new(),
                rng: seed,
                seq: 0,
                queue: BinaryHeap::new(),
                stats: NetStats::default(),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mem-network".into())
            .spawn(move || deliver_loop(&worker))
            .expect("spawn the in-memory network thread");
        Arc::new(MemNetwork { shared, thread: Some(thread) })
    }

    /// Route messages for `id` to `mailbox` (replaces an earlier one: a restarted node).
    pub fn attach(&self, id: u64, mailbox: Mailbox) {
        self.shared.lock().mailboxes.insert(id, mailbox);
    }

    /// Stop delivering to `id` (messages for it are dropped).
    pub fn detach(&self, id: u64) {
        self.shared.lock().mailboxes.remove(&id);
    }

    /// The behaviour of every link without its own config.
    pub fn set_default_link(&self, link: LinkConfig) {
        self.shared.lock().default_link = link;
    }

    /// The behaviour of the link `from → to`.
    pub fn set_link(&self, from: u64, to: u64, link: LinkConfig) {
        self.shared.lock().links.insert((from, to), link);
    }

    /// Split the nodes into groups that cannot reach each other (both directions). Nodes not
    /// listed are unaffected.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut net = self.shared.lock();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        net.cut.insert((x, y));
                        net.cut.insert((y, x));
                    }
                }
            }
        }
    }

    /// Remove every partition.
    pub fn heal(&self) {
        self.shared.lock().cut.clear();
    }

    pub fn stats(&self) -> NetStats {
        self.shared.lock().stats
    }
}

impl Transport for MemNetwork {
    fn send(&self, to: u64, message: RaftMessage) {
        let from = message.from;
        let is_snapshot = message.get_msg_type() == ::raft::eraftpb::MessageType::MsgSnapshot;
        let bytes = match message.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(from, to, error = %e, "cannot encode raft message");
                return;
            }
        };
        let mut net = self.shared.lock();
        if is_snapshot {
            net.stats.snapshots += 1;
        }
        if net.cut.contains(&(from, to)) {
            net.stats.cut += 1;
            return;
        }
        let link = net.links.get(&(from, to)).copied().unwrap_or(net.default_link);
        if link.drop > 0.0 && net.unit() < link.drop {
            net.stats.dropped += 1;
            return;
        }
        let spread = link.delay_max.saturating_sub(link.delay_min);
        let delay = link.delay_min + spread.mul_f64(net.unit());
        net.seq += 1;
        let seq = net.seq;
        net.queue.push(Reverse(InFlight { due: Instant::now() + delay, seq, from, to, bytes }));
        self.shared.wake.notify_one();
    }
}

fn deliver_loop(shared: &Shared) {
    let mut net = shared.lock();
    loop {
        if net.stop {
            return;
        }
        let now = Instant::now();
        let due = net.queue.peek().map(|Reverse(m)| m.due);
        match due {
            None => net = shared.wake.wait(net).unwrap_or_else(|p| p.into_inner()),
            Some(due) if due > now => {
                net = shared.wake.wait_timeout(net, due - now).unwrap_or_else(|p| p.into_inner()).0
            }
            Some(_) => {
                let Reverse(m) = net.queue.pop().expect("peeked");
                if net.cut.contains(&(m.from, m.to)) {
                    net.stats.cut += 1;
                    continue;
                }
                let Some(mailbox) = net.mailboxes.get(&m.to).cloned() else {
                    net.stats.dropped += 1;
                    continue;
                };
                net.stats.delivered += 1;
                drop(net);
                // a stopped node refuses it: like a message to a dead host
                let _ = mailbox.step(&m.bytes);
                net = shared.lock();
            }
        }
    }
}

impl Drop for MemNetwork {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::super::node::Input;
    use super::*;

    fn message(from: u64, to: u64, index: u64) -> RaftMessage {
        RaftMessage { from, to, index, ..Default::default() }
    }

    /// Collect the indexes of the messages delivered to a mailbox within `wait`.
    fn received(rx: &mpsc::Receiver<Input>, wait: Duration) -> Vec<u64> {
        let mut got = Vec::new();
        let deadline = Instant::now() + wait;
        while let Ok(input) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Input::Step(m) = input {
                got.push(m.index);
            }
        }
        got
    }

    #[test]
    fn drops_follow_the_seeded_probability_and_partitions_cut_links() {
        let net = MemNetwork::new(42);
        let (tx, rx) = mpsc::sync_channel(10_000);
        net.attach(2, Mailbox { inbox: tx });
        net.set_link(1, 2, LinkConfig { drop: 0.3, ..Default::default() });
        for i in 0..1000 {
            net.send(2, message(1, 2, i));
        }
        let got = received(&rx, Duration::from_millis(300));
        let stats = net.stats();
        assert_eq!(got.len() as u64, stats.delivered);
        assert_eq!(stats.delivered + stats.dropped, 1000);
        assert!((600..=800).contains(&got.len()), "30% drops, got {} of 1000 through", got.len());
        assert!(got.windows(2).all(|w| w[0] < w[1]), "no delay: order kept");

        // another link keeps the default (lossless) behaviour, until a partition cuts it
        net.send(2, message(3, 2, 7));
        assert_eq!(received(&rx, Duration::from_millis(100)), vec![7]);
        net.partition(&[&[3], &[1, 2]]);
        net.send(2, message(3, 2, 8));
        assert!(received(&rx, Duration::from_millis(100)).is_empty());
        assert_eq!(net.stats().cut, 1);
        net.heal();
        net.send(2, message(3, 2, 9));
        assert_eq!(received(&rx, Duration::from_millis(100)), vec![9]);

        // a detached node receives nothing
        net.detach(2);
        net.send(2, message(3, 2, 10));
        assert!(received(&rx, Duration::from_millis(100)).is_empty());
    }
}
