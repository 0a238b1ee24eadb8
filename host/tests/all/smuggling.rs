//! Request smuggling at the broker's listener (THREATS.md case 30): a
//! request whose framing two parsers could read differently is answered
//! 400 and its connection closed, on the proxy's paths and the broker's
//! own, so nothing after it on the connection is read as another request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::db::Backend;
use crate::server::world;

/// Send `raw` on a fresh connection and read until the broker closes it;
/// returns what it answered.
fn exchange(addr: &str, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the connection was left open after {:?}: {e}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let (w, token) = world(Backend::Sqlite).await.unwrap();
    let addr = w.base.trim_start_matches("http://").to_string();
    // A request smuggled behind the first: if the broker read the first
    // body by a different length than a front proxy would, this second
    // request would be answered too.
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let auth = format!("Authorization: Bearer {token}\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /proxy/openai/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /proxy/openai/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            format!(
                "POST /proxy/openai/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Content-Length: +5",
            format!("POST /proxy/openai/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: +5\r\n\r\nhello{smuggled}"),
        ),
        (
            "a bare LF in a chunk-size line",
            format!(
                "POST /proxy/openai/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "an obs-fold header line",
            format!(
                "POST /proxy/openai/echo HTTP/1.1\r\nHost: x\r\n{auth}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "the same on the broker's own endpoint",
            format!(
                "POST /v1/sign HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (what, raw) in &cases {
        let addr = addr.clone();
        let raw = raw.clone().into_bytes();
        let answer = tokio::task::spawn_blocking(move || exchange(&addr, &raw)).await.unwrap();
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{what}: a second request was answered: {answer}");
        if what.contains("with Transfer-Encoding") {
            // hyper reads the body by Transfer-Encoding, drops
            // Content-Length before any handler sees it, and closes the
            // connection after its answer (RFC 9112 section 6.1): the
            // request behind it is never read, which the count above proves.
            continue;
        }
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }
    w.close().await;
}
