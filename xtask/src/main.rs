//! `cargo xtask`: the developer loop beyond `cargo build` — set-up, plugins,
//! the full test suite, benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  setup     install what the build and tests need (idempotent): the wasm32-wasip2
            target, and a Python venv in target/venv with the providers' SDKs
  plugins   build the plugin workspace to wasm32-wasip2 components (target/plugins/*.wasm)
  test      everything CI runs: formatting, clippy, host and plugin tests,
            golden vectors, and the official-SDK comparisons
  bench     criterion benchmarks; writes the measured ratios to BENCHMARKS.md
";

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "setup" => setup(&root),
        "plugins" => plugins(&root),
        "test" => test(&root),
        "bench" => bench(&root),
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

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
    let python = venv_python(root);
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(root.join("target/venv")))?;
    }
    let mut reqs: Vec<PathBuf> = std::fs::read_dir(root.join("tests/sdk"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("requirements")))
        .collect();
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

fn plugins(root: &Path) -> Result<()> {
    let target = root.join("target/wasm-plugins");
    run(cargo()
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
            "plugins/Cargo.toml",
        ])
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
        .args(["clippy", "--workspace", "--target", "wasm32-wasip2", "--manifest-path", plugins_manifest])
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", root.join("target/wasm-plugins")))?;
    // Plugin crates' own unit tests (canonicalisation, parsing) run natively.
    run(cargo()
        .args(["test", "--workspace", "--lib", "--target", &triple, "--manifest-path", plugins_manifest])
        .env("CARGO_TARGET_DIR", root.join("target/plugins-native")))?;
    // The host: unit tests, hostile guests, golden vectors, CLI, AWS SDK comparison.
    run(cargo().args(["test", "--workspace"]))?;
    // The providers' official SDKs (botocore, Alibaba, Tencent, PyJWT) against `latchkey sign`.
    run(cargo().args(["build", "-p", "latchkey"]))?;
    run(Command::new(venv_python(root))
        .args(["-m", "pytest", "-q", "tests/sdk"])
        .env("LATCHKEY_BIN", root.join("target/debug/latchkey")))?;
    eprintln!("xtask: every check passed in {:.0?}", started.elapsed());
    Ok(())
}

fn bench(root: &Path) -> Result<()> {
    run(cargo().args(["bench", "-p", "latchkey", "--bench", "plugins"]))?;
    let estimate = |group: &str, name: &str| -> Result<f64> {
        let path = root.join(format!("target/criterion/{group}/{name}/new/estimates.json"));
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["median"]["point_estimate"].as_f64().context("no median in criterion output")
    };
    let sig_native = estimate("sigv4", "native")?;
    let sig_fresh = estimate("sigv4", "plugin_fresh")?;
    let sig_warm = estimate("sigv4", "plugin_warm")?;
    let key_native = estimate("api_key", "native")?;
    let key_fresh = estimate("api_key", "plugin_fresh")?;
    let us = |ns: f64| format!("{:.2} µs", ns / 1000.0);
    let table = format!(
        "| measurement | time (median) | ratio |\n|---|---|---|\n\
         | SigV4, native `aws-sigv4` crate | {} | 1.00 (reference) |\n\
         | (a) SigV4 through the plugin, fresh instance per call | {} | **{:.2}** |\n\
         | (b) SigV4 through the plugin, warm instance | {} | **{:.2}** |\n\
         | api-key, native header insert | {} | 1.00 (reference) |\n\
         | (c) api-key through the plugin, fresh instance per call | {} | **{:.1}** |\n",
        us(sig_native),
        us(sig_fresh),
        sig_fresh / sig_native,
        us(sig_warm),
        sig_warm / sig_native,
        us(key_native),
        us(key_fresh),
        key_fresh / key_native,
    );
    println!("{table}");
    let path = root.join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = ("<!-- plugin-bench:start -->", "<!-- plugin-bench:end -->");
    match (doc.find(start), doc.find(end)) {
        (Some(s), Some(e)) if s < e => {
            let updated = format!("{}{start}\n{table}{}", &doc[..s], &doc[e..]);
            std::fs::write(&path, updated)?;
            eprintln!("xtask: BENCHMARKS.md updated");
        }
        _ => eprintln!("xtask: BENCHMARKS.md has no plugin-bench markers; table printed only"),
    }
    Ok(())
}
