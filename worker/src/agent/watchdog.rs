//! The parent watchdog of processes a supervisor starts (`--parent-watchdog-ms`): the process
//! exits when its stdin reaches end-of-file, which the kernel delivers when the supervisor dies
//! however it dies (kill -9 included), and, with a timeout, when no byte arrived for that long
//! (the supervisor stalled, e.g. SIGSTOP). A worker agent pings its training child this way, so a
//! stalled worker's child stops before the coordinator restarts its run elsewhere.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the watchdog fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentGone {
    /// stdin reached EOF: the parent exited or was killed.
    Closed,
    /// No ping within the timeout: the parent is stalled.
    Silent(Duration),
}

impl std::fmt::Display for ParentGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParentGone::Closed => write!(f, "the parent process is gone (stdin closed)"),
            ParentGone::Silent(t) => write!(f, "the parent process sent nothing for {t:?} (stalled)"),
        }
    }
}

/// Watch `input` (stdin in production) on background threads; call `on_gone` once when it closes
/// or, with `timeout`, stays silent too long.
pub fn watch<R, F>(mut input: R, timeout: Option<Duration>, on_gone: F)
where
    R: Read + Send + 'static,
    F: Fn(ParentGone) + Send + Sync + 'static,
{
    let started = Instant::now();
    let last_ms = Arc::new(AtomicU64::new(0));
    let on_gone = Arc::new(on_gone);
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fire = {
        let (on_gone, fired) = (on_gone.clone(), fired.clone());
        move |why: ParentGone| {
            if !fired.swap(true, Ordering::SeqCst) {
                on_gone(why);
            }
        }
    };
    let fire = Arc::new(fire);
    {
        let (last_ms, fire) = (last_ms.clone(), fire.clone());
        let spawned = std::thread::Builder::new().name("parent-watchdog".into()).spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => last_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed),
                }
            }
            fire(ParentGone::Closed);
        });
        if let Err(e) = spawned {
            tracing::warn!(%e, "cannot start the parent watchdog");
            return;
        }
    }
    if let Some(timeout) = timeout {
        let tick = Duration::from_millis(50).min(timeout);
        let _ = std::thread::Builder::new().name("parent-silence".into()).spawn(move || {
            let mut prev = started.elapsed();
            loop {
                std::thread::sleep(tick);
                let now = started.elapsed();
                // this process itself was suspended (SIGSTOP, a frozen VM): the pings could not be
                // read meanwhile, so the silence says nothing about the parent; start counting again
                if now.saturating_sub(prev) > (timeout / 2).max(Duration::from_secs(1)) {
                    tracing::warn!(
                        suspended = ?now.saturating_sub(prev),
                        "this process was suspended; not blaming the parent for the silence"
                    );
                    last_ms.store(now.as_millis() as u64, Ordering::Relaxed);
                }
                prev = now;
                let silent = Duration::from_millis(
                    (now.as_millis() as u64).saturating_sub(last_ms.load(Ordering::Relaxed)),
                );
                if silent > timeout {
                    fire(ParentGone::Silent(timeout));
                    return;
                }
            }
        });
    }
}

/// [`watch`] on stdin, exiting the process (status 1) with a message when the parent is gone.
///
/// The exit is `_exit(2)`: it skips atexit handlers and static destructors, which would otherwise
/// run on this thread while libtorch's threads still work on the objects they destroy (the
/// process then died with SIGSEGV instead of status 1). Output is flushed first.
pub fn exit_with_parent(timeout: Option<Duration>) {
    watch(std::io::stdin(), timeout, |why| {
        eprintln!("exiting: {why}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        exit_now(1);
    });
}

/// Terminate the process at once with `code`, without running destructors or atexit handlers.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) only ends the process; it touches no memory of this program.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;

    use super::*;

    /// A pipe: the test writes to the returned writer, the watchdog reads the reader.
    fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
        std::io::pipe().expect("pipe")
    }

    #[test]
    fn eof_fires_closed() {
        let (r, w) = pipe();
        let (tx, rx) = mpsc::channel();
        watch(r, None, move |why| tx.send(why).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "fired while the parent lives");
        drop(w);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), ParentGone::Closed);
    }

    #[test]
    fn a_process_resumed_after_a_stop_does_not_blame_its_parent() {
        // a child stopped with SIGSTOP longer than the watchdog's timeout, then continued, while
        // its parent pings it all along: it must keep running, not exit "parent stalled"
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "agent::watchdog::tests::child_watched_for_300ms", "--nocapture", "--ignored"])
            .env("CYCLOTRON_WATCHDOG_CHILD", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let mut stdin = child.stdin.take().unwrap();
        let ping = |stdin: &mut std::process::ChildStdin| stdin.write_all(b"\n").and_then(|_| stdin.flush());
        for _ in 0..10 {
            ping(&mut stdin).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        for _ in 0..20 {
            let _ = ping(&mut stdin);
            std::thread::sleep(Duration::from_millis(100));
        }
        std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
        for _ in 0..10 {
            ping(&mut stdin).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(child.try_wait().unwrap().is_none(), "the resumed child blamed its parent and exited");
        drop(stdin); // the parent goes away: now it exits, with status 1 (not a signal)
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "child outlived its parent");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1), "{status:?}");
    }

    /// The child side of the test above (run as a separate process).
    #[test]
    #[ignore = "the child process of a_process_resumed_after_a_stop_does_not_blame_its_parent"]
    fn child_watched_for_300ms() {
        if std::env::var("CYCLOTRON_WATCHDOG_CHILD").is_err() {
            return;
        }
        exit_with_parent(Some(Duration::from_millis(300)));
        std::thread::sleep(Duration::from_secs(30));
    }

    #[test]
    fn pings_keep_it_quiet_and_silence_fires_once() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel();
        watch(r, Some(Duration::from_millis(300)), move |why| tx.send(why).unwrap());
        for _ in 0..10 {
            w.write_all(b"\n").unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
        assert!(rx.try_recv().is_err(), "fired although pinged");
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            ParentGone::Silent(Duration::from_millis(300))
        );
        drop(w);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "fired twice");
    }
}
