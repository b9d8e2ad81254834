//! The `/metrics` server over real sockets: the exposition, 404 elsewhere, port 0, a taken port,
//! shutdown, the connection limit and the header timeout; and the `--metrics-addr` parser.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use prometheus::{IntCounter, Opts, Registry};

use super::*;

/// One HTTP/1.1 request with `Connection: close`: (status code, body).
fn get(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

fn registry_with_counter() -> (Registry, IntCounter) {
    let r = Registry::new();
    let c = IntCounter::with_opts(Opts::new("cyclotron_test_events_total", "events seen")).unwrap();
    r.register(Box::new(c.clone())).unwrap();
    (r, c)
}

#[test]
fn serves_the_registry_at_metrics_and_404_elsewhere() {
    let (registry, counter) = registry_with_counter();
    let mut server = serve_metrics("127.0.0.1:0".parse().unwrap(), registry).unwrap();
    assert_ne!(server.addr.port(), 0, "port 0 resolves to the bound port");
    assert_eq!(server.url(), format!("http://{}/metrics", server.addr));

    counter.inc_by(7);
    let (status, body) = get(server.addr, "GET", "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE cyclotron_test_events_total counter"), "{body}");
    assert!(body.contains("cyclotron_test_events_total 7"), "{body}");
    // values are read at every scrape
    counter.inc();
    assert!(get(server.addr, "GET", "/metrics").unwrap().1.contains("cyclotron_test_events_total 8"));

    let (status, body) = get(server.addr, "GET", "/").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    assert_eq!(get(server.addr, "POST", "/metrics").unwrap().0, 405);

    let addr = server.addr;
    server.shutdown();
    assert!(get(addr, "GET", "/metrics").is_err(), "still answering after shutdown");
}

#[test]
fn a_taken_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = serve_metrics(addr, Registry::new()).unwrap_err().to_string();
    assert!(e.starts_with(&format!("metrics server on {addr}: ")), "{e}");
    assert!(e.contains("--metrics-addr"), "{e}");
}

#[test]
fn dropping_the_server_or_its_handle_stops_it() {
    let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Registry::new()).unwrap();
    let addr = server.addr;
    assert_eq!(get(addr, "GET", "/metrics").unwrap().0, 200);
    drop(server);
    assert!(get(addr, "GET", "/metrics").is_err());

    let mut server = serve_metrics("127.0.0.1:0".parse().unwrap(), Registry::new()).unwrap();
    server.shutdown_handle().shutdown();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(server.addr, "GET", "/metrics").is_ok() {
        assert!(std::time::Instant::now() < deadline, "the handle did not stop the server");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.shutdown();
}

#[test]
fn silent_clients_cannot_hold_the_server() {
    let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Registry::new()).unwrap();
    let addr = server.addr;
    // as many connections as allowed, each sending half a request and then nothing
    let silent: Vec<TcpStream> = (0..server::MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // the server has accepted them all
                                                    // one more is closed at once, unanswered
    let mut extra = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let read = extra.read_to_string(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "past the limit a connection is closed, got {read:?} {buf:?}"
    );
    // the silent ones are cut off after the header timeout, and scrapes work again
    let started = std::time::Instant::now();
    for mut s in silent {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let waited = started.elapsed();
    assert!(
        waited < server::HEADER_TIMEOUT + Duration::from_secs(3),
        "silent clients held on for {waited:?}"
    );
    assert_eq!(get(addr, "GET", "/metrics").unwrap().0, 200);
}

#[test]
fn metrics_addr_parses_addresses_and_off() {
    assert_eq!(parse_metrics_addr("off").unwrap(), None);
    assert_eq!(parse_metrics_addr("OFF").unwrap(), None);
    assert_eq!(parse_metrics_addr("127.0.0.1:9100").unwrap(), Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(parse_metrics_addr("[::1]:0").unwrap(), Some("[::1]:0".parse().unwrap()));
    let e = parse_metrics_addr("localhost").unwrap_err();
    assert!(e.starts_with("`localhost` is not an address") && e.contains("off"), "{e}");
}
