//! Builds the plugin workspace (`plugins/`) for `wasm32-wasip2` and generates:
//!
//! - `builtin.rs`: the built-in scheme components, embedded in the binary;
//! - `test_guests.rs`: paths of the hostile test guests and a
//!   `foreach_test_guest!` macro, so a guest without a test fails to compile.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in schemes: crate directory under `plugins/` = scheme name.
const BUILTIN: &[&str] = &["api-key", "basic", "custom-headers", "jwt", "aws-sigv4", "aliyun-acs3", "tencent-tc3"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().and_then(Path::parent).unwrap().to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    // Watch sources only: `plugins/target` (a plugin author's own builds)
    // must not make every host build re-run this script.
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", plugins.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", plugins.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", plugins.join(".cargo/config.toml").display());
    let mut guests = Vec::new();
    for dir in fs::read_dir(&plugins).unwrap().filter_map(|e| e.ok()).map(|e| e.path()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if !dir.is_dir() || name == "target" || name.starts_with('.') {
            continue;
        }
        if name == "test-guests" {
            for g in fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path()) {
                if g.join("Cargo.toml").exists() {
                    println!("cargo:rerun-if-changed={}", g.display());
                    guests.push(g.file_name().unwrap().to_string_lossy().to_string());
                } else if g.is_file() {
                    // Source shared by several guests (`include!`d).
                    println!("cargo:rerun-if-changed={}", g.display());
                }
            }
        } else {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    guests.sort();

    // A target directory of its own: the outer cargo holds the lock on ours.
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("wasm-plugins");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--workspace", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        // From the plugin workspace, so its `.cargo/config.toml` (guest
        // link flags) applies.
        .current_dir(&plugins)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        // Under `cargo clippy`, the wrapper and its lint flags would apply to
        // the guest build too; the plugins are linted by `cargo xtask test`.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .status()
        .expect("running cargo for the plugin workspace");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed; is the target installed? \
             (`rustup target add wasm32-wasip2`)"
        );
    }
    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");
    let artifact = |crate_name: &str| -> PathBuf {
        let p = wasm_dir.join(format!("{}.wasm", crate_name.replace('-', "_")));
        assert!(p.exists(), "missing plugin artifact {}", p.display());
        p
    };

    let mut builtin = String::from("/// Built-in scheme components: (scheme name, component bytes).\n");
    builtin.push_str("pub const BUILTIN: &[(&str, &[u8])] = &[\n");
    for name in BUILTIN {
        let path = artifact(&format!("latchkey-scheme-{name}"));
        writeln!(builtin, "    ({name:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    builtin.push_str("];\n");
    write_if_changed(&out_dir.join("builtin.rs"), &builtin);

    let mut tg = String::new();
    for g in &guests {
        let path = artifact(&format!("test-guest-{g}"));
        let ident = g.replace('-', "_").to_uppercase();
        writeln!(tg, "/// The `{g}` test guest.\npub const {ident}: &str = {:?};", path.display().to_string()).unwrap();
    }
    tg.push_str("/// Calls `$mac!(name, PATH)` for every test guest.\n#[macro_export]\nmacro_rules! foreach_test_guest {\n    ($mac:ident) => {\n");
    for g in &guests {
        let ident = g.replace('-', "_");
        writeln!(tg, "        $mac!({ident}, $crate::test_guests::{});", ident.to_uppercase()).unwrap();
    }
    tg.push_str("    };\n}\n");
    write_if_changed(&out_dir.join("test_guests.rs"), &tg);
}

fn write_if_changed(path: &Path, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap();
    }
}
