//! The ring's data plane: how a buffer is cut into chunks and segments ([`Layout`]), the sender
//! thread that owns the write side of the connection to the next rank ([`Sender`]), and the
//! per-call state that moves segments with deadlines ([`Io`]).
//!
//! Sender protocol: the calling thread fills a staging buffer (taken from a pool of [`POOL`]
//! recycled `Vec<u8>`s, so a warm ring allocates nothing per call) and queues it; the thread
//! writes it and hands it back, or hands back the write error and exits. The calling thread
//! interleaves "queue segment j" with "receive segment j", which keeps both directions of every
//! connection busy and cannot deadlock: receiving never waits on this rank's own sends.
//! Data travels as the machine's `f32` bytes: every rank must share the byte order (all
//! little-endian targets do).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::collective::{CollectiveError, Result};

/// Elements per pipelined segment (256 KiB of `f32`).
pub(super) const SEG: usize = 64 * 1024;
/// Staging buffers per connection.
const POOL: usize = 8;

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

/// The `j`-th segment of `chunk`, if it has one.
fn segment(chunk: &Range<usize>, j: usize) -> Option<Range<usize>> {
    let start = chunk.start + j * SEG;
    (start < chunk.end).then(|| start..(start + SEG).min(chunk.end))
}

/// The write side of one connection, on its own thread.
pub(super) struct Sender {
    work: Option<SyncSender<Vec<u8>>>,
    done: Receiver<std::io::Result<Vec<u8>>>,
    free: Vec<Vec<u8>>,
    in_flight: usize,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    pub(super) fn spawn(
        mut stream: TcpStream,
        rank: usize,
        peer: usize,
        timeout: Duration,
    ) -> std::io::Result<Sender> {
        stream.set_write_timeout(Some(timeout))?;
        let (work, jobs) = sync_channel::<Vec<u8>>(POOL);
        let (back, done) = channel();
        let thread = std::thread::Builder::new().name(format!("cyclotron-ring-{rank}-to-{peer}")).spawn(
            move || {
                for buf in jobs {
                    let result = stream.write_all(&buf).map(|()| buf);
                    let failed = result.is_err();
                    if back.send(result).is_err() || failed {
                        return;
                    }
                }
            },
        )?;
        Ok(Sender {
            work: Some(work),
            done,
            free: Vec::with_capacity(POOL),
            in_flight: 0,
            thread: Some(thread),
        })
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.work = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One call's view of the ring: where to send, where to receive, and until when.
pub(super) struct Io<'a> {
    pub next: &'a mut Sender,
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

impl Io<'_> {
    fn next_rank(&self) -> usize {
        self.next_peer
    }

    fn lost(&self, peer: usize, message: String) -> CollectiveError {
        if self.aborted.load(Ordering::Relaxed) {
            return CollectiveError::Aborted { rank: self.rank };
        }
        CollectiveError::PeerLost { rank: self.rank, op: self.op, peer, message }
    }

    fn timed_out(&self, peer: usize) -> CollectiveError {
        CollectiveError::Timeout { rank: self.rank, op: self.op, peer, after: self.timeout }
    }

    fn left(&self) -> Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(self.prev_rank));
        }
        Ok(left)
    }

    /// Waits for one staging buffer to come back from the sender thread.
    fn reclaim(&mut self) -> Result<()> {
        let left = self.left()?;
        match self.next.done.recv_timeout(left) {
            Ok(Ok(buf)) => {
                self.next.in_flight -= 1;
                self.next.free.push(buf);
                Ok(())
            }
            Ok(Err(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Err(self.timed_out(self.next_rank()))
            }
            Ok(Err(e)) => Err(self.lost(self.next_rank(), format!("send failed: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(self.timed_out(self.next_rank())),
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.lost(self.next_rank(), "sender thread ended".into()))
            }
        }
    }

    /// Queues `bytes` for the next rank.
    fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let mut buf = match self.next.free.pop() {
            Some(b) => b,
            None if self.next.in_flight < POOL => Vec::with_capacity(SEG * 4),
            None => {
                self.reclaim()?;
                self.next.free.pop().unwrap_or_default()
            }
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        let Some(work) = &self.next.work else {
            return Err(self.lost(self.next_rank(), "sender closed".into()));
        };
        if work.send(buf).is_err() {
            return Err(self.lost(self.next_rank(), "sender thread ended".into()));
        }
        self.next.in_flight += 1;
        Ok(())
    }

    /// Reads exactly `bytes.len()` bytes from the previous rank before the deadline.
    fn recv_bytes(&mut self, bytes: &mut [u8]) -> Result<()> {
        let left = self.left()?;
        let prev = self.prev_rank;
        self.prev.set_read_timeout(Some(left)).map_err(|e| self.lost(prev, e.to_string()))?;
        match self.prev.read_exact(bytes) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(self.timed_out(prev))
            }
            Err(e) => Err(self.lost(prev, format!("receive failed: {e}"))),
        }
    }

    /// Sends this call's header and checks the previous rank's.
    pub(super) fn header(&mut self, code: u32, seq: u64, len: usize) -> Result<()> {
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&code.to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        self.send_bytes(&h)?;
        let mut theirs = [0u8; 24];
        self.recv_bytes(&mut theirs)?;
        if theirs != h {
            let field = |b: &[u8; 24]| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&b[16..24]);
                let mut s = [0u8; 8];
                s.copy_from_slice(&b[8..16]);
                let code = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                format!("op {code} call {} of {} elements", u64::from_le_bytes(s), u64::from_le_bytes(w))
            };
            return Err(CollectiveError::SizeMismatch {
                rank: self.rank,
                op: self.op,
                peer: self.prev_rank,
                ours: field(&h),
                theirs: field(&theirs),
            });
        }
        Ok(())
    }

    fn send_f32(&mut self, values: &[f32]) -> Result<()> {
        self.send_bytes(bytemuck::cast_slice(values))
    }

    /// One ring step: send chunk `send`, receive chunk `recv` (adding it in when `reduce`),
    /// segment by segment.
    pub(super) fn exchange(
        &mut self,
        buf: &mut [f32],
        layout: &Layout,
        send: usize,
        recv: usize,
        reduce: bool,
    ) -> Result<()> {
        let (send, recv) = (layout.chunk(send), layout.chunk(recv));
        if reduce && self.scratch.len() < SEG {
            self.scratch.resize(SEG, 0.0);
        }
        for j in 0.. {
            let (s, r) = (segment(&send, j), segment(&recv, j));
            if s.is_none() && r.is_none() {
                break;
            }
            if let Some(s) = s {
                self.send_f32(&buf[s])?;
            }
            let Some(r) = r else { continue };
            if reduce {
                let n = r.len();
                let mut scratch = std::mem::take(self.scratch);
                let got = self.recv_bytes(bytemuck::cast_slice_mut(&mut scratch[..n]));
                buf[r].iter_mut().zip(&scratch[..n]).for_each(|(a, b)| *a += b);
                *self.scratch = scratch;
                got?;
            } else {
                self.recv_bytes(bytemuck::cast_slice_mut(&mut buf[r]))?;
            }
        }
        Ok(())
    }

    /// Sends chunk `c` of `buf` whole.
    pub(super) fn send_chunk(&mut self, buf: &[f32], layout: &Layout, c: usize) -> Result<()> {
        let chunk = layout.chunk(c);
        let mut j = 0;
        while let Some(s) = segment(&chunk, j) {
            self.send_f32(&buf[s])?;
            j += 1;
        }
        Ok(())
    }

    /// Receives chunk 0 of `buf` segment by segment, forwarding each segment when `forward`.
    pub(super) fn receive_forward(&mut self, buf: &mut [f32], layout: &Layout, forward: bool) -> Result<()> {
        let chunk = layout.chunk(0);
        let mut j = 0;
        while let Some(s) = segment(&chunk, j) {
            self.recv_bytes(bytemuck::cast_slice_mut(&mut buf[s.clone()]))?;
            if forward {
                self.send_f32(&buf[s])?;
            }
            j += 1;
        }
        Ok(())
    }

    /// Waits until every queued segment is written.
    pub(super) fn flush(&mut self) -> Result<()> {
        while self.next.in_flight > 0 {
            self.reclaim()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_buffer_in_order() {
        for (len, n) in [(0, 3), (1, 3), (10, 3), (7, 7), (5, 1), (SEG * 3 + 1, 2)] {
            let l = Layout::new(len, n);
            let mut at = 0;
            for c in 0..n {
                let r = l.chunk(c);
                assert_eq!(r.start, at, "len {len}, n {n}, chunk {c}");
                at = r.end;
                let segs: usize = (0..).take_while(|&j| segment(&r, j).is_some()).count();
                assert_eq!(segs, r.len().div_ceil(SEG));
            }
            assert_eq!(at, len);
        }
    }
}
