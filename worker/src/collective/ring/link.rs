//! The ring's data plane: how a buffer is cut into chunks ([`Layout`]) and how one ring step
//! moves bytes ([`Io::transfer`]): the calling thread alone drives both connections, non-blocking,
//! writing the chunk it sends straight from the caller's buffer to the next rank while it reads
//! the chunk it receives from the previous rank, and sleeps in `poll(2)` only when neither
//! socket can move a byte.
//!
//! One thread per rank and no staging copies: on a machine with as many cores as ranks, every
//! rank keeps its own core, and nothing waits for another thread to be scheduled (the design this
//! replaced had a sender thread per connection fed through a channel, four busy threads for two
//! ranks on two cores, and a copy of every segment into a staging buffer). Received bytes that
//! are reduced go through a small scratch buffer that stays in cache: read, then added in place.
//!
//! Data travels as the machine's `f32` bytes: every rank must share the byte order (all
//! little-endian targets do).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::collective::{CollectiveError, Result};

/// Elements of the scratch buffer that received bytes are reduced through (256 KiB of `f32`:
/// large enough for few system calls, small enough to stay in a core's L2 cache).
pub(super) const SCRATCH: usize = 64 * 1024;
/// Bytes written per `write(2)` at most (the kernel takes what fits in the socket buffer).
const WRITE_MAX: usize = 1 << 20;

/// `n` balanced chunks of a `len`-element buffer: the first `len % n` get one element more.
pub(super) struct Layout {
    base: usize,
    rem: usize,
}

impl Layout {
    pub(super) fn new(len: usize, n: usize) -> Layout {
        Layout { base: len / n, rem: len % n }
    }

    pub(super) fn chunk(&self, c: usize) -> Range<usize> {
        let start = c * self.base + c.min(self.rem);
        start..start + self.base + usize::from(c < self.rem)
    }
}

/// What a transfer does with the bytes it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    /// Nothing is received.
    None,
    /// Copied into the range.
    Copy,
    /// Added element-wise into the range.
    Reduce,
    /// Copied into the range and forwarded to the next rank as they arrive (a broadcast
    /// pipeline); the send range must be the receive range.
    Forward,
}

/// One call's view of the ring: where to send, where to receive, and until when.
pub(super) struct Io<'a> {
    pub next: &'a mut TcpStream,
    pub prev: &'a mut TcpStream,
    pub rank: usize,
    pub prev_rank: usize,
    pub next_peer: usize,
    pub op: &'static str,
    pub deadline: Instant,
    pub timeout: Duration,
    pub scratch: &'a mut Vec<f32>,
    pub aborted: &'a AtomicBool,
}

/// Progress of one direction: bytes done of bytes wanted.
#[derive(Debug, Clone, Copy)]
struct Progress {
    done: usize,
    len: usize,
}

impl Progress {
    fn pending(&self) -> bool {
        self.done < self.len
    }
}

impl Io<'_> {
    fn lost(&self, peer: usize, message: String) -> CollectiveError {
        if self.aborted.load(Ordering::Relaxed) {
            return CollectiveError::Aborted { rank: self.rank };
        }
        CollectiveError::PeerLost { rank: self.rank, op: self.op, peer, message }
    }

    fn timed_out(&self, peer: usize) -> CollectiveError {
        CollectiveError::Timeout { rank: self.rank, op: self.op, peer, after: self.timeout }
    }

    /// Sends this call's header and checks the previous rank's.
    pub(super) fn header(&mut self, code: u32, seq: u64, len: usize) -> Result<()> {
        let mut h = [0u32; 6];
        h[0] = code;
        h[2..4].copy_from_slice(&[seq as u32, (seq >> 32) as u32]);
        h[4..6].copy_from_slice(&[len as u64 as u32, ((len as u64) >> 32) as u32]);
        let mine: [f32; 6] = h.map(f32::from_bits);
        let mut theirs = mine;
        // the header travels as the buffer does: send ours from a copy, receive theirs in place
        let mut both = [mine, [0.0; 6]].concat();
        self.transfer(&mut both, Some(0..6), 6..12, Recv::Copy)?;
        theirs.copy_from_slice(&both[6..]);
        let bits = |x: &[f32; 6]| x.map(f32::to_bits);
        if bits(&theirs) != bits(&mine) {
            let field = |b: [u32; 6]| {
                let seq = u64::from(b[2]) | (u64::from(b[3]) << 32);
                let len = u64::from(b[4]) | (u64::from(b[5]) << 32);
                format!("op {} call {seq} of {len} elements", b[0])
            };
            return Err(CollectiveError::SizeMismatch {
                rank: self.rank,
                op: self.op,
                peer: self.prev_rank,
                ours: field(bits(&mine)),
                theirs: field(bits(&theirs)),
            });
        }
        Ok(())
    }

    /// One ring step: send `buf[send]` to the next rank while receiving `recv` from the previous
    /// one as `how` says, until both are done or the deadline passes.
    pub(super) fn transfer(
        &mut self,
        buf: &mut [f32],
        send: Option<Range<usize>>,
        recv: Range<usize>,
        how: Recv,
    ) -> Result<()> {
        let send = send.unwrap_or(0..0);
        debug_assert!(how != Recv::Forward || send == recv);
        let mut out = Progress { done: 0, len: 4 * send.len() };
        let mut inp = Progress { done: 0, len: if how == Recv::None { 0 } else { 4 * recv.len() } };
        // bytes of a partly received element, at the front of the scratch buffer (reduce only)
        let mut partial = 0usize;
        if how == Recv::Reduce && self.scratch.len() < SCRATCH {
            self.scratch.resize(SCRATCH, 0.0);
        }
        while out.pending() || inp.pending() {
            // forwarding sends only what has arrived
            let sendable = if how == Recv::Forward { inp.done.min(out.len) } else { out.len };
            let mut moved = false;
            if out.done < sendable {
                let bytes: &[u8] = bytemuck::cast_slice(&buf[send.clone()]);
                let end = sendable.min(out.done + WRITE_MAX);
                match self.next.write(&bytes[out.done..end]) {
                    Ok(0) => return Err(self.lost(self.next_peer, "connection closed".into())),
                    Ok(n) => {
                        out.done += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.lost(self.next_peer, format!("send failed: {e}"))),
                }
            }
            if inp.pending() {
                let got = match how {
                    Recv::Reduce => {
                        let want = (inp.len - inp.done).min(4 * SCRATCH - partial);
                        let scratch: &mut [u8] = bytemuck::cast_slice_mut(&mut self.scratch[..]);
                        self.prev.read(&mut scratch[partial..partial + want])
                    }
                    _ => {
                        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[recv.clone()]);
                        self.prev.read(&mut bytes[inp.done..])
                    }
                };
                match got {
                    Ok(0) => return Err(self.lost(self.prev_rank, "connection closed".into())),
                    Ok(n) => {
                        if how == Recv::Reduce {
                            // add the whole elements now in scratch; keep a split one's bytes
                            let first = recv.start + (inp.done - partial) / 4;
                            let have = partial + n;
                            let whole = have / 4;
                            buf[first..first + whole]
                                .iter_mut()
                                .zip(&self.scratch[..whole])
                                .for_each(|(a, b)| *a += b);
                            partial = have % 4;
                            let scratch: &mut [u8] = bytemuck::cast_slice_mut(&mut self.scratch[..]);
                            scratch.copy_within(4 * whole..have, 0);
                        }
                        inp.done += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.lost(self.prev_rank, format!("receive failed: {e}"))),
                }
            }
            if !moved {
                let (w, r) = (out.done < sendable, inp.pending());
                self.wait(w, r)?;
            }
        }
        Ok(())
    }

    /// Sleep until the next connection can take bytes (`write`) or the previous one has some
    /// (`read`), or fail at the deadline.
    fn wait(&self, write: bool, read: bool) -> Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let waiting_on = if read { self.prev_rank } else { self.next_peer };
        if left.is_zero() {
            return Err(self.timed_out(waiting_on));
        }
        if self.aborted.load(Ordering::Relaxed) {
            return Err(CollectiveError::Aborted { rank: self.rank });
        }
        let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
        match poll2((self.next.as_raw_fd(), write), (self.prev.as_raw_fd(), read), ms) {
            Ok(0) => Err(self.timed_out(waiting_on)),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(self.lost(waiting_on, format!("poll failed: {e}"))),
        }
    }
}

/// `poll(2)` on up to two descriptors: `(fd, wanted)` for writability and readability. Returns
/// how many are ready (0: timed out). Errors and hang-ups count as ready: the next read or write
/// reports them.
#[allow(unsafe_code)]
fn poll2(write: (i32, bool), read: (i32, bool), timeout_ms: i32) -> std::io::Result<i32> {
    let mut fds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 2];
    if write.1 {
        fds[0] = libc::pollfd { fd: write.0, events: libc::POLLOUT, revents: 0 };
    }
    if read.1 {
        fds[1] = libc::pollfd { fd: read.0, events: libc::POLLIN, revents: 0 };
    }
    // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call; a
    // negative fd is ignored by poll(2).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A connected loopback pair: (ours, theirs).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nodelay(true).unwrap();
        (ours, theirs)
    }

    fn io<'a>(
        next: &'a mut TcpStream,
        prev: &'a mut TcpStream,
        scratch: &'a mut Vec<f32>,
        aborted: &'a AtomicBool,
        timeout: Duration,
    ) -> Io<'a> {
        Io {
            next,
            prev,
            rank: 1,
            prev_rank: 0,
            next_peer: 2,
            op: "all_reduce",
            deadline: Instant::now() + timeout,
            timeout,
            scratch,
            aborted,
        }
    }

    #[test]
    fn reduced_elements_split_across_reads_are_added_whole_while_sending() {
        let (mut next, mut sink) = pair();
        let (mut prev, mut source) = pair();
        // more than one scratch buffer's worth, ragged
        let n = SCRATCH + 1001;
        let theirs: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let bytes: Vec<u8> = bytemuck::cast_slice(&theirs).to_vec();
        let writer = thread::spawn(move || {
            // first pieces of 1-7 bytes, each alone on the wire (elements split across reads),
            // then ragged large pieces
            let mut at = 0;
            for (k, step) in [1, 2, 3, 5, 6, 7, 3, 1].iter().cycle().take(40).enumerate() {
                source.write_all(&bytes[at..at + step]).unwrap();
                at += step;
                if k % 2 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            while at < bytes.len() {
                let step = (64 * 1024 + 3).min(bytes.len() - at);
                source.write_all(&bytes[at..at + step]).unwrap();
                at += step;
            }
            source
        });
        let reader = thread::spawn(move || {
            let mut got = vec![];
            sink.read_to_end(&mut got).unwrap();
            got
        });
        // ours: 1.0 in the receive range, 7.0 in the send range
        let mut buf: Vec<f32> = (0..2 * n).map(|i| if i < n { 1.0 } else { 7.0 }).collect();
        let (mut scratch, aborted) = (vec![], AtomicBool::new(false));
        let mut io = io(&mut next, &mut prev, &mut scratch, &aborted, Duration::from_secs(20));
        io.transfer(&mut buf, Some(n..2 * n), 0..n, Recv::Reduce).unwrap();
        drop(next);
        let _source = writer.join().unwrap();
        for (i, v) in buf[..n].iter().enumerate() {
            assert_eq!(*v, 1.0 + i as f32 * 0.5, "element {i}");
        }
        let sent = reader.join().unwrap();
        assert_eq!(sent.len(), 4 * n);
        assert!(bytemuck::cast_slice::<u8, f32>(&sent).iter().all(|&v| v == 7.0));
    }

    #[test]
    fn a_silent_peer_is_a_timeout_at_the_deadline_naming_it() {
        let (mut next, _sink) = pair();
        let (mut prev, mut source) = pair();
        // the peer sends part of an element and then nothing, connection open
        source.write_all(&[0, 0]).unwrap();
        let mut buf = vec![0.0f32; 1000];
        let (mut scratch, aborted) = (vec![], AtomicBool::new(false));
        let t0 = Instant::now();
        let mut io = io(&mut next, &mut prev, &mut scratch, &aborted, Duration::from_millis(300));
        let e = io.transfer(&mut buf, Some(0..10), 10..1000, Recv::Reduce).unwrap_err();
        let waited = t0.elapsed();
        assert!(matches!(e, CollectiveError::Timeout { peer: 0, .. }), "{e}");
        assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(3), "{waited:?}");
        drop(source);
    }

    #[test]
    fn a_closed_peer_is_peer_lost_not_a_timeout() {
        let (mut next, _sink) = pair();
        let (mut prev, source) = pair();
        drop(source);
        let mut buf = vec![0.0f32; 100];
        let (mut scratch, aborted) = (vec![], AtomicBool::new(false));
        let mut io = io(&mut next, &mut prev, &mut scratch, &aborted, Duration::from_secs(20));
        let e = io.transfer(&mut buf, None, 0..100, Recv::Copy).unwrap_err();
        assert!(matches!(e, CollectiveError::PeerLost { peer: 0, .. }), "{e}");
    }

    #[test]
    fn chunks_cover_the_buffer_in_order() {
        for (len, n) in [(0, 3), (1, 3), (10, 3), (7, 7), (5, 1), (SCRATCH * 3 + 1, 2)] {
            let l = Layout::new(len, n);
            let mut at = 0;
            for c in 0..n {
                let r = l.chunk(c);
                assert_eq!(r.start, at, "len {len}, n {n}, chunk {c}");
                assert!(r.len() <= len / n + 1);
                at = r.end;
            }
            assert_eq!(at, len);
        }
    }
}
