//! The CPU backend: ring all-reduce over TCP (reduce-scatter, then all-gather), as Baidu's and
//! Gloo's rings do it, with each rank's buffer split into `n` chunks. In each ring step the calling
//! thread alone writes the chunk it sends and reads the chunk it receives on non-blocking sockets,
//! reducing received bytes as they arrive (see [`link`]).
//!
//! # Connection protocol
//! Rank `r` of `n` listens on `peers[r]`, connects to rank `(r+1) % n` (retrying until the
//! deadline: the peer may not listen yet) and accepts one connection from rank `(r-1) % n`:
//! 1. connect to next, send `HELLO = [magic u32, version u32, rank u32, world u32, generation u64,
//!    nonce 16 B]` (little-endian, 40 bytes);
//! 2. accept from prev, read its HELLO, check that its rank is `r-1`, its world size and
//!    generation equal ours, and answer with our own HELLO and an HMAC of both under the
//!    generation's ring secret;
//! 3. read next's answer, check it the same way and its HMAC, and send our own HMAC;
//! 4. read prev's HMAC.
//!
//! Nobody waits for an answer before accepting, so no order of start-up deadlocks. A rank from an
//! older generation (a group being restarted), or a process without the generation's secret, is
//! refused ([`CollectiveError::Handshake`]) before any tensor moves; see `ring/handshake.rs`.
//!
//! # Call protocol
//! Every call sends a 24-byte header `[op u32, 0 u32, seq u64, len u64]` before its data, and
//! checks the header from prev against its own: ranks that disagree on the operation, the call
//! number or the length fail with [`CollectiveError::SizeMismatch`] instead of reducing garbage.
//! Data is raw little-endian `f32`. Deadlines are `poll(2)` timeouts set from the time left.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Collective, CollectiveError, ReduceOp, Result, DEFAULT_TIMEOUT};

mod handshake;
mod link;

use handshake::{accept_answered, accept_verified, confirm, connect_until, offer, resolve, tune};
pub use handshake::{secret_from_env, RING_SECRET_ENV};
use link::{Layout, Recv};

const MAGIC: u32 = 0x4359_5243; // "CYRC"
/// 2: the HELLO carries a nonce and both sides prove the ring secret (HMAC).
const VERSION: u32 = 2;
/// Socket send and receive buffers asked of the kernel (capped by `net.core.{r,w}mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Where a ring rank sits and how long it waits.
#[derive(Debug, Clone)]
pub struct RingConfig {
    pub rank: usize,
    pub world_size: usize,
    /// `host:port` of every rank, in rank order; this rank listens on `peers[rank]`.
    pub peers: Vec<String>,
    /// The rendezvous generation: ranks of different generations refuse each other.
    pub generation: u64,
    /// Deadline of connection set-up and of every call.
    pub timeout: Duration,
    /// The generation's ring secret from the rendezvous, which peers prove to each other before
    /// any tensor moves; `None`: an unauthenticated ring (static launches by hand, tests).
    pub secret: Option<Vec<u8>>,
}

impl RingConfig {
    pub fn new(rank: usize, peers: Vec<String>) -> RingConfig {
        RingConfig {
            rank,
            world_size: peers.len(),
            peers,
            generation: 0,
            timeout: DEFAULT_TIMEOUT,
            secret: None,
        }
    }
}

/// One rank of a TCP ring; see the module docs for the protocols.
pub struct Ring {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Write side to rank+1 (None for a world of one).
    next: Option<TcpStream>,
    /// Read side from rank-1.
    prev: Option<TcpStream>,
    /// Clones of both streams, to shut them down from `abort`.
    kill: Vec<TcpStream>,
    aborted: Arc<AtomicBool>,
    /// Set by the first error: the ring is then unusable.
    broken: bool,
    seq: u64,
    /// What received bytes are reduced through.
    scratch: Vec<f32>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CollectiveError {
    let what = what.into();
    move |source| CollectiveError::Io { what, source }
}

impl Ring {
    /// Bind `peers[rank]` and join the ring.
    pub fn connect(cfg: RingConfig) -> Result<Ring> {
        let addr = cfg.peers.get(cfg.rank).cloned().unwrap_or_default();
        let listener = TcpListener::bind(resolve(&addr)?).map_err(io(format!("binding {addr}")))?;
        Ring::connect_with(listener, cfg)
    }

    /// Join the ring listening on `listener` (bound by the caller, e.g. on port 0 in tests).
    pub fn connect_with(listener: TcpListener, cfg: RingConfig) -> Result<Ring> {
        let (rank, world) = (cfg.rank, cfg.world_size);
        if world == 0 || rank >= world || cfg.peers.len() != world {
            return Err(CollectiveError::Config {
                message: format!("rank {rank} of world size {world} with {} peer addresses", cfg.peers.len()),
            });
        }
        let mut ring = Ring {
            rank,
            world,
            timeout: cfg.timeout,
            next: None,
            prev: None,
            kill: vec![],
            aborted: Arc::new(AtomicBool::new(false)),
            broken: false,
            seq: 0,
            scratch: Vec::new(),
        };
        if world == 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + cfg.timeout;
        let (next_rank, prev_rank) = ((rank + 1) % world, (rank + world - 1) % world);
        let mut next = connect_until(&cfg, next_rank, deadline)?;
        tune(&next)?;
        next.set_read_timeout(Some(cfg.timeout)).map_err(io("socket timeout"))?;
        let ours = offer(&mut next, &cfg)?;
        let mut refused = vec![];
        let answered = accept_answered(&listener, &cfg, prev_rank, deadline, &mut refused)?;
        confirm(&mut next, &cfg, next_rank, &ours)?;
        let prev = accept_verified(&listener, &cfg, prev_rank, deadline, answered, &mut refused)?;
        ring.kill = vec![next.try_clone().map_err(io("clone"))?, prev.try_clone().map_err(io("clone"))?];
        // from here on deadlines are the data plane's poll timeouts
        next.set_nonblocking(true).map_err(io("non-blocking socket"))?;
        prev.set_nonblocking(true).map_err(io("non-blocking socket"))?;
        ring.next = Some(next);
        ring.prev = Some(prev);
        Ok(ring)
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn check_usable(&self) -> Result<()> {
        if self.aborted.load(Ordering::Relaxed) {
            return Err(CollectiveError::Aborted { rank: self.rank });
        }
        if self.broken {
            return Err(CollectiveError::PeerLost {
                rank: self.rank,
                op: "call",
                peer: self.prev_rank(),
                message: "an earlier collective failed; the group must be rebuilt".into(),
            });
        }
        Ok(())
    }

    /// Runs one call: checks, header exchange, `body`; any error breaks the ring.
    fn call(
        &mut self,
        op: &'static str,
        code: u32,
        len: usize,
        body: impl FnOnce(&mut link::Io<'_>) -> Result<()>,
    ) -> Result<()> {
        self.check_usable()?;
        if self.world == 1 {
            return Ok(());
        }
        self.seq += 1;
        let deadline = Instant::now() + self.timeout;
        let (rank, prev, seq, aborted) = (self.rank, self.prev_rank(), self.seq, Arc::clone(&self.aborted));
        let (Some(next), Some(recv)) = (self.next.as_mut(), self.prev.as_mut()) else {
            return Err(CollectiveError::Aborted { rank });
        };
        let mut io = link::Io {
            next,
            prev: recv,
            rank,
            prev_rank: prev,
            next_peer: (rank + 1) % self.world,
            op,
            deadline,
            timeout: self.timeout,
            scratch: &mut self.scratch,
            aborted: &aborted,
        };
        let result = io.header(code, seq, len).and_then(|()| body(&mut io));
        if result.is_err() {
            // break the connections too, so every peer fails at once instead of at its deadline
            self.broken = true;
            for s in &self.kill {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        result
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let (rank, world) = (self.rank, self.world);
        self.call("all_reduce", 1, buf.len(), |io| {
            let layout = Layout::new(buf.len(), world);
            // reduce-scatter: after step s, chunk (r-s-1) holds the sum of s+2 ranks
            for s in 0..world - 1 {
                let send = (rank + world - s) % world;
                let recv = (rank + 2 * world - s - 1) % world;
                io.transfer(buf, Some(layout.chunk(send)), layout.chunk(recv), Recv::Reduce)?;
            }
            // all-gather: chunk (r+1) is complete here; pass complete chunks around
            for s in 0..world - 1 {
                let send = (rank + 1 + world - s) % world;
                let recv = (rank + world - s) % world;
                io.transfer(buf, Some(layout.chunk(send)), layout.chunk(recv), Recv::Copy)?;
            }
            Ok(())
        })?;
        if op == ReduceOp::Average && world > 1 {
            let scale = 1.0 / world as f32;
            buf.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(CollectiveError::Config {
                message: format!("broadcast root {root} of {} ranks", self.world),
            });
        }
        let (rank, world) = (self.rank, self.world);
        self.call("broadcast", 2 + root as u32, buf.len(), |io| {
            // a pipeline root → root+1 → … → root-1: each rank forwards what it receives
            let all = 0..buf.len();
            let last = (root + world - 1) % world;
            if rank == root {
                io.transfer(buf, Some(all), 0..0, Recv::None)
            } else if rank == last {
                io.transfer(buf, None, all, Recv::Copy)
            } else {
                io.transfer(buf, Some(all.clone()), all, Recv::Forward)
            }
        })
    }

    fn barrier(&mut self) -> Result<()> {
        let mut token = [1.0f32];
        self.all_reduce(&mut token, ReduceOp::Sum)
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
        for s in &self.kill {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        for s in &self.kill {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// For tests: rings of `n` ranks connected on threads, on 127.0.0.1 ports chosen by the kernel
/// (20 s timeouts), rank `r` at index `r`.
#[cfg(test)]
pub(crate) fn local_rings(n: usize) -> Vec<Ring> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let cfg = RingConfig { timeout: Duration::from_secs(20), ..RingConfig::new(rank, peers.clone()) };
            std::thread::spawn(move || Ring::connect_with(l, cfg))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(n: usize) -> Vec<Box<dyn Collective>> {
        local_rings(n).into_iter().map(|r| Box::new(r) as Box<dyn Collective>).collect()
    }

    crate::collective_suite!(ring_passes_the_shared_suite, make);

    /// Chunks far larger than the socket buffers: every rank's sends block on a receiver that is
    /// itself sending, which a ring that wrote before reading would deadlock on.
    #[test]
    fn buffers_larger_than_the_socket_buffers_move_both_ways_without_deadlock() {
        for n in [2, 3] {
            let len = (16 << 20) / 4 + 3;
            let results = crate::collective::suite::on_threads(make(n), move |rank, c| {
                let mut buf: Vec<f32> = (0..len).map(|i| ((rank + 1) * (i % 101)) as f32).collect();
                c.all_reduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())?;
                let tri = (n * (n + 1) / 2) as f32;
                let bad = buf.iter().enumerate().position(|(i, v)| *v != tri * (i % 101) as f32);
                let mut b: Vec<f32> = (0..len).map(|i| if rank == 1 { i as f32 } else { -1.0 }).collect();
                c.broadcast(&mut b, 1).map_err(|e| e.to_string())?;
                let bad_b = b.iter().enumerate().position(|(i, v)| *v != i as f32);
                Ok::<_, String>((bad, bad_b))
            });
            for (rank, r) in results.into_iter().enumerate() {
                assert_eq!(r, Ok((None, None)), "world {n}, rank {rank}: first wrong element");
            }
        }
    }

    #[test]
    fn a_different_generation_is_refused() {
        let ls: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let peers: Vec<String> = ls.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
        let mut hs = vec![];
        for (rank, l) in ls.into_iter().enumerate() {
            let cfg = RingConfig {
                generation: rank as u64,
                timeout: Duration::from_secs(5),
                ..RingConfig::new(rank, peers.clone())
            };
            hs.push(std::thread::spawn(move || Ring::connect_with(l, cfg).map(|_| ())));
        }
        for h in hs {
            let e = h.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("generation") || e.contains("hello"), "{e}");
        }
    }

    #[test]
    fn a_missing_peer_is_a_connect_error_within_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let peers = vec![l.local_addr().unwrap().to_string(), dead.local_addr().unwrap().to_string()];
        drop(dead);
        let cfg = RingConfig { timeout: Duration::from_millis(300), ..RingConfig::new(0, peers) };
        let e = Ring::connect_with(l, cfg).unwrap_err().to_string();
        assert!(e.contains("cannot connect to rank 1"), "{e}");
    }
}
