//! `cargo xtask bench-http`: the broker under load on loopback, measured with
//! wrk against references run beside it — nginx as a proxy that adds the same
//! header, a native-Rust proxy on the broker's own HTTP stack
//! (`reference_proxy.rs`), and the broker's own no-op endpoint for `/v1/sign` — then both
//! proxies' latency at a fixed rate (`fixed_rate.rs`), and a JWT-identified
//! agent's calls against a token-identified agent's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::fixed_rate;
use crate::{cargo, run, write_table};

const C16: [&str; 3] = ["-t1", "-c16", "--latency"];
const C64: [&str; 3] = ["-t1", "-c64", "--latency"];
const C1: [&str; 3] = ["-t1", "-c1", "--latency"];

/// How long the benchmarks run: `rounds` interleaved rounds of `measure`
/// per target, after a `warm_up` per target (the fixed-rate runs warm up
/// [`FIXED_WARM_UP`] each instead).
#[derive(Clone, Copy)]
struct Timing {
    rounds: usize,
    measure: Duration,
    warm_up: Duration,
    /// Figures printed only, BENCHMARKS.md left as it is.
    quick: bool,
}

const TIMING: Timing =
    Timing { rounds: 3, measure: Duration::from_secs(10), warm_up: Duration::from_secs(2), quick: false };
/// `LATCHKEY_BENCH_QUICK=1`: a short run that checks the whole task works; its figures mean little.
const QUICK: Timing =
    Timing { rounds: 1, measure: Duration::from_secs(2), warm_up: Duration::from_secs(1), quick: true };

impl Timing {
    fn get() -> Timing {
        if std::env::var_os("LATCHKEY_BENCH_QUICK").is_some_and(|v| v == "1") { QUICK } else { TIMING }
    }

    /// Write the table to BENCHMARKS.md, or only print it after a quick run.
    fn write(&self, root: &Path, marker: &str, table: &str) -> Result<()> {
        if self.quick {
            println!("{table}");
            eprintln!("xtask: LATCHKEY_BENCH_QUICK=1: BENCHMARKS.md not updated");
            return Ok(());
        }
        write_table(root, marker, table)
    }
}

/// Each fixed-rate run's warm-up: sent at the rate, not counted.
const FIXED_WARM_UP: Duration = Duration::from_secs(1);
/// The connections a fixed rate is spread over.
const FIXED_CONNECTIONS: usize = 16;

/// The identity provider and the JWT-identified agent's token.
const JWT_ISSUER: &str = "https://bench.example/";
const JWT_AUDIENCE: &str = "latchkey-bench";
const JWT_SUBJECT: &str = "bench-subject";

/// A SigV4 sign request for the `bench-aws` credential: DynamoDB ListTables, body `{}`.
const SIGN_BODY: &str = r#"{"credential":"bench-aws","request":{"method":"POST","url":"https://dynamodb.us-east-1.amazonaws.com/","headers":[["content-type","application/x-amz-json-1.0"],["x-amz-target","DynamoDB_20120810.ListTables"]],"body_base64":"e30="}}"#;

/// Every nginx instance: one worker (the broker is one process), no access log, everything under our temp dir.
const NGINX_CONF: &str = r#"worker_processes 1;
daemon off;
pid @DIR@/@NAME@.pid;
error_log @DIR@/@NAME@.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path @DIR@/@NAME@-body;
    proxy_temp_path @DIR@/@NAME@-proxy;
    fastcgi_temp_path @DIR@/@NAME@-fastcgi;
    uwsgi_temp_path @DIR@/@NAME@-uwsgi;
    scgi_temp_path @DIR@/@NAME@-scgi;
@SERVER@
}
"#;

/// The upstream: 200 with a small JSON body for the right key, 401 otherwise.
const UPSTREAM_SERVER: &str = r#"    server {
        listen 127.0.0.1:@PORT@;
        default_type application/json;
        location / {
            if ($http_authorization != "Bearer @KEY@") {
                return 401 '{"error":"unauthorized"}';
            }
            return 200 '{"ok":true}';
        }
    }"#;

/// The reference proxy: sets the key and keeps connections to the upstream alive.
const PROXY_SERVER: &str = r#"    upstream bench_upstream {
        server 127.0.0.1:@UPSTREAM@;
        keepalive 32;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer @KEY@";
        }
    }"#;

pub fn bench_http(root: &Path) -> Result<()> {
    let timing = Timing::get();
    let (rounds, measure, warm_up) = (timing.rounds, secs(timing.measure), secs(timing.warm_up));
    let nginx_bin = install_tools()?;
    run(cargo().args(["build", "--release", "-p", "latchkey"]))?;
    let bin = root.join("target/release/latchkey");

    let mut lab = Lab::new()?;
    let key = random_hex(16)?;
    let (upstream, proxy, broker, reference) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let upstream_conf = UPSTREAM_SERVER.replace("@PORT@", &upstream.to_string()).replace("@KEY@", &key);
    lab.nginx(&nginx_bin, "upstream", upstream, &upstream_conf)?;
    let proxy_conf = PROXY_SERVER
        .replace("@UPSTREAM@", &upstream.to_string())
        .replace("@PORT@", &proxy.to_string())
        .replace("@KEY@", &key);
    lab.nginx(&nginx_bin, "proxy", proxy, &proxy_conf)?;
    let agent_token = lab.set_up_broker(&bin, &key, upstream)?;
    let jwt = lab.jwt_agent(&bin)?;
    lab.serve_broker(&bin, broker)?;
    lab.reference_proxy(reference, upstream, &format!("Bearer {key}"))?;

    // Correctness, once, before any timing.
    let bearer = |t: &str| format!("Bearer {t}");
    let (key_auth, agent_auth, jwt_auth) = (bearer(&key), bearer(&agent_token), bearer(&jwt));
    let checks = [
        ("upstream without the key", upstream, "GET", "/", None, "", 401),
        ("upstream with the key", upstream, "GET", "/", Some(&key_auth), "", 200),
        ("nginx proxy", proxy, "GET", "/anything", Some(&agent_auth), "", 200),
        ("broker proxy", broker, "GET", "/proxy/bench/anything", Some(&agent_auth), "", 200),
        ("hyper reference proxy", reference, "GET", "/anything", Some(&agent_auth), "", 200),
        ("broker proxy, JWT-identified agent", broker, "GET", "/proxy/bench/anything", Some(&jwt_auth), "", 200),
        ("broker /v1/sign", broker, "POST", "/v1/sign", Some(&agent_auth), SIGN_BODY, 200),
        ("broker /healthz", broker, "GET", "/healthz", None, "", 200),
    ];
    for (what, port, method, path, auth, body, want) in checks {
        let (status, text) = http(port, method, path, auth.map(String::as_str), body)?;
        if status != want {
            bail!("{what}: {method} {path} answered {status}, expected {want}: {}", text.trim());
        }
        if want == 200 && path != "/healthz" && path != "/v1/sign" && !text.contains(r#"{"ok":true}"#) {
            bail!("{what}: unexpected body {}", text.trim());
        }
    }
    eprintln!(
        "xtask: checks passed: the upstream wants the key, both proxies add it (the broker's for a token and a JWT \
         agent), /v1/sign signs"
    );

    let script = lab.dir.join("sign.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [==[{SIGN_BODY}]==]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    // Whose CPU time each target is charged: the nginx proxy's processes
    // (master and worker), the broker's process (all its threads).
    let nginx_proxy = Cpu::of_tree(lab.children[1].id());
    let broker_cpu = Cpu::of_tree(lab.children[2].id());
    let reference_cpu = Cpu::of_tree(lab.children[3].id());
    let sign_headers = {
        let mut h = header(&agent_auth);
        h.extend(["-s".to_string(), script.display().to_string()]);
        h
    };
    let targets: Vec<Target> = vec![
        Target::new(
            "direct to the upstream (nginx, key sent by wrk)",
            url(upstream, "/anything"),
            header(&key_auth),
            &C16,
            None,
        ),
        Target::new("nginx reference proxy", url(proxy, "/anything"), header(&agent_auth), &C16, Some(&nginx_proxy)),
        Target::new(
            "broker proxy `GET /proxy/bench/anything`",
            url(broker, "/proxy/bench/anything"),
            header(&agent_auth),
            &C16,
            Some(&broker_cpu),
        ),
        Target::new("broker `POST /v1/sign` (SigV4)", url(broker, "/v1/sign"), sign_headers, &C16, Some(&broker_cpu)),
        Target::new(
            "broker `GET /healthz` (no-op)",
            url(broker, "/healthz"),
            header(&agent_auth),
            &C16,
            Some(&broker_cpu),
        ),
        Target::new(
            "nginx reference proxy, 64 connections",
            url(proxy, "/anything"),
            header(&agent_auth),
            &C64,
            Some(&nginx_proxy),
        ),
        Target::new(
            "broker proxy, 64 connections",
            url(broker, "/proxy/bench/anything"),
            header(&agent_auth),
            &C64,
            Some(&broker_cpu),
        ),
        Target::new(
            "broker proxy, one sequential client",
            url(broker, "/proxy/bench/anything"),
            header(&agent_auth),
            &C1,
            Some(&broker_cpu),
        ),
        Target::new(
            "broker proxy, JWT-identified agent",
            url(broker, "/proxy/bench/anything"),
            header(&jwt_auth),
            &C16,
            Some(&broker_cpu),
        ),
        Target::new(
            "hyper reference proxy (native Rust, the broker's HTTP stack, nothing else)",
            url(reference, "/anything"),
            header(&agent_auth),
            &C16,
            Some(&reference_cpu),
        ),
        Target::new(
            "hyper reference proxy, 64 connections",
            url(reference, "/anything"),
            header(&agent_auth),
            &C64,
            Some(&reference_cpu),
        ),
    ];
    for t in &targets {
        eprintln!("xtask: warm-up {warm_up}: {}", t.name);
        wrk_with(t.shape, &t.url, &t.extra, &warm_up, None)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        for (t, out) in targets.iter().zip(&mut samples) {
            let s = wrk_with(t.shape, &t.url, &t.extra, &measure, t.cpu.as_ref())?;
            eprintln!(
                "xtask: round {round}/{rounds} {}: {:.0} req/s, p50 {}, p99 {}, CPU {}",
                t.name,
                s.rps,
                ms(s.p50),
                ms(s.p99),
                cpu_text(s.cpu_us)
            );
            out.push(s);
        }
    }

    // Latency at a fixed rate of half the broker proxy's capacity (its
    // median over the 16-connection rounds above), from xtask's open-loop
    // generator: the same rate to each target, interleaved per round.
    let rate = Sample::median(&samples[2]).rps / 2.0;
    let key_header = [("Authorization", key_auth.as_str())];
    let agent_header = [("Authorization", agent_auth.as_str())];
    let fixed_targets: [(&str, u16, &str, fixed_rate::Headers); 3] = [
        ("direct to the upstream (key sent by the generator)", upstream, "/anything", &key_header),
        ("nginx reference proxy", proxy, "/anything", &agent_header),
        ("broker proxy `GET /proxy/bench/anything`", broker, "/proxy/bench/anything", &agent_header),
    ];
    let mut fixed: Vec<Vec<Sample>> = vec![Vec::new(); fixed_targets.len()];
    for round in 1..=rounds {
        for ((name, port, path, headers), out) in fixed_targets.iter().zip(&mut fixed) {
            let load = fixed_rate::Load {
                port: *port,
                path,
                headers,
                rate,
                connections: FIXED_CONNECTIONS,
                warm_up: FIXED_WARM_UP,
                measure: timing.measure,
            };
            let o = fixed_rate::run(&load).with_context(|| format!("{rate:.0} requests/s to the {name}"))?;
            eprintln!(
                "xtask: round {round}/{rounds} {name} at {rate:.0} req/s: achieved {:.0}, p50 {}, p99 {}",
                o.achieved,
                us(o.p50),
                us(o.p99)
            );
            out.push(Sample { rps: o.achieved, p50: o.p50, p99: o.p99, cpu_us: None });
        }
    }
    drop(lab);

    let m: Vec<Sample> = samples.iter().map(|s| Sample::median(s)).collect();
    let [direct, nginx, proxied, sign, healthz, nginx64, proxied64, sequential, jwt_proxied, hyper, hyper64] =
        [m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10]];
    let mut table = String::from(
        "| target | connections | requests/s | p50 | p99 | CPU per request |\n|---|---|---|---|---|---|\n",
    );
    for (t, s) in targets.iter().zip(&m) {
        table += &format!(
            "| {} | {} | {:.0} | {} | {} | {} |\n",
            t.name,
            t.shape[1].trim_start_matches("-c"),
            s.rps,
            ms(s.p50),
            ms(s.p99),
            cpu_text(s.cpu_us)
        );
    }
    let fm: Vec<Sample> = fixed.iter().map(|s| Sample::median(s)).collect();
    let [fixed_direct, fixed_nginx, fixed_broker] = [fm[0], fm[1], fm[2]];
    table += &format!(
        "\n| at a fixed {rate:.0} requests/s ({FIXED_CONNECTIONS} connections) | achieved requests/s | p50 | p99 | \
         added p50 | added p99 |\n|---|---|---|---|---|---|\n"
    );
    for (i, ((name, ..), s)) in fixed_targets.iter().zip(&fm).enumerate() {
        let added = |f: fn(&Sample) -> f64| {
            if i == 0 { "–".to_string() } else { format!("{:+.0} µs", f(s) - f(&fixed_direct)) }
        };
        table += &format!(
            "| {name} | {:.0} | {} | {} | {} | {} |\n",
            s.rps,
            us(s.p50),
            us(s.p99),
            added(|s| s.p50),
            added(|s| s.p99)
        );
    }
    let at_least = |ratio: f64, min: f64| if ratio >= min { "met" } else { "**not met**" };
    let at_most = |ratio: f64, max: f64| if ratio <= max { "met" } else { "**not met**" };
    let proxy_ratio = proxied.rps / nginx.rps;
    let proxy64_ratio = proxied64.rps / nginx64.rps;
    let cpu_ratio = proxied.cpu_us.zip(nginx.cpu_us).map_or(f64::NAN, |(b, n)| b / n);
    let sign_ratio = sign.rps / healthz.rps;
    let jwt_ratio = jwt_proxied.rps / proxied.rps;
    // The gap to nginx, split: the HTTP stack's share and the broker's own.
    let cpu_of = |a: Sample, b: Sample| a.cpu_us.zip(b.cpu_us);
    let split = format!(
        "| hyper reference proxy ÷ nginx proxy, requests/s, 16 / 64 connections (what the HTTP stack costs) | \
         {:.2} / {:.2} | |\n\
         | broker proxy ÷ hyper reference proxy, requests/s, 16 / 64 connections (what the broker adds) | \
         {:.2} / {:.2} | |\n\
         | CPU per request, hyper reference ÷ nginx; broker − hyper reference (16 connections) | {} | |\n",
        hyper.rps / nginx.rps,
        hyper64.rps / nginx64.rps,
        proxied.rps / hyper.rps,
        proxied64.rps / hyper64.rps,
        match (cpu_of(hyper, nginx), cpu_of(proxied, hyper)) {
            (Some((h, n)), Some((b, h2))) => format!("{:.2}; {:+.1} µs", h / n, b - h2),
            _ => "n/a".to_string(),
        },
    );
    let added = |s: Sample| format!("{:+.2} / {:+.2} ms", (s.p50 - direct.p50) / 1e3, (s.p99 - direct.p99) / 1e3);
    // Broker's added latency ÷ nginx's, at the fixed rate: no ratio when
    // nginx adds (next to) nothing.
    let fixed_ratio = |f: fn(&Sample) -> f64, max: f64| {
        let (b, n) = (f(&fixed_broker) - f(&fixed_direct), f(&fixed_nginx) - f(&fixed_direct));
        if n < 1.0 {
            (format!("n/a (broker {b:+.0} µs, nginx {n:+.0} µs)"), format!("≤ {max:.1}: n/a"))
        } else {
            (format!("**{:.2}**", b / n), format!("≤ {max:.1}: {}", at_most(b / n, max)))
        }
    };
    let (fixed_p50, fixed_p50_goal) = fixed_ratio(|s| s.p50, 1.0);
    let (fixed_p99, fixed_p99_goal) = fixed_ratio(|s| s.p99, 1.2);
    table += &format!(
        "\n| ratio | measured | goal |\n|---|---|---|\n\
         | (f) broker proxy ÷ nginx proxy, requests/s, 16 connections | **{proxy_ratio:.2}** | ≥ 0.95: {} |\n\
         | (f) the same, 64 connections | **{proxy64_ratio:.2}** | ≥ 0.95: {} |\n\
         | CPU per proxied request, broker ÷ nginx (16 connections) | **{cpu_ratio:.2}** | ≤ 1.2: {} |\n\
         | added latency over direct, nginx proxy (p50 / p99) | {} | (reference) |\n\
         | added latency over direct, broker proxy (p50 / p99) | {} | |\n\
         | added latency at a fixed {rate:.0} requests/s (half the broker's capacity), broker ÷ nginx, p50 | \
         {fixed_p50} | {fixed_p50_goal} |\n\
         | the same, p99 | {fixed_p99} | {fixed_p99_goal} |\n\
         | JWT-identified agent ÷ token-identified agent, broker proxy requests/s, 16 connections | \
         **{jwt_ratio:.2}** | ≥ 0.9: {} |\n\
         | (g) `/v1/sign` ÷ `/healthz`, requests/s | **{sign_ratio:.2}** | ≥ 0.85: {} |\n\
         | sequential client p99, broker proxy | **{}** | ≤ 2 ms: {} |\n{split}",
        at_least(proxy_ratio, 0.95),
        at_least(proxy64_ratio, 0.95),
        at_most(cpu_ratio, 1.2),
        added(nginx),
        added(proxied),
        at_least(jwt_ratio, 0.9),
        at_least(sign_ratio, 0.85),
        ms(sequential.p99),
        at_most(sequential.p99, 2000.0),
    );
    let date = Command::new("date").arg("+%F").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    table += &format!(
        "\nMeasured {} on a {cores}-core machine, wrk, nginx and the broker sharing the cores; medians of \
         {rounds} interleaved rounds of `wrk -t1 -cN --latency -d{measure}`. CPU per request is the \
         process's utime + stime (from `/proc`, all its threads; for nginx its master and worker) over \
         the round, divided by the requests wrk completed. The fixed-rate rows: half the broker proxy's \
         median requests/s above, from xtask's open-loop generator (`xtask/src/fixed_rate.rs`, \
         {FIXED_CONNECTIONS} keep-alive connections, each on its own schedule; a latency runs from the time \
         its request was due), {} s warm-up then {} s per target, in {rounds} interleaved rounds; added \
         latency is the target's percentile minus the direct call's.\n",
        date.unwrap_or_default(),
        FIXED_WARM_UP.as_secs(),
        timing.measure.as_secs(),
    );
    timing.write(root, "http-bench", &table)
}

/// `nginx` and `wrk` from Debian packages, if missing. Returns the nginx binary.
/// Debian's nginx package would start the system service on install unless
/// `policy-rc.d` forbids it (containers usually do); we never start it ourselves.
fn install_tools() -> Result<PathBuf> {
    let find = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]).map(|d| d.join(name)).find(|p| p.is_file())
    };
    if find("nginx").is_none() || find("wrk").is_none() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "nginx", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    find("wrk").context("wrk is not on PATH after installing it")?;
    find("nginx").context("nginx is not on PATH after installing it")
}

/// The temp dir and every process started in it; dropping it stops them and removes the dir.
struct Lab {
    dir: PathBuf,
    children: Vec<Child>,
    /// `--plugin-dir` for every broker command.
    plugin_dir: Option<PathBuf>,
}

impl Lab {
    fn new() -> Result<Lab> {
        let dir = std::env::temp_dir().join(format!("latchkey-bench-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Lab { dir, children: Vec::new(), plugin_dir: None })
    }

    /// Start an nginx instance (its own config, pid and logs in the temp dir) and wait for its port.
    fn nginx(&mut self, nginx: &Path, name: &str, port: u16, server: &str) -> Result<()> {
        let dir = self.dir.display().to_string();
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(&conf, NGINX_CONF.replace("@SERVER@", server).replace("@DIR@", &dir).replace("@NAME@", name))?;
        let log = self.dir.join(format!("{name}.log"));
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        self.children.push(child);
        self.wait(&format!("nginx ({name})"), &log, || TcpStream::connect(("127.0.0.1", port)).is_ok())
    }

    /// Set the broker up with the CLI as a user would, start it and wait for `/healthz`.
    /// Returns the agent token.
    fn broker(&mut self, bin: &Path, key: &str, upstream: u16, port: u16) -> Result<String> {
        let token = self.set_up_broker(bin, key, upstream)?;
        self.serve_broker(bin, port)?;
        Ok(token)
    }

    /// Set the broker up with the CLI as a user would: the credentials, the
    /// route to the upstream, an agent with both attached. Returns the agent token.
    fn set_up_broker(&self, bin: &Path, key: &str, upstream: u16) -> Result<String> {
        let latchkey = |args: &[&str]| self.latchkey(bin, args);
        // Secret values go through files (`field=@file`), as an operator
        // would pass them, so the echoed commands never show them.
        let secret_file = |name: &str, value: &str| -> Result<String> {
            let path = self.dir.join(name);
            std::fs::write(&path, value)?;
            Ok(path.display().to_string())
        };
        let key_secret = format!("key=@{}", secret_file("api.key", key)?);
        let access_key = format!("access_key_id=AKID{}", random_hex(8)?.to_uppercase());
        let secret_key = format!("secret_access_key=@{}", secret_file("aws.secret", &random_hex(20)?)?);
        let upstream_url = format!("http://127.0.0.1:{upstream}");
        let setup: [&[&str]; 3] = [
            &[
                "credential",
                "add",
                "bench-key",
                "--scheme",
                "api-key",
                "--config",
                "prefix=Bearer ",
                "--secret",
                &key_secret,
                "--destination",
                "127.0.0.1",
            ],
            &[
                "credential",
                "add",
                "bench-aws",
                "--scheme",
                "aws-sigv4",
                "--config",
                "region=us-east-1",
                "--config",
                "service=dynamodb",
                "--secret",
                &access_key,
                "--secret",
                &secret_key,
                "--destination",
                "dynamodb.us-east-1.amazonaws.com",
            ],
            &["route", "add", "bench", "--upstream", &upstream_url, "--credential", "bench-key"],
        ];
        for args in setup {
            run(latchkey(args).stdout(Stdio::null()))?;
        }
        let out = latchkey(&["agent", "add", "bench-agent"]).output().context("latchkey agent add")?;
        if !out.status.success() {
            bail!("latchkey agent add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        for credential in ["bench-key", "bench-aws"] {
            run(latchkey(&["credential", "attach", credential, "--agent", "bench-agent"]).stdout(Stdio::null()))?;
        }
        Ok(token)
    }

    /// A second agent, `bench-jwt`, identified by JWTs: an Ed25519 key pair
    /// made for the run, its public half as the static JWKS of identity
    /// provider `bench-idp`, the agent bound to a subject of it and attached
    /// to `bench-key`. Returns a JWT for it, valid for an hour.
    fn jwt_agent(&self, bin: &Path) -> Result<String> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow!("cannot generate an Ed25519 key pair"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow!("cannot read the Ed25519 key pair"))?;
        let jwks = self.dir.join("jwks.json");
        std::fs::write(
            &jwks,
            format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"bench","alg":"EdDSA","use":"sig"}}]}}"#,
                B64.encode(pair.public_key())
            ),
        )?;
        let jwks = jwks.display().to_string();
        let setup: [&[&str]; 3] = [
            &[
                "idp",
                "add",
                "bench-idp",
                "--issuer",
                JWT_ISSUER,
                "--alg",
                "EdDSA",
                "--jwks-file",
                &jwks,
                "--audience",
                JWT_AUDIENCE,
            ],
            &["agent", "bind-jwt", "bench-jwt", "--idp", "bench-idp", "--subject", JWT_SUBJECT],
            &["credential", "attach", "bench-key", "--agent", "bench-jwt"],
        ];
        for args in setup {
            run(self.latchkey(bin, args).stdout(Stdio::null()))?;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"bench"}"#;
        let claims = format!(
            r#"{{"iss":"{JWT_ISSUER}","sub":"{JWT_SUBJECT}","aud":"{JWT_AUDIENCE}","iat":{now},"nbf":{now},"exp":{}}}"#,
            now + 3600
        );
        let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let signature = pair.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", B64.encode(signature.as_ref())))
    }

    /// Start the hyper reference proxy (`xtask reference-proxy`, this same
    /// binary) on `port`, forwarding to `upstream` with `authorization`.
    fn reference_proxy(&mut self, port: u16, upstream: u16, authorization: &str) -> Result<()> {
        let log = self.dir.join("reference-proxy.log");
        let child = Command::new(std::env::current_exe()?)
            .args(["reference-proxy", &format!("127.0.0.1:{port}"), &format!("127.0.0.1:{upstream}"), authorization])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the hyper reference proxy")?;
        self.children.push(child);
        self.wait("the hyper reference proxy", &log, || TcpStream::connect(("127.0.0.1", port)).is_ok())
    }

    /// Start the broker set up by [`Lab::set_up_broker`] and wait for `/healthz`.
    fn serve_broker(&mut self, bin: &Path, port: u16) -> Result<()> {
        let log = self.dir.join("broker.log");
        let listen = format!("127.0.0.1:{port}");
        let child = self
            .latchkey(bin, &["serve", "--listen", &listen, "--allow-upstream-network", "127.0.0.0/8"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting latchkey serve")?;
        self.children.push(child);
        self.wait("latchkey serve", &log, || http(port, "GET", "/healthz", None, "").is_ok_and(|(s, _)| s == 200))
    }

    /// A `latchkey` command on the lab's data folder.
    fn latchkey(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        // Nothing from the caller's environment (master key, database, config file) but the plugin cache.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LATCHKEY_") && k != "LATCHKEY_CACHE_DIR" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).env("LATCHKEY_DATA_DIR", self.dir.join("broker-data")).env("LATCHKEY_LOG", "warn");
        if let Some(dir) = &self.plugin_dir {
            cmd.env("LATCHKEY_PLUGIN_DIR", dir);
        }
        cmd
    }

    /// Wait until `ready`, failing with the log if the last process started exits or takes over 2 minutes.
    fn wait(&mut self, what: &str, log: &Path, ready: impl Fn() -> bool) -> Result<()> {
        let started = Instant::now();
        while !ready() {
            let exited = self.children.last_mut().unwrap().try_wait()?;
            if exited.is_some() || started.elapsed() > Duration::from_secs(120) {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{what} did not come up ({}):\n{log}", exited.map_or("timed out".into(), |s| s.to_string()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            if !matches!(child.try_wait(), Ok(None)) {
                continue;
            }
            // SIGTERM first: an nginx master then stops its worker too.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn header(authorization: &str) -> Vec<String> {
    vec!["-H".to_string(), format!("Authorization: {authorization}")]
}

/// One HTTP/1.1 request on a fresh connection: the status and the raw body.
fn http(port: u16, method: &str, path: &str, authorization: Option<&str>, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        req += &format!("Authorization: {a}\r\n");
    }
    if !body.is_empty() {
        req += "Content-Type: application/json\r\n";
    }
    req += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no HTTP status line")?;
    Ok((status, resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string()))
}

#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    /// Latency percentiles in microseconds.
    p50: f64,
    p99: f64,
    /// CPU time of the measured process per completed request, µs.
    cpu_us: Option<f64>,
}

impl Sample {
    /// Each figure's median over the rounds, on its own.
    fn median(samples: &[Sample]) -> Sample {
        let med = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let cpu = med(|s| s.cpu_us.unwrap_or(f64::NAN));
        Sample { rps: med(|s| s.rps), p50: med(|s| s.p50), p99: med(|s| s.p99), cpu_us: (!cpu.is_nan()).then_some(cpu) }
    }
}

/// One load target of `bench-http`.
struct Target {
    name: &'static str,
    url: String,
    extra: Vec<String>,
    shape: &'static [&'static str],
    cpu: Option<Cpu>,
}

impl Target {
    fn new(
        name: &'static str,
        url: String,
        extra: Vec<String>,
        shape: &'static [&'static str],
        cpu: Option<&Cpu>,
    ) -> Target {
        Target { name, url, extra, shape, cpu: cpu.cloned() }
    }
}

/// The processes whose CPU time a target is charged: a process and its
/// children (an nginx master and its worker).
#[derive(Clone)]
struct Cpu(Vec<u32>);

impl Cpu {
    fn of_tree(pid: u32) -> Cpu {
        let mut pids = vec![pid];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                if proc_stat(child).is_some_and(|(ppid, _)| ppid == pid) {
                    pids.push(child);
                }
            }
        }
        Cpu(pids)
    }

    /// utime + stime of the processes, in clock ticks.
    fn ticks(&self) -> u64 {
        self.0.iter().filter_map(|p| proc_stat(*p)).map(|(_, t)| t).sum()
    }
}

/// A process's parent and its utime + stime (ticks), from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, …, utime (14th), stime (15th).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((ppid, utime + stime))
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_text(us: Option<f64>) -> String {
    us.map_or("–".into(), |us| format!("{us:.1} µs"))
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn us(us: f64) -> String {
    format!("{us:.0} µs")
}

/// A duration as wrk's `-d` takes it: `10s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Run wrk and read Requests/sec, the 50% and 99% latencies and, for `cpu`,
/// the CPU time per request; any non-2xx answer fails the run.
fn wrk_with(shape: &[&str], url: &str, extra: &[String], duration: &str, cpu: Option<&Cpu>) -> Result<Sample> {
    let mut cmd = Command::new("wrk");
    cmd.args(shape).arg(format!("-d{duration}")).args(extra).arg(url);
    let before = cpu.map(Cpu::ticks);
    let out = cmd.output().with_context(|| format!("running wrk on {url}"))?;
    let after = cpu.map(Cpu::ticks);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") {
        bail!("wrk on {url} failed or got errors:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("xtask: wrk on {url}: {}", line.trim());
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .context(format!("wrk printed no `{prefix}`"))
    };
    // "  123456 requests in 10.00s, 12.34MB read"
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().to_string()))
        .context("wrk printed no request count")?
        .parse()?;
    let cpu_us = before
        .zip(after)
        .map(|(b, a)| (a.saturating_sub(b)) as f64 / clock_ticks_per_second() * 1e6 / requests.max(1.0));
    Ok(Sample {
        rps: field("Requests/sec:")?.parse()?,
        p50: micros(field("50%")?)?,
        p99: micros(field("99%")?)?,
        cpu_us,
    })
}

/// wrk's `812.00us`, `1.23ms`, `2.00s` in microseconds.
fn micros(s: &str) -> Result<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).context("latency without a unit")?;
    let n: f64 = s[..split].parse()?;
    Ok(n * match &s[split..] {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        unit => bail!("unknown wrk unit `{unit}`"),
    })
}

/// `cargo xtask bench-isolation`: another route's latency while a
/// third-party plugin that loops until its time budget is hammered by 8
/// clients (the `spin` test guest), against the same route alone, in one
/// run. The goal: p99 grows by at most 20 ms.
pub fn bench_isolation(root: &Path) -> Result<()> {
    const LOOPING_CLIENTS: &str = "-c8";
    const MEASURING: [&str; 3] = ["-t1", "-c2", "--latency"];
    let timing = Timing::get();
    let (rounds, measure) = (timing.rounds, secs(timing.measure));
    // The looping load starts 2 s before the measuring run and outlasts it.
    let looping_for = format!("-d{}s", timing.measure.as_secs() + 6);
    let nginx_bin = install_tools()?;
    run(cargo().args(["build", "--release", "-p", "latchkey"]))?;
    let bin = root.join("target/release/latchkey");
    // Built by the host's build script with the other plugins.
    let spin = root.join("target/wasm-plugins/wasm32-wasip2/release/test_guest_spin.wasm");
    if !spin.exists() {
        bail!("{} is missing (the release build should have made it)", spin.display());
    }
    let mut lab = Lab::new()?;
    let plugins = lab.dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(&spin, plugins.join("spin.wasm"))?;
    lab.plugin_dir = Some(plugins);
    let key = random_hex(16)?;
    let (upstream, broker) = (free_port()?, free_port()?);
    let upstream_conf = UPSTREAM_SERVER.replace("@PORT@", &upstream.to_string()).replace("@KEY@", &key);
    lab.nginx(&nginx_bin, "upstream", upstream, &upstream_conf)?;
    let token = lab.broker(&bin, &key, upstream, broker)?;
    let upstream_url = format!("http://127.0.0.1:{upstream}");
    let setup: [&[&str]; 3] = [
        &["credential", "add", "loop", "--scheme", "test-spin", "--secret", "key=unused", "--destination", "127.0.0.1"],
        &["route", "add", "loop", "--upstream", &upstream_url, "--credential", "loop"],
        &["credential", "attach", "loop", "--agent", "bench-agent"],
    ];
    for args in setup {
        run(lab.latchkey(&bin, args).stdout(Stdio::null()))?;
    }
    let auth = format!("Bearer {token}");
    // The looping route fails each call with plugin_failed after its budget.
    let (status, text) = http(broker, "GET", "/proxy/loop/x", Some(&auth), "")?;
    if status != 500 || !text.contains("plugin_failed") {
        bail!("the looping route answered {status}: {}", text.trim());
    }
    let fast = format!("http://127.0.0.1:{broker}/proxy/bench/x");
    let looping = format!("http://127.0.0.1:{broker}/proxy/loop/x");
    let (mut alone, mut loaded) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("xtask: round {}/{rounds}", round + 1);
        alone.push(wrk_with(&MEASURING, &fast, &header(&auth), &measure, None)?);
        let mut background = Command::new("wrk")
            .args(["-t1", LOOPING_CLIENTS, &looping_for])
            .args(header(&auth))
            .arg(&looping)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the looping clients")?;
        std::thread::sleep(Duration::from_secs(2));
        let sample = wrk_with(&MEASURING, &fast, &header(&auth), &measure, None);
        let _ = background.wait();
        loaded.push(sample?);
    }
    let (a, l) = (Sample::median(&alone), Sample::median(&loaded));
    let growth = (l.p99 - a.p99) / 1e3;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = Command::new("date").arg("+%F").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let table = format!(
        "| api-key route `GET /proxy/bench/x` | requests/s | p50 | p99 |\n|---|---|---|---|\n\
         | alone | {:.0} | {} | {} |\n\
         | while 8 clients hammer a route whose plugin loops until its 100 ms budget | {:.0} | {} | {} |\n\
         \n| ratio | measured | goal |\n|---|---|---|\n\
         | p99 growth under the looping load | **{growth:+.2} ms** | ≤ +20 ms: {} |\n\
         \nMeasured {} on a {cores}-core machine, wrk, nginx and the broker sharing the cores; medians of \
         {rounds} interleaved rounds of `wrk {} -d{measure}`; the looping load is `wrk -t1 {LOOPING_CLIENTS}`.\n",
        a.rps,
        ms(a.p50),
        ms(a.p99),
        l.rps,
        ms(l.p50),
        ms(l.p99),
        if growth <= 20.0 { "met" } else { "**not met**" },
        date.unwrap_or_default(),
        MEASURING.join(" "),
    );
    timing.write(root, "isolation-bench", &table)
}
