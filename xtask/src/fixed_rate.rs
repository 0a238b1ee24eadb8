//! An open-loop load generator for `bench-http`: GET requests at a fixed
//! rate, whatever the server's answer times (wrk has no fixed-rate mode, and
//! Debian has no wrk2).
//!
//! The rate is spread over keep-alive connections, one thread each, on its
//! own schedule: a connection's request `i` is due at `first + i * interval`,
//! the connections' first requests a fraction of an interval apart. A
//! latency runs from the time its request was due to the end of its answer,
//! so a late answer also counts against the requests queued behind it (no
//! coordinated omission). A thread's wake-up delay is in every figure alike.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Header names and values.
pub type Headers<'a> = &'a [(&'a str, &'a str)];

/// One fixed-rate run: where, what and how fast.
pub struct Load<'a> {
    pub port: u16,
    pub path: &'a str,
    /// Sent with every request, after `Host`.
    pub headers: Headers<'a>,
    /// Requests per second, over all connections.
    pub rate: f64,
    pub connections: usize,
    /// Sent at the rate first; not counted.
    pub warm_up: Duration,
    pub measure: Duration,
}

/// A run's figures, from the requests due in the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The requests answered over the time from the window's start to the
    /// last answer (at least the window).
    pub achieved: f64,
    /// Latency percentiles in microseconds.
    pub p50: f64,
    pub p99: f64,
}

/// `xtask fixed-rate PORT PATH RATE SECONDS [NAME:VALUE…]`: one run, its figures printed.
pub fn main(args: &[String]) -> Result<()> {
    let [port, path, rate, seconds, headers @ ..] = args else {
        bail!("usage: xtask fixed-rate PORT PATH RATE SECONDS [NAME:VALUE…]");
    };
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|h| h.split_once(':').map(|(n, v)| (n.trim(), v.trim())).context("NAME:VALUE"))
        .collect::<Result<_>>()?;
    let load = Load {
        port: port.parse().context("PORT")?,
        path,
        headers: &headers,
        rate: rate.parse().context("RATE")?,
        connections: 16,
        warm_up: Duration::from_secs(1),
        measure: Duration::from_secs(seconds.parse().context("SECONDS")?),
    };
    let o = run(&load)?;
    println!("achieved {:.0}/s p50 {:.0} µs p99 {:.0} µs", o.achieved, o.p50, o.p99);
    Ok(())
}

/// Run `load` against 127.0.0.1. Fails on a connection error, a non-2xx or
/// chunked answer, or an achieved rate under 90 % of `load.rate` (the
/// generator or the server could not keep up).
pub fn run(load: &Load) -> Result<Outcome> {
    if !load.rate.is_finite() || load.rate <= 0.0 || load.connections == 0 {
        bail!("a fixed-rate run needs a positive rate and connections");
    }
    let mut request = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", load.path, load.port);
    for (name, value) in load.headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    let streams = (0..load.connections).map(|_| connect(load.port)).collect::<Result<Vec<_>>>()?;
    let interval = Duration::from_secs_f64(load.connections as f64 / load.rate);
    // A little ahead, so that every thread is running when its first request is due.
    let start = Instant::now() + Duration::from_millis(20);
    let window = Window {
        from: start + load.warm_up,
        end: start + load.warm_up + load.measure,
        // A connection that fell behind stops here; what it did not send
        // counts against the achieved rate.
        give_up: start + load.warm_up + load.measure + load.measure / 5 + Duration::from_secs(1),
    };
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Answers>> = std::thread::scope(|s| {
        let threads: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(c, stream)| {
                let first = start + interval.mul_f64(c as f64 / load.connections as f64);
                let (request, window, failed) = (request.as_bytes(), &window, &failed);
                s.spawn(move || {
                    let answers = connection(stream, request, first, interval, window, failed);
                    if answers.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    answers
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a load thread panicked")).collect()
    });
    let (mut latencies, mut last) = (Vec::new(), None);
    for answers in results {
        let answers = answers.with_context(|| format!("GET 127.0.0.1:{}{}", load.port, load.path))?;
        latencies.extend(answers.latencies);
        last = last.max(answers.last);
    }
    if latencies.is_empty() {
        bail!("no request was answered in the measured window");
    }
    latencies.sort_by(f64::total_cmp);
    let took = last.map_or(load.measure, |l| l.duration_since(window.from).max(load.measure));
    let achieved = latencies.len() as f64 / took.as_secs_f64();
    let outcome = Outcome { achieved, p50: percentile(&latencies, 0.50), p99: percentile(&latencies, 0.99) };
    if achieved < 0.9 * load.rate {
        bail!(
            "GET 127.0.0.1:{}{}: {achieved:.0} requests/s achieved of {:.0} asked (under 90 %; p50 {:.0} µs, p99 {:.0} µs): \
             the generator or the server could not keep up",
            load.port,
            load.path,
            load.rate,
            outcome.p50,
            outcome.p99
        );
    }
    Ok(outcome)
}

/// When the counted requests are due, and when a connection stops.
struct Window {
    from: Instant,
    end: Instant,
    give_up: Instant,
}

/// One connection's counted latencies (µs) and the end of its last counted answer.
struct Answers {
    latencies: Vec<f64>,
    last: Option<Instant>,
}

fn connect(port: u16) -> Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Send `request` on `stream` on its schedule until the window ends.
fn connection(
    stream: TcpStream,
    request: &[u8],
    first: Instant,
    interval: Duration,
    window: &Window,
    failed: &AtomicBool,
) -> Result<Answers> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let (mut line, mut body) = (String::new(), Vec::new());
    let mut answers = Answers { latencies: Vec::new(), last: None };
    for i in 0u32.. {
        let due = first + interval * i;
        let now = Instant::now();
        if due >= window.end || now >= window.give_up || failed.load(Ordering::Relaxed) {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        writer.write_all(request)?;
        read_response(&mut reader, &mut line, &mut body)?;
        let done = Instant::now();
        if due >= window.from {
            answers.latencies.push(done.duration_since(due).as_secs_f64() * 1e6);
            answers.last = Some(done);
        }
    }
    Ok(answers)
}

/// Read one HTTP/1.1 response with a `Content-Length` body; fail on any
/// other framing and on a status outside 2xx.
fn read_response(reader: &mut BufReader<TcpStream>, line: &mut String, body: &mut Vec<u8>) -> Result<()> {
    line.clear();
    if reader.read_line(line)? == 0 {
        bail!("the server closed the connection");
    }
    let status_line = line.trim_end().to_string();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            bail!("the server closed the connection in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').with_context(|| format!("malformed header {header:?}"))?;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().with_context(|| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!(
                "`{status_line}` came with Transfer-Encoding: {}; this generator reads only Content-Length bodies",
                value.trim()
            );
        }
    }
    let length = length.with_context(|| format!("`{status_line}` came without a Content-Length"))?;
    body.resize(length, 0);
    reader.read_exact(body)?;
    if !(200..300).contains(&status) {
        bail!("answered `{status_line}`: {}", String::from_utf8_lossy(body).trim());
    }
    Ok(())
}

/// The nearest-rank percentile `p` (0 to 1) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server on a free port answering every request on every connection
    /// with `response`, each answer `delay` after its request.
    fn serve(response: &'static str, delay: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    loop {
                        // The request's head; a GET has no body.
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        std::thread::sleep(delay);
                        if stream.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn load(port: u16, rate: f64) -> Load<'static> {
        Load {
            port,
            path: "/x",
            headers: &[("Authorization", "Bearer t")],
            rate,
            connections: 4,
            warm_up: Duration::from_millis(200),
            measure: Duration::from_secs(1),
        }
    }

    #[test]
    fn keeps_the_rate_and_measures_latency() {
        let port = serve("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}", Duration::ZERO);
        let o = run(&load(port, 200.0)).unwrap();
        assert!((180.0..=210.0).contains(&o.achieved), "achieved {}", o.achieved);
        assert!(o.p50 > 0.0 && o.p99 >= o.p50, "p50 {} p99 {}", o.p50, o.p99);
        // Loopback answers in well under the 5 ms between a connection's requests.
        assert!(o.p99 < 5_000.0, "p99 {}", o.p99);
    }

    #[test]
    fn a_slow_server_fails_the_rate() {
        // One answer per connection every 50 ms at most: 80 requests/s on 4 connections, of 200 asked.
        let port = serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Duration::from_millis(50));
        let e = run(&load(port, 200.0)).unwrap_err().to_string();
        assert!(e.contains("could not keep up"), "{e}");
    }

    #[test]
    fn refuses_errors_and_chunked_answers() {
        let port = serve("HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno", Duration::ZERO);
        let e = format!("{:#}", run(&load(port, 100.0)).unwrap_err());
        assert!(e.contains("401 Unauthorized"), "{e}");
        let port = serve("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Duration::ZERO);
        let e = format!("{:#}", run(&load(port, 100.0)).unwrap_err());
        assert!(e.contains("Transfer-Encoding: chunked"), "{e}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
