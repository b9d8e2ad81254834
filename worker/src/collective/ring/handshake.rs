//! Ring connection set-up: address resolution, socket tuning, connect-with-retry, accept with a
//! deadline, and the authenticated HELLO exchange (the protocol is summarised in `ring.rs`).
//!
//! # Handshake (version 2)
//! Each rendezvous generation hands its ranks a fresh random secret (the agent passes it to the
//! training child in [`RING_SECRET_ENV`]). On every connection, the connecting rank C (sender of
//! tensors) and the accepting rank S (receiver) prove that secret to each other before anything
//! else, with HMAC-SHA256 over both sides' random nonces:
//!
//! 1. C → S: `HELLO_C = [magic u32, version u32, rank u32, world u32, generation u64, nonce 16 B]`
//! 2. S checks rank, world and generation, then S → C: `HELLO_S ‖ HMAC(secret, "S" ‖ HELLO_C ‖ HELLO_S)`
//! 3. C checks S's HELLO and MAC, then C → S: `HMAC(secret, "C" ‖ HELLO_C ‖ HELLO_S)`
//! 4. S checks C's MAC. Only then does a tensor byte move.
//!
//! So a process that did not get this generation's secret from the rendezvous learns nothing and
//! injects nothing: as a connector it is refused at step 4 (and never receives data: data flows
//! from C to S); as an acceptor (squatting a rank's address) it cannot produce step 2's MAC, and C
//! stops before sending anything. An acceptor that refuses a connection goes on accepting until
//! its deadline, so an impostor cannot break a ring by connecting first. Without a secret (a
//! static launch by hand, unit tests) the key is empty: the same protocol, unauthenticated.
//! Nonces make every transcript unique, so a recorded exchange cannot be replayed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{io, RingConfig, MAGIC, SOCKET_BUFFER, VERSION};
use crate::collective::{CollectiveError, Result};

/// Environment variable holding the ring secret of a training child (hex), set by the agent.
pub const RING_SECRET_ENV: &str = "CYCLOTRON_RING_SECRET";

/// Bytes of a HELLO.
pub(super) const HELLO_LEN: usize = 40;
/// Bytes of a MAC.
const MAC_LEN: usize = 32;
/// Longest one accepted connection may take to prove itself (an impostor that sends nothing
/// must not hold the acceptor until its deadline).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Hello = [u8; HELLO_LEN];

/// The ring secret from [`RING_SECRET_ENV`], if set; a value that is not hex is an error.
pub fn secret_from_env() -> Result<Option<Vec<u8>>> {
    let Ok(text) = std::env::var(RING_SECRET_ENV) else { return Ok(None) };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || CollectiveError::Config { message: format!("{RING_SECRET_ENV} is not a hex string") };
    if text.len() % 2 != 0 {
        return Err(bad());
    }
    (0..text.len() / 2)
        .map(|i| text.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(bad))
        .collect::<Result<Vec<u8>>>()
        .map(Some)
}

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

fn hello(rank: usize, world: usize, generation: u64) -> Result<Hello> {
    let mut b = [0u8; HELLO_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
    b[8..12].copy_from_slice(&(rank as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(world as u32).to_le_bytes());
    b[16..24].copy_from_slice(&generation.to_le_bytes());
    getrandom::getrandom(&mut b[24..40])
        .map_err(|e| CollectiveError::Config { message: format!("no random nonce from the OS: {e}") })?;
    Ok(b)
}

fn mac(secret: &[u8], role: u8, c: &Hello, s: &Hello) -> [u8; MAC_LEN] {
    // HMAC takes keys of any length (an empty one included): `new_from_slice` cannot fail
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else { return [0; MAC_LEN] };
    m.update(&[role]);
    m.update(c);
    m.update(s);
    m.finalize().into_bytes().into()
}

fn verify_mac(secret: &[u8], role: u8, c: &Hello, s: &Hello, given: &[u8]) -> bool {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    m.update(&[role]);
    m.update(c);
    m.update(s);
    m.verify_slice(given).is_ok() // constant time
}

/// Check a peer's HELLO against what we expect of it.
fn check_hello(b: &Hello, cfg: &RingConfig, want_rank: usize) -> std::result::Result<(), String> {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut gen = [0u8; 8];
    gen.copy_from_slice(&b[16..24]);
    let (magic, version, rank, world, generation) =
        (u32_at(0), u32_at(4), u32_at(8) as usize, u32_at(12) as usize, u64::from_le_bytes(gen));
    if magic != MAGIC || version != VERSION {
        return Err(format!(
            "not a cyclotron ring peer of this version (magic {magic:#x}, version {version})"
        ));
    }
    if world != cfg.world_size || generation != cfg.generation {
        return Err(format!(
            "peer has world size {world}, generation {generation}; ours are {}, {}",
            cfg.world_size, cfg.generation
        ));
    }
    if rank != want_rank {
        return Err(format!("expected rank {want_rank}, the peer says it is rank {rank}"));
    }
    Ok(())
}

fn secret(cfg: &RingConfig) -> &[u8] {
    cfg.secret.as_deref().unwrap_or(&[])
}

/// Connector, step 1: send our HELLO to `next` (kept for the MACs).
pub(super) fn offer(next: &mut TcpStream, cfg: &RingConfig) -> Result<Hello> {
    let h = hello(cfg.rank, cfg.world_size, cfg.generation)?;
    next.write_all(&h).map_err(io("sending hello"))?;
    Ok(h)
}

/// Connector, step 3: read `next`'s HELLO and MAC, check them, and prove the secret in turn.
pub(super) fn confirm(next: &mut TcpStream, cfg: &RingConfig, want_rank: usize, ours: &Hello) -> Result<()> {
    let addr = &cfg.peers[want_rank];
    let fail = |message: String| CollectiveError::Handshake { rank: cfg.rank, addr: addr.clone(), message };
    let mut b = [0u8; HELLO_LEN + MAC_LEN];
    next.read_exact(&mut b).map_err(|e| {
        fail(format!("no answer to our hello: {e} (the peer refused us: another generation or ring secret?)"))
    })?;
    let mut theirs = [0u8; HELLO_LEN];
    theirs.copy_from_slice(&b[..HELLO_LEN]);
    check_hello(&theirs, cfg, want_rank).map_err(fail)?;
    if !verify_mac(secret(cfg), b'S', ours, &theirs, &b[HELLO_LEN..]) {
        return Err(fail(
            "the process at this address cannot prove this generation's ring secret; nothing was sent to it"
                .into(),
        ));
    }
    next.write_all(&mac(secret(cfg), b'C', ours, &theirs)).map_err(io("sending the ring proof"))?;
    Ok(())
}

/// A connection from `prev` that passed step 2 (its HELLO checked, our answer sent).
pub(super) struct Answered {
    pub stream: TcpStream,
    theirs: Hello,
    ours: Hello,
}

/// Acceptor, steps 1–2 on one connection.
fn answer(mut s: TcpStream, cfg: &RingConfig, want_rank: usize) -> std::result::Result<Answered, String> {
    let mut theirs = [0u8; HELLO_LEN];
    s.read_exact(&mut theirs).map_err(|e| format!("no hello: {e}"))?;
    check_hello(&theirs, cfg, want_rank)?;
    let ours = hello(cfg.rank, cfg.world_size, cfg.generation).map_err(|e| e.to_string())?;
    let mut reply = ours.to_vec();
    reply.extend_from_slice(&mac(secret(cfg), b'S', &theirs, &ours));
    s.write_all(&reply).map_err(|e| format!("answering hello: {e}"))?;
    Ok(Answered { stream: s, theirs, ours })
}

/// Acceptor, step 4: the connector's proof.
fn verified(a: &mut Answered, cfg: &RingConfig) -> std::result::Result<(), String> {
    let mut given = [0u8; MAC_LEN];
    a.stream.read_exact(&mut given).map_err(|e| format!("no proof of the ring secret: {e}"))?;
    if verify_mac(secret(cfg), b'C', &a.theirs, &a.ours, &given) {
        Ok(())
    } else {
        Err("the connecting process cannot prove this generation's ring secret".into())
    }
}

/// Accept connections until one from rank `want_rank` passes steps 1–2; refused ones are
/// dropped (with a warning) and the next one is awaited, until `deadline`.
pub(super) fn accept_answered(
    listener: &TcpListener,
    cfg: &RingConfig,
    want_rank: usize,
    deadline: Instant,
    refused: &mut Vec<String>,
) -> Result<Answered> {
    loop {
        let (s, from) = accept_until(listener, cfg, deadline, refused)?;
        tune(&s)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = left.min(HANDSHAKE_TIMEOUT).max(Duration::from_millis(10));
        s.set_read_timeout(Some(limit)).map_err(io("socket timeout"))?;
        match answer(s, cfg, want_rank) {
            Ok(a) => return Ok(a),
            Err(why) => {
                tracing::warn!(rank = cfg.rank, %from, "refused a ring connection: {why}");
                refused.push(format!("{from}: {why}"));
            }
        }
    }
}

/// Acceptor, step 4, accepting again (steps 1–2) while connections fail it, until `deadline`.
pub(super) fn accept_verified(
    listener: &TcpListener,
    cfg: &RingConfig,
    want_rank: usize,
    deadline: Instant,
    mut first: Answered,
    refused: &mut Vec<String>,
) -> Result<TcpStream> {
    loop {
        match verified(&mut first, cfg) {
            Ok(()) => {
                first.stream.set_read_timeout(Some(cfg.timeout)).map_err(io("socket timeout"))?;
                return Ok(first.stream);
            }
            Err(why) => {
                let from = first.stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
                tracing::warn!(rank = cfg.rank, %from, "refused a ring connection: {why}");
                refused.push(format!("{from}: {why}"));
                first = accept_answered(listener, cfg, want_rank, deadline, refused)?;
            }
        }
    }
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

/// One connection, or at the deadline: a timeout, or the handshake failures seen if any.
fn accept_until(
    listener: &TcpListener,
    cfg: &RingConfig,
    deadline: Instant,
    refused: &[String],
) -> Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).map_err(io("listener"))?;
    let prev = (cfg.rank + cfg.world_size - 1) % cfg.world_size;
    loop {
        match listener.accept() {
            Ok((s, from)) => {
                s.set_nonblocking(false).map_err(io("accepted stream"))?;
                return Ok((s, from));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    if !refused.is_empty() {
                        return Err(CollectiveError::Handshake {
                            rank: cfg.rank,
                            addr: format!("rank {prev}"),
                            message: format!(
                                "no connection proved itself before the deadline; refused: {}",
                                refused.join("; ")
                            ),
                        });
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rank: usize, peers: &[String], secret: Option<&[u8]>) -> RingConfig {
        RingConfig {
            timeout: Duration::from_secs(3),
            secret: secret.map(<[u8]>::to_vec),
            ..RingConfig::new(rank, peers.to_vec())
        }
    }

    #[test]
    fn macs_bind_the_secret_the_role_and_both_nonces() {
        let (c, s) = (hello(0, 2, 1).unwrap(), hello(1, 2, 1).unwrap());
        assert_ne!(c[24..], s[24..], "fresh nonces");
        let m = mac(b"k", b'S', &c, &s);
        assert!(verify_mac(b"k", b'S', &c, &s, &m));
        assert!(!verify_mac(b"other", b'S', &c, &s, &m));
        assert!(!verify_mac(b"k", b'C', &c, &s, &m), "a proof for one role is not one for the other");
        assert!(!verify_mac(b"k", b'S', &s, &c, &m));
    }

    #[test]
    fn an_impostor_connecting_as_prev_is_refused_and_receives_nothing_but_the_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peers = vec![l.local_addr().unwrap().to_string(), "127.0.0.1:9".to_string()];
        let me = cfg(0, &peers, Some(b"generation-secret"));
        let target = peers[0].clone();
        let impostor = std::thread::spawn(move || {
            let mut s = TcpStream::connect(target).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut h = hello(1, 2, 0).unwrap();
            h[24..].copy_from_slice(&[7; 16]);
            s.write_all(&h).unwrap();
            s.write_all(&[0u8; MAC_LEN]).unwrap(); // a guess at the proof
            let mut got = vec![];
            let _ = s.read_to_end(&mut got);
            got.len()
        });
        let mut refused = vec![];
        let deadline = Instant::now() + Duration::from_millis(1500);
        let first = accept_answered(&l, &me, 1, deadline, &mut refused).unwrap();
        let e = accept_verified(&l, &me, 1, deadline, first, &mut refused).err().unwrap().to_string();
        assert!(e.contains("cannot prove this generation's ring secret"), "{e}");
        assert_eq!(impostor.join().unwrap(), HELLO_LEN + MAC_LEN, "only our HELLO and MAC, no data");
    }

    #[test]
    fn a_squatter_on_next_cannot_answer_and_is_sent_nothing() {
        let squat = TcpListener::bind("127.0.0.1:0").unwrap();
        let peers = vec!["127.0.0.1:9".to_string(), squat.local_addr().unwrap().to_string()];
        let me = cfg(0, &peers, Some(b"generation-secret"));
        let squatter = std::thread::spawn(move || {
            let (mut s, _) = squat.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut h = [0u8; HELLO_LEN];
            s.read_exact(&mut h).unwrap();
            let mut reply = hello(1, 2, 0).unwrap().to_vec();
            reply.extend_from_slice(&mac(b"guessed", b'S', &h, &hello(1, 2, 0).unwrap()));
            s.write_all(&reply).unwrap();
            let mut more = vec![];
            let _ = s.read_to_end(&mut more);
            more.len()
        });
        let mut next = connect_until(&me, 1, Instant::now() + Duration::from_secs(3)).unwrap();
        next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ours = offer(&mut next, &me).unwrap();
        let e = confirm(&mut next, &me, 1, &ours).unwrap_err().to_string();
        assert!(e.contains("cannot prove this generation's ring secret"), "{e}");
        drop(next);
        assert_eq!(squatter.join().unwrap(), 0, "the squatter got nothing after our HELLO");
    }

    #[test]
    fn the_secret_comes_from_the_environment_as_hex() {
        // the variable is process-wide: this test alone sets it
        std::env::set_var(RING_SECRET_ENV, "00ff10");
        assert_eq!(secret_from_env().unwrap(), Some(vec![0, 255, 16]));
        std::env::set_var(RING_SECRET_ENV, "zz");
        assert!(secret_from_env().is_err());
        std::env::remove_var(RING_SECRET_ENV);
        assert_eq!(secret_from_env().unwrap(), None);
    }
}
