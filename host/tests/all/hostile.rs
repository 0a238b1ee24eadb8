//! Hostile plugins: each misbehaviour fails only its own call, with
//! `plugin_failed` and a reason, and the next call on the same runtime works.
//! Every test guest must have a test here named after it.

use std::sync::Arc;

use latchkey::plugin::{PluginSource, edits::Checked};
use latchkey::{Plugin, PluginError, Runtime, RuntimeConfig};

use crate::support::{at, cred, get, guests, runtime};

macro_rules! assert_guest_tested {
    ($name:ident, $path:path) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
latchkey::plugin::foreach_test_guest!(assert_guest_tested);

fn load(path: &str) -> Plugin {
    runtime().load_file(path.as_ref()).expect("test guest loads")
}

fn failed(res: Result<Vec<Checked>, PluginError>) -> String {
    match res {
        Err(e @ PluginError::Failed { .. }) => {
            assert_eq!(e.code(), "plugin_failed");
            e.to_string()
        }
        other => panic!("expected plugin_failed, got {other:?}"),
    }
}

/// A well-behaved call on the same runtime, after a failure.
fn still_works() {
    let rt = runtime();
    let p = rt.get("api-key").unwrap();
    let c = cred(&[], &[("key", "k-123")]);
    let edits = rt.apply(&p, &c, at(), &get("https://api.example.test/")).unwrap();
    assert_eq!(edits.len(), 1);
}

#[test]
fn spin() {
    let p = load(guests::SPIN);
    let msg = failed(runtime().apply(&p, &cred(&[], &[]), at(), &get("https://h.test/")));
    assert!(msg.contains("time budget"), "{msg}");
    let ok = runtime().apply(&p, &cred(&[("mode", "ok")], &[]), at(), &get("https://h.test/")).unwrap();
    assert_eq!(ok.len(), 1);
    still_works();
}

/// On the inline lane a looping call stops at the lane's short budget and
/// says so (to be run again on a pool thread), instead of failing; on the
/// pool lane it fails at the whole budget. A call that ends in time answers.
#[test]
fn spin_on_the_inline_lane() {
    use latchkey::plugin::{Lane, Overran};
    use std::time::Duration;
    let rt =
        Runtime::new(RuntimeConfig { call_timeout: Duration::from_millis(400), ..RuntimeConfig::default() }).unwrap();
    let p = rt.load_file(guests::SPIN.as_ref()).unwrap();
    let spin = cred(&[], &[]);
    let inline = rt.apply_call_in(&p, &spin, at(), &get("https://h.test/"), Lane::Inline(Duration::from_millis(20)));
    assert!(matches!(inline, Err(Overran)), "{:?}", inline.map(|r| r.map(|a| a.edits.len())));
    match rt.apply_call_in(&p, &spin, at(), &get("https://h.test/"), Lane::Pool) {
        Ok(Err(e)) => assert!(e.to_string().contains("time budget of 400 ms"), "{e}"),
        other => panic!("expected a failed call, got {:?}", other.map(|r| r.map(|a| a.edits.len()))),
    }
    // A budget longer than the whole one is held to the whole one.
    let long = rt.apply_call_in(&p, &spin, at(), &get("https://h.test/"), Lane::Inline(Duration::from_secs(60)));
    assert!(matches!(long, Err(Overran)));
    let ok = rt.apply_call_in(
        &p,
        &cred(&[("mode", "ok")], &[]),
        at(),
        &get("https://h.test/"),
        Lane::Inline(Duration::from_millis(300)),
    );
    assert_eq!(ok.unwrap().unwrap().edits.len(), 1);
}

#[test]
fn alloc() {
    // A generous time budget, so the memory cap and not the clock stops it
    // even on a loaded machine.
    let rt =
        Runtime::new(RuntimeConfig { call_timeout: std::time::Duration::from_secs(30), ..RuntimeConfig::default() })
            .unwrap();
    let p = rt.load_file(guests::ALLOC.as_ref()).unwrap();
    let msg = failed(rt.apply(&p, &cred(&[], &[]), at(), &get("https://h.test/")));
    assert!(msg.contains("memory limit"), "{msg}");
    still_works();
}

#[test]
fn panic() {
    let p = load(guests::PANIC);
    let msg = failed(runtime().apply(&p, &cred(&[], &[]), at(), &get("https://h.test/")));
    assert!(msg.contains("unreachable") && msg.contains("deliberate test panic"), "{msg}");
    still_works();
}

#[test]
fn recurse() {
    let p = load(guests::RECURSE);
    let msg = failed(runtime().apply(&p, &cred(&[], &[]), at(), &get("https://h.test/")));
    assert!(msg.contains("stack"), "{msg}");
    still_works();
}

#[test]
fn huge_output() {
    let p = load(guests::HUGE_OUTPUT);
    let cases = [
        (None, "longer than"),
        (Some("many"), "limit is 64"),
        (Some("crlf"), "control character"),
        (Some("nul"), "control character"),
        (Some("host"), "reserved to the host"),
        (Some("proxy"), "Proxy-*"),
        (Some("undeclared"), "declared writable"),
        (Some("missing-secret"), "lacks"),
    ];
    for (mode, want) in cases {
        let c = match mode {
            Some(m) => cred(&[("mode", m)], &[]),
            None => cred(&[], &[]),
        };
        let msg = failed(runtime().apply(&p, &c, at(), &get("https://h.test/")));
        assert!(msg.contains(want), "mode {mode:?}: {msg}");
        assert!(!msg.contains("Injected"), "{msg}");
    }
    still_works();
}

#[test]
fn sockets() {
    let err = runtime().load_file(guests::SOCKETS.as_ref()).unwrap_err();
    assert_eq!(err.code(), "plugin_load_failed");
    assert!(err.to_string().contains("wasi:sockets"), "{err}");
}

#[test]
fn reveal() {
    // Granted (as `support::runtime` is configured): reads the secret.
    let p = load(guests::REVEAL);
    assert!(p.reads_secrets);
    let edits = runtime().apply(&p, &cred(&[], &[("key", "12345")]), at(), &get("https://h.test/")).unwrap();
    assert!(matches!(&edits[0], Checked::Set(_, v) if v.text == "len=5"));
    // Not granted: refused at load, naming the grant.
    let bare = Runtime::new(RuntimeConfig::default()).unwrap();
    let err = bare.load_file(guests::REVEAL.as_ref()).unwrap_err();
    assert!(
        err.to_string().contains("not granted") && err.to_string().contains("--grant-secrets test-reveal"),
        "{err}"
    );
}

#[test]
fn filesystem() {
    // Rust's std imports the filesystem interfaces, so the plugin loads, but
    // with no preopened directory there is nothing it can open.
    let p = load(guests::FILESYSTEM);
    let err = runtime().apply(&p, &cred(&[], &[]), at(), &get("https://h.test/")).unwrap_err();
    assert!(err.to_string().contains("fs:"), "{err}");
    assert!(!err.to_string().contains("root:"), "{err}");
}

#[test]
fn state() {
    // Every call starts from a fresh instance: a static counter never passes
    // 1, even after a trap (CVE-2022-39393-style leftovers).
    let p = load(guests::STATE);
    let rt = runtime();
    for mode in ["count", "trap", "count", "count"] {
        let res = rt.apply(&p, &cred(&[("mode", mode)], &[]), at(), &get("https://h.test/"));
        match mode {
            "trap" => assert!(res.is_err()),
            _ => assert!(matches!(&res.unwrap()[0], Checked::Set(_, v) if v.text == "1")),
        }
    }
}

#[test]
fn imports() {
    // Host imports run outside the epoch deadline, so each is bounded per
    // call: compute ones trap one past their limit, naming it.
    let p = load(guests::IMPORTS);
    let rt = runtime();
    let key = "k".repeat(32);
    let run = |mode: &str, count: u32| {
        let c = cred(&[("mode", mode), ("count", &count.to_string())], &[("key", &key)]);
        rt.apply(&p, &c, at(), &get("https://h.test/"))
    };
    for (mode, max, unit, import) in [
        ("sign", 16, "signatures", "crypto.sign"),
        ("hmac", 256, "MACs", "crypto.hmac-sha256"),
        ("digest", 1024, "digests", "crypto.sha256"),
        ("verify", 64, "verifications", "crypto.verify"),
        ("random", 16, "bytes", "random.bytes"),
    ] {
        run(mode, max).unwrap_or_else(|e| panic!("{mode} at its limit: {e}"));
        let msg = failed(run(mode, max + 1));
        let limit = if mode == "random" { max * 1024 } else { max };
        assert!(msg.contains(&format!("exceeded the per-call limit of {limit} {unit} on `{import}`")), "{msg}");
        still_works();
    }
    // Log lines past the limit are dropped, not fatal.
    run("log", 1000).unwrap();
    // A forged credential handle (another tenant's, say) reaches nothing.
    let msg = failed(run("forge-handle", 1));
    assert!(msg.contains("handle") || msg.contains("trapped"), "{msg}");
    still_works();

    // Cache writes past the limit are dropped, and reads past theirs find nothing.
    let cached = |mode: &str, count: u32| {
        let secrets = [("key".to_string(), latchkey::Secret::new(key.clone()))].into_iter().collect();
        let config = vec![("mode".to_string(), mode.to_string()), ("count".to_string(), count.to_string())];
        let c = Arc::new(latchkey::plugin::CallCredential::new("c", 1, config, secrets).with_cache_scope("imports"));
        match &rt.apply(&p, &c, at(), &get("https://h.test/")).unwrap()[0] {
            Checked::Set(_, v) => v.text.parse::<u32>().unwrap(),
            other => panic!("{other:?}"),
        }
    };
    cached("cache", 100);
    assert_eq!(cached("cache-read", 16), 16, "the first 16 writes were kept");
    assert_eq!(cached("cache-read", 100), 16, "no write past the 16th was kept");
    assert_eq!(cached("cache-read-first", 1000), 256, "reads past 256 find nothing");
    // A credential without a cache scope is never cached.
    let unscoped = cred(&[("mode", "cache"), ("count", "1")], &[("key", &key)]);
    rt.apply(&p, &unscoped, at(), &get("https://h.test/")).unwrap();
    let read = cred(&[("mode", "cache-read"), ("count", "1")], &[("key", &key)]);
    assert!(
        matches!(&rt.apply(&p, &read, at(), &get("https://h.test/")).unwrap()[0], Checked::Set(_, v) if v.text == "0")
    );

    // One import cannot run long either: derivation chains are short, and a
    // call's `crypto` input is bounded in bytes, secrets spliced in
    // included. A generous clock, so these bounds and not the time budget
    // stop them on a loaded machine.
    let slow =
        Runtime::new(RuntimeConfig { call_timeout: std::time::Duration::from_secs(30), ..RuntimeConfig::default() })
            .unwrap();
    let p = slow.load_file(guests::IMPORTS.as_ref()).unwrap();
    let kib = "k".repeat(1024);
    let run = |mode: &str, count: u32| {
        let c = cred(&[("mode", mode), ("count", &count.to_string())], &[("key", &kib)]);
        slow.apply(&p, &c, at(), &get("https://h.test/"))
    };
    let msg = run("hmac-chain", 1).unwrap_err().to_string();
    assert!(msg.contains("at most 16 derivation steps per HMAC, not 100000"), "{msg}");
    run("digest-big", 4).unwrap();
    let over = "exceeded the per-call limit of 33554432 bytes of input on `crypto`";
    let msg = failed(run("digest-big", 5));
    assert!(msg.contains(over), "{msg}");
    let msg = failed(run("parts-bomb", 1));
    assert!(msg.contains(over), "{msg}");

    // Host time counts against the time budget, though the epoch deadline
    // fires only in Wasm: sixteen RSA signatures (a millisecond or so each)
    // run past a 2 ms budget, and an import refuses to start once it is spent.
    let quick =
        Runtime::new(RuntimeConfig { call_timeout: std::time::Duration::from_millis(2), ..RuntimeConfig::default() })
            .unwrap();
    let p = quick.load_file(guests::IMPORTS.as_ref()).unwrap();
    let rsa = include_str!("../../../plugins/jwt/testdata/rsa2048-pkcs8.pem");
    let c = cred(&[("mode", "sign-rsa"), ("count", "16")], &[("key", rsa)]);
    let msg = failed(quick.apply(&p, &c, at(), &get("https://h.test/")));
    assert!(msg.contains("exceeded its time budget of 2 ms"), "{msg}");
}

#[test]
fn hostile_calls_do_not_starve_others() {
    let rt = runtime();
    let spin = Arc::new(load(guests::SPIN));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let p = spin.clone();
            std::thread::spawn(move || runtime().apply(&p, &cred(&[], &[]), at(), &get("https://h.test/")).is_err())
        })
        .collect();
    for _ in 0..50 {
        still_works();
    }
    for t in threads {
        assert!(t.join().unwrap());
    }
    let _ = rt;
}

#[test]
fn invalid_components_are_refused_at_load() {
    let rt = runtime();
    let garbage = rt.load_bytes(b"definitely not wasm", PluginSource::Builtin).unwrap_err();
    assert_eq!(garbage.code(), "plugin_load_failed");
    // A valid, empty component: the wrong world.
    let empty = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    let err = rt.load_bytes(&empty, PluginSource::Builtin).unwrap_err();
    assert!(err.to_string().contains("scheme-plugin world"), "{err}");
    // A core module is not a component.
    let core = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    assert!(rt.load_bytes(&core, PluginSource::Builtin).is_err());
    // Over the size cap.
    let big = vec![0u8; rt.config().max_plugin_size + 1];
    assert!(rt.load_bytes(&big, PluginSource::Builtin).unwrap_err().to_string().contains("limit"));
}

/// THREATS.md case 25: compilation has a time cap too. A real component
/// whose compilation cannot finish within the cap (1 ns here) is refused
/// with `plugin_load_failed` and the cap in the message; with the default
/// cap it loads.
#[test]
fn compilation_over_the_time_cap_is_refused() {
    let bytes = std::fs::read(guests::SPIN).unwrap();
    let capped = Runtime::new(RuntimeConfig {
        compile_timeout: std::time::Duration::from_nanos(1),
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let err = capped.load_bytes(&bytes, PluginSource::Builtin).unwrap_err();
    assert_eq!(err.code(), "plugin_load_failed", "{err}");
    assert!(err.to_string().contains("compilation took longer than"), "{err}");
    runtime().load_bytes(&bytes, PluginSource::Builtin).expect("the same component loads under the default cap");
}

#[test]
fn readme_example() {
    // The example in README.md is this guest, verbatim.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/test-guests/readme-example/src/lib.rs"
    ))
    .unwrap();
    let body = src.split_once("\n\n").unwrap().1;
    assert!(readme.contains(body), "README.md's plugin example and plugins/test-guests/readme-example differ");
    let p = load(guests::README_EXAMPLE);
    assert!(!p.reads_secrets);
    let edits = runtime().apply(&p, &cred(&[], &[("key", "k-9")]), at(), &get("https://h.test/")).unwrap();
    assert!(matches!(&edits[0], Checked::Set(n, v) if n == "x-api-key" && v.text == "k-9" && v.sensitive));
}

/// What one of the `declare-*` guests answers for a credential holding the
/// given fields, in a mode.
fn declared(path: &str, mode: &str, fields: &[(&str, &str)]) -> Result<Vec<Checked>, PluginError> {
    let p = load(path);
    runtime().apply(&p, &cred(&[("mode", mode)], fields), at(), &get("https://h.test/"))
}

/// Field names that a host-side list used to exempt, and arbitrary ones.
const NAMES: &[&str] = &["token", "access_key_id", "secret_id", "session_token", "security_token", "X-Weird_Name.1"];

fn fields() -> Vec<(&'static str, &'static str)> {
    NAMES.iter().map(|n| (*n, "v4lue-of-a-field")).collect()
}

#[test]
fn declare_host_only() {
    // A field declared host-only never reaches the request, whatever its
    // name, verbatim, base64-encoded or as a query parameter.
    for mode in ["header", "base64", "query"] {
        let msg = failed(declared(guests::DECLARE_HOST_ONLY, mode, &fields()));
        assert!(msg.contains("host-only") && !msg.contains("v4lue"), "{mode}: {msg}");
    }
    // Used only as a key, it is fine: only the MAC leaves.
    let edits = declared(guests::DECLARE_HOST_ONLY, "hmac", &fields()).unwrap();
    assert_eq!(edits.len(), NAMES.len());
    still_works();
}

#[test]
fn declare_identifier() {
    // Identifiers may be placed; they are not marked as secrets on the wire.
    let edits = declared(guests::DECLARE_IDENTIFIER, "header", &fields()).unwrap();
    assert_eq!(edits.len(), NAMES.len());
    for e in &edits {
        let Checked::Set(_, v) = e else { panic!("{e:?}") };
        assert!(!v.sensitive && v.text == "v4lue-of-a-field" && v.scan == "\0", "{e:?}");
    }
    // A field the plugin used as a key is host-only for that call, whatever
    // it declared: a plugin that lies about its key is caught.
    let msg = failed(declared(guests::DECLARE_IDENTIFIER, "keyed", &fields()));
    assert!(msg.contains("host-only"), "{msg}");
    still_works();
}

#[test]
fn declare_wire() {
    // Wire secrets are spliced and marked, verbatim and inside base64.
    for mode in ["header", "base64", "query"] {
        let edits = declared(guests::DECLARE_WIRE, mode, &fields()).unwrap();
        assert!(!edits.is_empty());
        for e in &edits {
            let (Checked::Set(_, v) | Checked::Query(_, v)) = e else { panic!("{e:?}") };
            assert!(v.sensitive, "{mode}: {e:?}");
        }
    }
    still_works();
}
