//! The web view in a real browser (Debian's chromium, driven through chromium-driver with
//! WebDriver): a coordinator with `--web-addr` and two worker processes run a short job whose
//! rank 1 is slowed on purpose (`CYCLOTRON_FAULT_SLOW_RANK=1:150`). The test opens the job's page
//! once and, without reloading it, sees the LR-range chart drawn, the step counter advance, rank 1
//! named the straggler (on the page and in `status --json`) within 30 s of the ranks' first
//! figures, and the job reach "succeeded". Screenshots are saved for a person to look at, in
//! `$CYCLOTRON_SCREENSHOTS` (default: the target folder's `web-view/`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cyclotron_tests::{
    fashion_mnist_present, free_ports, new_tag, read, run_tagged, status_json, Coordinator, Worker,
};
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver, stopped on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

fn screenshots_dir() -> PathBuf {
    let dir = std::env::var_os("CYCLOTRON_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| {
        // target/<profile>/deps/<test> → target/<profile>/web-view
        let exe = std::env::current_exe().expect("test executable");
        exe.parent().and_then(|d| d.parent()).expect("target folder").join("web-view")
    });
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": which("chromium").map(|p| p.display().to_string()).unwrap_or_default(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1700"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let started = Instant::now();
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return c,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("no browser session from chromedriver in 30 s: {e}"),
        }
    }
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Poll `f` (every 200 ms) until it gives `Some`, failing after `deadline` with `what`.
async fn until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const JOB: &str = r#"name = "webview"
seed = 5
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = 32
limit_train = 1024
limit_eval = 200
[model]
arch = "small_cnn"
width = 8
[optimizer]
kind = "sgd"
momentum = 0.9
[lr_find]
start = 1e-4
end = 1.0
steps = 12
[[stage]]
name = "sgdr"
lr_find = true
lr = "auto"
cycles = 2
cycle_len = 1
cycle_mult = 2
[ensemble]
members = 2
[runtime]
threads = 1
device = "cpu"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_page_is_live_in_a_browser_and_names_the_slowed_rank() {
    if !fashion_mnist_present() {
        return;
    }
    let (Some(driver_bin), Some(_)) = (which("chromedriver"), which("chromium")) else {
        panic!("chromium and chromium-driver are missing: `make setup` installs them");
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let port = free_ports(1)[0];
    let _driver = Driver(
        Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    // rank 1 of every group sleeps 150 ms per step (the workers' training children inherit it)
    std::env::set_var("CYCLOTRON_FAULT_SLOW_RANK", "1:150");
    let coord = Coordinator::start(dir.path(), "c", "127.0.0.1:0", &["--web-addr", "127.0.0.1:0"], &tag);
    let web = until("the web view's address", Duration::from_secs(30), || async {
        read(&coord.log)
            .split("web view at ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    })
    .await;
    let _w0 = Worker::start(dir.path(), &coord.addr, "w0", &tag);
    let _w1 = Worker::start(dir.path(), &coord.addr, "w1", &tag);
    std::fs::write(dir.path().join("job.toml"), JOB).unwrap();
    let submitted = run_tagged(
        &["submit", "job.toml", "--coordinator", &coord.addr, "--workers-per-run", "2"],
        dir.path(),
        Duration::from_secs(60),
        &tag,
    );
    assert_eq!(submitted.code, Some(0), "{}\n{}", submitted.stdout, submitted.stderr);
    let job =
        submitted.stdout.split_whitespace().find(|w| w.starts_with("webview-")).expect("job id").to_string();

    let c = browser(port).await;
    c.goto(&format!("{web}jobs/{job}")).await.unwrap();
    let shots = screenshots_dir();
    // the LR-range test's curve is drawn (an SVG polyline), without a reload
    until("the LR-range chart", Duration::from_secs(120), || async {
        let el = c.find(Locator::Css("#chart-lrfind svg polyline")).await.ok()?;
        el.attr("points").await.ok().flatten().filter(|p| p.split(' ').count() > 3)
    })
    .await;
    // the step counter advances live
    let first: u64 = until("a step count", Duration::from_secs(60), || async {
        text_of(&c, "#step").await?.trim().parse().ok().filter(|s| *s > 0)
    })
    .await;
    let later = until("the step counter to advance", Duration::from_secs(60), || async {
        text_of(&c, "#step").await?.trim().parse::<u64>().ok().filter(|s| *s > first)
    })
    .await;
    assert!(later > first);
    // rank 1 is named: on the page within 30 s of the ranks' first figures, and in status --json
    until("the ranks table", Duration::from_secs(60), || async {
        c.find(Locator::Css("table.ranks")).await.ok()
    })
    .await;
    let named = Instant::now();
    let banner = until("rank 1 named on the page", Duration::from_secs(30), || async {
        text_of(&c, ".straggler").await.filter(|t| t.contains("rank 1 (w1)"))
    })
    .await;
    eprintln!("named in {:.1} s: {banner}", named.elapsed().as_secs_f64());
    assert!(banner.contains("compute-bound"), "{banner}");
    let slow_row = text_of(&c, "table.ranks tr.slow").await.expect("the slow rank's row is marked");
    assert!(slow_row.starts_with("1 w1"), "{slow_row}");
    std::fs::write(shots.join("job-running.png"), c.screenshot().await.unwrap()).unwrap();
    let status = status_json(&job, &coord.addr, dir.path(), &tag);
    assert_eq!(status["tasks"][0]["straggler"]["rank"], 1, "{status}");
    assert_eq!(status["tasks"][0]["straggler"]["bound"], "compute", "{status}");
    // the job ends, and the page says so without a reload
    until("the job to succeed on the page", Duration::from_secs(240), || async {
        text_of(&c, "#summary h1 .badge").await.filter(|t| t == "succeeded")
    })
    .await;
    let live = text_of(&c, "#live-state").await.unwrap_or_default();
    assert_eq!(live, "ended", "the live stream closed with the job");
    let results = text_of(&c, "#results").await.unwrap_or_default();
    assert!(results.contains("ensemble") && results.contains("snapshot 0"), "{results}");
    std::fs::write(shots.join("job-done.png"), c.screenshot().await.unwrap()).unwrap();
    c.goto(&web).await.unwrap();
    let workers =
        until("the cluster page", Duration::from_secs(10), || async { text_of(&c, "#workers").await }).await;
    assert!(workers.contains("w0") && workers.contains("w1"), "{workers}");
    std::fs::write(shots.join("cluster.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();
    eprintln!("screenshots in {}", shots.display());
}
