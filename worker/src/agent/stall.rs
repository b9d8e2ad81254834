//! Noticing a stuck training child. A child reports an event per epoch (and per stage, LR-range
//! test, snapshot), which can be minutes apart, so silence alone is no sign; but a child that
//! trains burns CPU time. A run is stuck when, for the whole stall timeout, it reported no event
//! AND its process group leader used no CPU time (a stopped process, a deadlock, a hang on I/O).
//! The agent then stops it and reports a transient failure, so the coordinator restarts the task
//! from its last checkpoint, as after a crash.
//!
//! A child waiting in a collective for a slow peer uses no CPU either: the stall timeout must stay
//! above the collective timeout (whose own deadline fails the run first).

use std::time::{Duration, Instant};

/// CPU time (user + system, in clock ticks) and state letter of process `pid`, from `/proc`.
fn cpu_and_state(pid: u32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may hold spaces: fields start after the last ')'
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // fields 14 and 15 of stat(5) (utime, stime) are at 11 and 12 after the name
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, state))
}

/// Tracks one child's progress.
#[derive(Debug)]
pub struct Progress {
    pid: u32,
    timeout: Duration,
    /// When the child last reported an event or used CPU time.
    last: Instant,
    cpu: Option<u64>,
}

impl Progress {
    pub fn new(pid: u32, timeout: Duration) -> Self {
        Progress { pid, timeout, last: Instant::now(), cpu: cpu_and_state(pid).map(|(c, _)| c) }
    }

    /// How often [`Self::stuck`] should be asked.
    pub fn check_every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The child reported an event.
    pub fn event(&mut self) {
        self.last = Instant::now();
    }

    /// Why the child is stuck, once it made no progress for the whole timeout.
    pub fn stuck(&mut self) -> Option<String> {
        let now = cpu_and_state(self.pid);
        let cpu = now.map(|(c, _)| c);
        if cpu.is_some() && cpu != self.cpu {
            self.cpu = cpu;
            self.last = Instant::now();
            return None;
        }
        if self.last.elapsed() < self.timeout {
            return None;
        }
        let state = match now.map(|(_, s)| s) {
            Some('T') | Some('t') => "stopped (SIGSTOP?)",
            Some('D') => "blocked in uninterruptible I/O",
            Some('S') => "sleeping",
            Some('Z') => "exited, not yet reaped",
            _ => "in an unknown state",
        };
        Some(format!("no event and no CPU time for {:?}; the process is {state}", self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_progresses_and_a_stopped_one_is_stuck() {
        let me = std::process::id();
        let (cpu, state) = cpu_and_state(me).unwrap();
        assert!(matches!(state, 'R' | 'S'), "{state}");
        let mut p = Progress::new(me, Duration::from_millis(200));
        // burn CPU: progress
        let start = Instant::now();
        let mut x = 0u64;
        while cpu_and_state(me).unwrap().0 == cpu && start.elapsed() < Duration::from_secs(5) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert_eq!(p.stuck(), None);

        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut p = Progress::new(child.id(), Duration::from_millis(300));
        std::process::Command::new("kill").args(["-STOP", &child.id().to_string()]).status().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let why = p.stuck().expect("stuck");
        assert!(why.contains("stopped"), "{why}");
        p.event();
        assert_eq!(p.stuck(), None, "an event is progress");
        let _ = child.kill();
        let _ = child.wait();
    }
}
