//! A training child process under the agent's control: started in its own process group, its
//! stdout parsed as the event stream (one [`TrainEvent`] per line; other lines ignored), its
//! stderr forwarded with a prefix and its last lines kept for the failure report, and its stdin
//! pinged so that the child's parent watchdog (`--parent-watchdog-ms`) ends it when the agent
//! dies (EOF) or stalls (no ping in time). Stopping is SIGTERM to the group, then SIGKILL after a
//! grace period; dropping the handle kills the child.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyclotron_core::events::TrainEvent;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::{AgentError, Result};

/// Lines of stderr kept for a failure report.
const TAIL_LINES: usize = 20;

/// What to start.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// Write a byte to the child's stdin this often (its watchdog's heartbeat); `None`: never.
    pub ping_every: Option<Duration>,
    /// Prefix of forwarded stderr lines (`[job j-1 rank 0]`).
    pub log_prefix: String,
    /// Extra environment variables (secrets go here, never in `args`, which `ps` shows).
    pub env: Vec<(String, String)>,
}

/// A running (or exited, not yet reaped) child.
pub struct Child {
    child: tokio::process::Child,
    pid: u32,
    events: mpsc::Receiver<TrainEvent>,
    tail: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<JoinHandle<()>>,
    pinger: Option<JoinHandle<()>>,
}

impl Child {
    pub fn spawn(spec: &ChildSpec) -> Result<Child> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // its own group: a terminal's ctrl-c reaches the agent, which stops it in order
            .process_group(0);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| AgentError::Io {
            what: format!("starting {}", spec.program.display()),
            source: e,
        })?;
        let pid = child.id().ok_or_else(|| AgentError::Invalid {
            what: "child".into(),
            message: "exited before its pid was read".into(),
        })?;
        let (tx, events) = mpsc::channel(1024);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut readers = vec![];
        if let Some(out) = child.stdout.take() {
            let prefix = spec.log_prefix.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Some(e) = TrainEvent::from_line(&line) else {
                        if !line.trim().is_empty() {
                            eprintln!("{prefix} {line}");
                        }
                        continue;
                    };
                    if tx.send(e).await.is_err() {
                        break;
                    }
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let prefix = spec.log_prefix.clone();
            let tail = tail.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("{prefix} {line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }));
        }
        let stdin = child.stdin.take();
        let pinger = match (spec.ping_every, stdin) {
            (Some(every), Some(mut stdin)) => Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if stdin.write_all(b"\n").await.is_err() || stdin.flush().await.is_err() {
                        break;
                    }
                }
            })),
            // held (never written) so the child sees EOF only when the agent goes away
            (None, Some(stdin)) => Some(tokio::spawn(async move {
                let _stdin = stdin;
                std::future::pending::<()>().await;
            })),
            _ => None,
        };
        Ok(Child { child, pid, events, tail, readers, pinger })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event; `None` once the child closed its stdout.
    pub async fn next_event(&mut self) -> Option<TrainEvent> {
        self.events.recv().await
    }

    /// Wait for the exit, then for the output readers to drain (bounded).
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| AgentError::Io { what: format!("waiting for child {}", self.pid), source: e })?;
        self.drain().await;
        Ok(status)
    }

    async fn drain(&mut self) {
        for r in self.readers.drain(..) {
            // a grandchild holding the pipes open must not block the agent
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
    }

    /// Events still buffered after the exit (call after [`Self::wait`]).
    pub fn remaining_events(&mut self) -> Vec<TrainEvent> {
        let mut out = vec![];
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// SIGTERM to the child's process group; SIGKILL if it has not exited after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.drain().await;
            return Ok(status);
        }
        signal_group(self.pid, libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(r) => {
                let status = r.map_err(|e| AgentError::Io {
                    what: format!("waiting for child {}", self.pid),
                    source: e,
                })?;
                // anything else left in its group goes too
                signal_group(self.pid, libc::SIGKILL);
                self.drain().await;
                Ok(status)
            }
            Err(_) => {
                tracing::warn!(pid = self.pid, ?grace, "child ignored SIGTERM; sending SIGKILL");
                signal_group(self.pid, libc::SIGKILL);
                let _ = self.child.start_kill();
                self.wait().await
            }
        }
    }

    /// The child's last stderr lines.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(p) = self.pinger.take() {
            p.abort();
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}

/// SIGTERM to the process group led by `pid` (a child started with `process_group(0)`).
pub fn terminate_group(pid: u32) {
    signal_group(pid, libc::SIGTERM);
}

/// SIGKILL to the process group led by `pid`.
pub fn kill_group(pid: u32) {
    signal_group(pid, libc::SIGKILL);
}

/// Send `sig` to the process group led by `pid` (the child was started as its group leader).
#[allow(unsafe_code)]
fn signal_group(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved. The
    // group exists while its leader is unreaped (the Child handle keeps it so until waited).
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// How a child's exit is reported.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, ping: Option<Duration>) -> ChildSpec {
        ChildSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: None,
            ping_every: ping,
            log_prefix: "[test]".into(),
            env: vec![],
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z ") && !s.contains(") X "))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn events_are_parsed_and_stderr_tail_kept() {
        let script = r#"echo '{"type":"resumed","stage":1,"epoch":2,"step":30,"checkpoint":"c"}'
echo 'a results table line'
echo 'oops' >&2
echo '{"type":"failed","permanent":true,"message":"bad data"}'
exit 3"#;
        let mut c = Child::spawn(&sh(script, None)).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), c.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(describe_exit(&status), "exited with status 3");
        let events = c.remaining_events();
        assert_eq!(
            events,
            vec![
                TrainEvent::Resumed { stage: 1, epoch: 2, step: 30, checkpoint: "c".into() },
                TrainEvent::Failed { permanent: true, message: "bad data".into() },
            ]
        );
        assert_eq!(c.stderr_tail(), vec!["oops".to_string()]);
    }

    #[tokio::test]
    async fn stop_sends_sigterm_then_sigkill_to_the_whole_group() {
        // ignores SIGTERM, and has a grandchild in its group
        let mut c = Child::spawn(&sh("trap '' TERM; sleep 300 & sleep 300; wait", None)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = c.pid();
        let grandchildren: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')').next().map(|r| r.split_whitespace().nth(1) == Some(&pid.to_string()))
                    })
                    .unwrap_or(false)
            })
            .collect();
        assert!(!grandchildren.is_empty(), "the shell started its sleeps");
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(10), c.stop(Duration::from_millis(500)))
            .await
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(450), "SIGKILL came before the grace period");
        assert_eq!(describe_exit(&status), "killed by signal 9");
        tokio::time::sleep(Duration::from_millis(200)).await;
        for g in grandchildren {
            assert!(!alive(g), "grandchild {g} survived");
        }
    }

    #[tokio::test]
    async fn a_child_that_honours_sigterm_stops_at_once() {
        let mut c = Child::spawn(&sh("sleep 300", None)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = tokio::time::timeout(Duration::from_secs(10), c.stop(Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(describe_exit(&status), "killed by signal 15");
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_child_and_closes_its_stdin() {
        let pinged =
            Child::spawn(&sh("while read x; do :; done; sleep 300", Some(Duration::from_millis(50))))
                .unwrap();
        let pid = pinged.pid();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(alive(pid));
        drop(pinged);
        let started = std::time::Instant::now();
        while alive(pid) {
            assert!(started.elapsed() < Duration::from_secs(10), "child {pid} outlived its handle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
