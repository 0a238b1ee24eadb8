//! `cargo xtask`: the developer loop beyond `cargo build` — set-up, plugins,
//! the full test suite, benchmarks (`bench_http.rs`: the HTTP load benchmark;
//! `fixed_rate.rs`: its open-loop load generator).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod bench_http;
mod fixed_rate;
mod reference_proxy;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  setup     install what the build and tests need (idempotent): the wasm32-wasip2
            target, and a Python venv in target/venv with the providers' SDKs
  plugins   build the plugin workspace to wasm32-wasip2 components (target/plugins/*.wasm)
  test      everything CI runs: formatting, clippy, host and plugin tests,
            golden vectors, and the official-SDK comparisons
  bench     criterion benchmarks; writes the measured ratios to BENCHMARKS.md
            (`bench plugins` or `bench vault` runs one of them; `bench timing`
            runs the dudect constant-time test of the token checks and prints max t)
  bench-http
            HTTP load on loopback with wrk (installs nginx and wrk if missing): the
            broker's proxy against an nginx proxy, also at a fixed rate, and with a
            JWT-identified agent; /v1/sign against /healthz; writes the measured
            ratios to BENCHMARKS.md
  bench-isolation
            another route's p50/p99 alone and while 8 clients hammer a route whose
            plugin loops until its time budget (same run); writes BENCHMARKS.md
            (both with LATCHKEY_BENCH_QUICK=1: one short round to check a run works;
            the figures are printed, BENCHMARKS.md is left as it is)
  fuzz [TARGET] [SECONDS]
            run one fuzz target (every one, in turn, without TARGET) for SECONDS
            (default 120) on its corpus in fuzz/corpus/TARGET; needs cargo-fuzz,
            and runs it on the stable toolchain with RUSTC_BOOTSTRAP=1 (docs/fuzzing.md)
";

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "setup" => setup(&root),
        "plugins" => plugins(&root),
        "test" => test(&root),
        "bench" => bench(&root, std::env::args().nth(2).as_deref()),
        "bench-http" => bench_http::bench_http(&root),
        "bench-isolation" => bench_http::bench_isolation(&root),
        // Started by `bench-http` as its native-Rust reference, not a task of its own.
        "reference-proxy" => reference_proxy::main(&std::env::args().skip(2).collect::<Vec<_>>()),
        // A diagnostic: `xtask fixed-rate PORT PATH RATE SECONDS [NAME:VALUE…]`, the generator bench-http uses.
        "fixed-rate" => fixed_rate::main(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fuzz" => fuzz(&root, std::env::args().nth(2).as_deref(), std::env::args().nth(3).as_deref()),
        _ => {
            eprint!("{USAGE}");
            if task.is_empty() || task == "help" || task == "--help" { Ok(()) } else { bail!("unknown task `{task}`") }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Run a command, echoing it; fail with its exit status.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What `cargo run` sets for xtask, besides `CARGO` and `CARGO_PKG_*`.
const RUN_VARS: [&str; 5] =
    ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"];

/// A cargo command without the package variables `cargo run` gave xtask.
/// ring's build script declares `CARGO_MANIFEST_DIR` and `CARGO_PKG_*` with
/// `rerun-if-env-changed`, and cargo compares them with its own
/// environment: with xtask's values, a build from here would rebuild ring
/// and everything above it after a build from a shell, and the other way round.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("CARGO_PKG_") || RUN_VARS.contains(&k))
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host triple")
}

fn venv_python(root: &Path) -> PathBuf {
    root.join("target/venv/bin/python")
}

fn setup(root: &Path) -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target =
        installed.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2")).unwrap_or(false);
    if !has_target {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    browser()?;
    let python = venv_python(root);
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(root.join("target/venv")))?;
    }
    // The providers' SDKs: signing comparisons (tests/sdk) and end-to-end
    // clients of the broker (tests/e2e).
    let mut reqs: Vec<PathBuf> = Vec::new();
    for dir in ["tests/sdk", "tests/e2e"] {
        reqs.extend(
            std::fs::read_dir(root.join(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("requirements"))),
        );
    }
    reqs.sort();
    // pip is quick when everything is already installed; a stamp file would
    // go stale when a requirements file changes.
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]);
    for r in &reqs {
        pip.arg("-r").arg(r);
    }
    run(&mut pip)
}

/// Debian's chromium and chromedriver for the console's browser test,
/// installed with apt when missing (as root, or through sudo). Nothing
/// downloads a browser build of its own. Where apt cannot run, the test
/// says what is missing (and fails in CI).
fn browser() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        return Ok(());
    }
    let root_user = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut c = if root_user {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    if !Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: no apt-get: install chromium and chromedriver for the console's browser test");
        return Ok(());
    }
    run(&mut apt(&["update", "-qq"]))?;
    run(&mut apt(&["install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]))
}

fn plugins(root: &Path) -> Result<()> {
    let target = root.join("target/wasm-plugins");
    run(cargo()
        .args(["build", "--release", "--workspace", "--target", "wasm32-wasip2", "--manifest-path", "Cargo.toml"])
        // From the plugin workspace, so its `.cargo/config.toml` applies.
        .current_dir(root.join("plugins"))
        .env("CARGO_TARGET_DIR", &target))?;
    let out = root.join("target/plugins");
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(target.join("wasm32-wasip2/release"))? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(scheme) = name.strip_prefix("latchkey_scheme_").and_then(|n| n.strip_suffix(".wasm")) {
            let dest = out.join(format!("{}.wasm", scheme.replace('_', "-")));
            std::fs::copy(&path, &dest)?;
            eprintln!("xtask: {}", dest.strip_prefix(root).unwrap_or(&dest).display());
        }
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    setup(root)?;
    let triple = host_triple()?;
    let plugins_manifest = "plugins/Cargo.toml";
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["fmt", "--all", "--check", "--manifest-path", plugins_manifest]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo()
        .args(["clippy", "--workspace", "--target", "wasm32-wasip2"])
        .args(["--", "-D", "warnings"])
        .current_dir(root.join("plugins"))
        .env("CARGO_TARGET_DIR", root.join("target/wasm-plugins")))?;
    // Plugin crates' own unit tests (canonicalisation, parsing) run natively.
    run(cargo()
        .args(["test", "--workspace", "--lib", "--target", &triple, "--manifest-path", plugins_manifest])
        .env("CARGO_TARGET_DIR", root.join("target/plugins-native")))?;
    // The host: unit tests, hostile guests, golden vectors, CLI, AWS SDK comparison.
    run(cargo().args(["test", "--workspace"]))?;
    // The providers' official SDKs (botocore, Alibaba, Tencent, PyJWT) against `latchkey sign`.
    // `cargo test` has just built target/debug/latchkey for the integration
    // tests (CARGO_BIN_EXE_latchkey); a separate `cargo build` would rebuild
    // it without the dev-dependencies' features, for nothing.
    run(Command::new(venv_python(root))
        .args(["-m", "pytest", "-q", "tests/sdk"])
        .env("LATCHKEY_BIN", root.join("target/debug/latchkey")))?;
    eprintln!("xtask: every check passed in {:.0?}", started.elapsed());
    Ok(())
}

/// `cargo fuzz run` on stable: libFuzzer's flags are nightly-only, which
/// `RUSTC_BOOTSTRAP=1` allows. Without a sanitizer (the targets check their
/// own contracts; ASan over wasmtime would make the build far slower). The
/// build, the runtime's plugin build included, stays in `fuzz/target`.
fn fuzz(root: &Path, target: Option<&str>, seconds: Option<&str>) -> Result<()> {
    let seconds: u64 = seconds.unwrap_or("120").parse().context("SECONDS must be a whole number")?;
    let targets: Vec<String> = match target {
        Some(t) => vec![t.to_string()],
        None => {
            let mut all: Vec<String> = std::fs::read_dir(root.join("fuzz/fuzz_targets"))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
                .collect();
            all.sort();
            all
        }
    };
    for t in &targets {
        run(cargo()
            .args(["fuzz", "run", "--sanitizer", "none", t])
            .arg(format!("fuzz/corpus/{t}"))
            .args(["--", &format!("-max_total_time={seconds}")])
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", root.join("fuzz/target")))?;
    }
    Ok(())
}

fn bench(root: &Path, which: Option<&str>) -> Result<()> {
    match which {
        None => {
            plugin_bench(root)?;
            vault_bench(root)
        }
        Some("plugins") => plugin_bench(root),
        Some("vault") => vault_bench(root),
        // dudect prints its verdicts; there is no ratio to write down.
        Some("timing") => run(cargo().args(["bench", "-p", "latchkey", "--bench", "timing"])),
        Some(other) => bail!("unknown benchmark `{other}`: `plugins`, `vault` or `timing`"),
    }
}

/// The median of criterion's last run of `group/name`, in nanoseconds.
fn median_ns(root: &Path, group: &str, name: &str) -> Result<f64> {
    let path = root.join(format!("target/criterion/{group}/{name}/new/estimates.json"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["median"]["point_estimate"].as_f64().context("no median in criterion output")
}

fn us(ns: f64) -> String {
    format!("{:.2} µs", ns / 1000.0)
}

/// Print `table` and put it in BENCHMARKS.md between the `<!-- {marker}:start -->`
/// and `<!-- {marker}:end -->` lines.
fn write_table(root: &Path, marker: &str, table: &str) -> Result<()> {
    println!("{table}");
    let path = root.join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = (format!("<!-- {marker}:start -->"), format!("<!-- {marker}:end -->"));
    match (doc.find(&start), doc.find(&end)) {
        (Some(s), Some(e)) if s < e => {
            let updated = format!("{}{start}\n{table}{}", &doc[..s], &doc[e..]);
            std::fs::write(&path, updated)?;
            eprintln!("xtask: BENCHMARKS.md updated ({marker})");
        }
        _ => eprintln!("xtask: BENCHMARKS.md has no {marker} markers; table printed only"),
    }
    Ok(())
}

fn plugin_bench(root: &Path) -> Result<()> {
    run(cargo().args(["bench", "-p", "latchkey", "--bench", "plugins"]))?;
    let estimate = |group: &str, name: &str| median_ns(root, group, name);
    let sig_native = estimate("sigv4", "native")?;
    let sig_fresh = estimate("sigv4", "plugin_fresh")?;
    let sig_warm = estimate("sigv4", "plugin_warm")?;
    let key_native = estimate("api_key", "native")?;
    let key_fresh = estimate("api_key", "plugin_fresh")?;
    let key_template = estimate("api_key", "plugin_template")?;
    let table = format!(
        "| measurement | time (median) | ratio |\n|---|---|---|\n\
         | SigV4, native `aws-sigv4` crate | {} | 1.00 (reference) |\n\
         | (a) SigV4 through the plugin, fresh instance per call | {} | **{:.2}** |\n\
         | (b) SigV4 through the plugin, warm instance | {} | **{:.2}** |\n\
         | api-key, native header insert | {} | 1.00 (reference) |\n\
         | (c) api-key through the plugin, fresh instance per call | {} | **{:.1}** |\n\
         | (d) api-key as production runs it: the held template, checked and spliced | {} | **{:.1}** |\n",
        us(sig_native),
        us(sig_fresh),
        sig_fresh / sig_native,
        us(sig_warm),
        sig_warm / sig_native,
        us(key_native),
        us(key_fresh),
        key_fresh / key_native,
        us(key_template),
        key_template / key_native,
    );
    write_table(root, "plugin-bench", &table)
}

fn vault_bench(root: &Path) -> Result<()> {
    run(cargo().args(["bench", "-p", "latchkey", "--bench", "vault"]))?;
    let estimate = |name: &str| median_ns(root, "vault_resolve", name);
    let map = estimate("hashmap_lookup")?;
    let warm = estimate("warm")?;
    let decrypt = estimate("decrypt")?;
    let miss = estimate("miss")?;
    let snapshot = estimate("snapshot_warm")?;
    let table = format!(
        "| measurement | time (median) | ratio |\n|---|---|---|\n\
         | `HashMap<String, Vec<u8>>` lookup by name, 100 000 entries | {} | 1.00 (reference) |\n\
         | (d) resolve, warm cache | {} | **{:.1}** |\n\
         | … of which opening the sealed blob (`crypto::open`) | {} | {:.1} |\n\
         | (e) resolve, cache miss | {} | **{:.0}** |\n\
         | (f) the call path's snapshot, warm (`Broker::open` for an agent: the record, its kept call state, the secrets opened) | {} | **{:.1}** |\n",
        us(map),
        us(warm),
        warm / map,
        us(decrypt),
        decrypt / map,
        us(miss),
        miss / map,
        us(snapshot),
        snapshot / map,
    );
    write_table(root, "vault-bench", &table)
}
