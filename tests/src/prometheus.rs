//! The real Prometheus tools for the metrics tests: `promtool check metrics` on an exposition,
//! a `prometheus` server on loopback scraping a list of targets (temporary config and storage,
//! killed on drop), its HTTP query API, and a plain HTTP GET. Everything has a deadline.
//!
//! Both binaries come from Debian's `prometheus` package (`make setup`); without them the tests
//! skip with a message (the helpers return `None`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Proc;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn present(bin: &str) -> bool {
    let ok = Path::new(bin).exists();
    if !ok {
        eprintln!("skipping: {bin} is not installed (make setup installs Debian's prometheus package)");
    }
    ok
}

/// One HTTP/1.0 GET (no chunking, the server closes): (status, body). Bounded by `timeout`.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let sock: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut bytes = vec![];
    s.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on `exposition`: `None` without promtool, else its verdict
/// (`Err` with promtool's complaints).
pub fn promtool_check(exposition: &str) -> Option<Result<(), String>> {
    if !present(PROMTOOL) {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("exposition.txt");
    std::fs::write(&input, exposition).expect("write exposition");
    let out_path = dir.path().join("out.txt");
    let child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&input).expect("exposition file"))
        .stdout(std::fs::File::create(&out_path).expect("out file"))
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("err.txt")).expect("err file")))
        .spawn()
        .expect("spawn promtool");
    let mut p = Proc(Some(child));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = p.0.as_mut().expect("child").try_wait().expect("wait") {
            p.0 = None;
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "promtool did not finish in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&out_path).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("err.txt")).unwrap_or_default();
    // promtool exits 0 with lint warnings on stdout in some versions: both count as failures
    if status.success() && said.trim().is_empty() {
        Some(Ok(()))
    } else {
        Some(Err(format!("promtool check metrics ({status}): {said}")))
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A real Prometheus server on loopback, scraping `targets` every second; killed on drop.
pub struct Prometheus {
    proc: Proc,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second, with
    /// `honor_labels: true` (the targets' own `job` label wins, as in `deploy/prometheus/`),
    /// and waits (at most `deadline`) until it is ready. `None` when the binary is absent.
    pub fn start(targets: &[String], deadline: Duration) -> Option<Prometheus> {
        if !present(PROMETHEUS) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: cyclotron\n    honor_labels: true\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .expect("spawn prometheus");
        let mut prom = Prometheus { proc: Proc(Some(child)), addr, dir };
        let started = Instant::now();
        loop {
            if let Some(status) = prom.proc.0.as_mut().expect("child").try_wait().expect("wait") {
                panic!("prometheus exited ({status}) at start:\n{}", prom.log());
            }
            if matches!(http_get(&prom.addr, "/-/ready", Duration::from_secs(2)), Ok((200, _))) {
                return Some(prom);
            }
            assert!(
                started.elapsed() < deadline,
                "prometheus not ready within {deadline:?}:\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's own log (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// An instant query: the `data.result` array of `/api/v1/query`.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(&self.addr, &path, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` until `accept` holds for its result (at most `deadline`); the result.
    pub fn wait_for(
        &self,
        promql: &str,
        deadline: Duration,
        accept: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let started = Instant::now();
        loop {
            let r = self.query(promql);
            if accept(&r) {
                return r;
            }
            let targets = http_get(&self.addr, "/api/v1/targets", Duration::from_secs(5)).map(|r| r.1);
            assert!(
                started.elapsed() < deadline,
                "{promql} never matched within {deadline:?}; last result {r:?}\ntargets: {targets:?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
