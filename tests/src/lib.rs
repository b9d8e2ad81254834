//! `cyclotron-tests`: end-to-end tests that run the real `cyclotron` binary as a child process
//! (killed on drop, every wait bounded) and check what it writes. The helpers here find the
//! binary next to the test executable in the cargo target folder.

pub mod prometheus;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `cyclotron` binary built in the same profile as the running test.
pub fn cyclotron_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/cyclotron
    let dir = exe.parent().and_then(|d| d.parent()).expect("target folder");
    let bin = dir.join("cyclotron");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p cyclotron)",
        bin.display()
    );
    bin
}

/// The data Debian's dataset-fashion-mnist installs; tests that need it skip with a message without it.
pub fn fashion_mnist_present() -> bool {
    let present =
        std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists();
    if !present {
        eprintln!("skipping: Fashion-MNIST is not installed (make setup installs dataset-fashion-mnist)");
    }
    present
}

/// A child process that is killed when dropped.
pub struct Proc(pub Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a finished `cyclotron` run printed.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cyclotron ARGS` in `cwd`, waiting at most `deadline`; the child is killed past it.
/// Output goes to files (no pipe to fill up and block the child).
pub fn run(args: &[&str], cwd: &std::path::Path, deadline: Duration) -> Ran {
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let child = Command::new(cyclotron_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn cyclotron");
    let mut p = Proc(Some(child));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = p.0.as_mut().expect("child").try_wait().expect("wait") {
            p.0 = None;
            break status;
        }
        assert!(started.elapsed() < deadline, "cyclotron {args:?} did not finish within {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        code: status.code(),
        stdout: std::fs::read_to_string(out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(err_path).unwrap_or_default(),
    }
}
