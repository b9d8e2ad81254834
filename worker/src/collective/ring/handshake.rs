//! Ring connection set-up: address resolution, socket tuning, connect-with-retry, accept with a
//! deadline and the HELLO exchange (the protocol is documented in `ring.rs`).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{io, RingConfig, MAGIC, SOCKET_BUFFER, VERSION};
use crate::collective::{CollectiveError, Result};

pub(super) fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(io(format!("resolving {addr}")))?
        .next()
        .ok_or_else(|| CollectiveError::Config { message: format!("{addr} resolves to no address") })
}

pub(super) fn tune(s: &TcpStream) -> Result<()> {
    s.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    let sock = socket2::SockRef::from(s);
    // best effort: a kernel may cap or refuse the size
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    Ok(())
}

pub(super) fn hello(rank: usize, world: usize, generation: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
    b[8..12].copy_from_slice(&(rank as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(world as u32).to_le_bytes());
    b[16..24].copy_from_slice(&generation.to_le_bytes());
    b
}

/// Reads a HELLO and checks it against what we expect of the peer.
pub(super) fn check_hello(s: &mut TcpStream, cfg: &RingConfig, want_rank: usize, addr: &str) -> Result<()> {
    let fail =
        |message: String| CollectiveError::Handshake { rank: cfg.rank, addr: addr.to_string(), message };
    let mut b = [0u8; 24];
    s.read_exact(&mut b).map_err(|e| fail(format!("no hello: {e}")))?;
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut gen = [0u8; 8];
    gen.copy_from_slice(&b[16..24]);
    let (magic, version, rank, world, generation) =
        (u32_at(0), u32_at(4), u32_at(8) as usize, u32_at(12) as usize, u64::from_le_bytes(gen));
    if magic != MAGIC || version != VERSION {
        return Err(fail(format!("not a cyclotron ring peer (magic {magic:#x}, version {version})")));
    }
    if world != cfg.world_size || generation != cfg.generation {
        return Err(fail(format!(
            "peer has world size {world}, generation {generation}; ours are {}, {}",
            cfg.world_size, cfg.generation
        )));
    }
    if rank != want_rank {
        return Err(fail(format!("expected rank {want_rank}, the peer says it is rank {rank}")));
    }
    Ok(())
}

pub(super) fn connect_until(cfg: &RingConfig, peer: usize, deadline: Instant) -> Result<TcpStream> {
    let addr = &cfg.peers[peer];
    let target = resolve(addr)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(
            &target,
            left.clamp(Duration::from_millis(1), Duration::from_secs(1)),
        ) {
            Ok(s) => return Ok(s),
            Err(e) if left.is_zero() => {
                return Err(CollectiveError::Connect {
                    rank: cfg.rank,
                    peer,
                    addr: addr.clone(),
                    after: cfg.timeout,
                    message: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20).min(left)),
        }
    }
}

pub(super) fn accept_until(listener: &TcpListener, cfg: &RingConfig, deadline: Instant) -> Result<TcpStream> {
    listener.set_nonblocking(true).map_err(io("listener"))?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io("accepted stream"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let prev = (cfg.rank + cfg.world_size - 1) % cfg.world_size;
                    return Err(CollectiveError::Timeout {
                        rank: cfg.rank,
                        op: "accept",
                        peer: prev,
                        after: cfg.timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io("accept")(e)),
        }
    }
}
