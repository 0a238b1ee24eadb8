//! Canary secrets, watched for the whole test binary.
//!
//! Every value made by [`crate::support::canary`] is registered here in the
//! forms a leak could take (raw, base64, base64url, percent-encoded, hex).
//! From the first canary on, the binary logs at TRACE through a global
//! subscriber whose writer scans every line, and a panic hook scans every
//! panic raised outside the tests' own code. A canary found in either stops
//! the whole binary at once, naming the canary's tag: no single test has to
//! remember to look, and a leak on a background task cannot go unnoticed.

use std::io::Write;
use std::sync::{Mutex, Once, RwLock};

use base64::Engine as _;

/// The forms of every canary made so far, with its tag.
static CANARIES: RwLock<Vec<(String, Vec<String>)>> = RwLock::new(Vec::new());

/// How many log bytes the scanner has read, to prove it runs.
static SCANNED: Mutex<u64> = Mutex::new(0);

/// Every form of `value` a log line, an error, a panic or an answer could
/// carry it in: raw, base64 (padded and not), base64url, percent-encoded,
/// hex, and JSON-escaped.
pub fn forms(value: &str) -> Vec<String> {
    let e = base64::engine::general_purpose::STANDARD;
    let u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pct: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut forms = vec![
        value.to_string(),
        e.encode(value),
        e.encode(value).trim_end_matches('=').to_string(),
        u.encode(value),
        pct,
        hex::encode(value),
        serde_json::to_string(value).expect("a string serialises").trim_matches('"').to_string(),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// Register `value` (made for `tag`) and make sure the watch is on.
pub fn watch(tag: &str, value: &str) {
    install();
    CANARIES.write().unwrap_or_else(|e| e.into_inner()).push((tag.to_string(), forms(value)));
}

/// The tag of the first canary `text` holds in any form.
pub fn find(text: &str) -> Option<String> {
    // Every form starts with one of these (canaries start `canary-`), so
    // most lines are cleared without looking at each canary.
    if !["canary-", "Y2FuYXJ5", "63616e617279"].iter().any(|p| text.contains(p)) {
        return None;
    }
    let canaries = CANARIES.read().unwrap_or_else(|e| e.into_inner());
    canaries.iter().find(|(_, forms)| forms.iter().any(|f| text.contains(f.as_str()))).map(|(tag, _)| tag.clone())
}

/// Log bytes scanned so far.
pub fn scanned() -> u64 {
    *SCANNED.lock().unwrap_or_else(|e| e.into_inner())
}

fn stop(what: &str, tag: &str, text: &str) -> ! {
    // The text is the leak; print where it was and which canary, not the value.
    let excerpt: String = text.chars().take(200).collect::<String>().replace(|c: char| c.is_control(), " ");
    let shown = find(&excerpt).map_or(excerpt.clone(), |_| "[the excerpt holds the canary]".to_string());
    // Straight to the process's stderr: the test harness captures what
    // `eprintln!` prints and would lose it when the process aborts.
    let report = format!("\nCANARY LEAK: canary `{tag}` appeared in {what}: {shown}\n");
    let _ = std::io::stderr().write_all(report.as_bytes());
    std::process::abort();
}

/// A log writer that scans what it is given for canaries.
struct Scanner;

impl Write for Scanner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        *SCANNED.lock().unwrap_or_else(|e| e.into_inner()) += buf.len() as u64;
        if let Some(tag) = find(&text) {
            stop("a log line", &tag, &text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Everything at TRACE except the compiler's own internals, which log
        // code generation and never see a value.
        let filter = tracing_subscriber::EnvFilter::new("trace,cranelift=info,wasmtime_cranelift=info,regalloc2=info");
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| Scanner)
            .with_ansi(false)
            .with_target(true)
            .finish();
        // A test that installed its own subscriber first keeps it.
        let _ = tracing::subscriber::set_global_default(subscriber);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The tests' own assertions may print what they compare; a panic
            // anywhere else (the broker, the vault, a plugin host) may not.
            let ours = info.location().is_some_and(|l| l.file().contains("tests/all/"));
            if !ours {
                let message = info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                if let Some(tag) = find(&message) {
                    stop("a panic message", &tag, &message);
                }
            }
            previous(info);
        }));
    });
}

#[test]
fn the_watch_scans_logs_and_knows_every_form() {
    let value = crate::support::canary("watch-self-test");
    for form in forms(&value) {
        assert_eq!(find(&format!("… {form} …")).as_deref(), Some("watch-self-test"), "{form}");
    }
    assert!(find("nothing secret here").is_none());
    let before = scanned();
    tracing::trace!(target: "latchkey::canary_self_test", "a harmless trace line");
    assert!(scanned() > before, "the TRACE subscriber is not the global one");
}

/// Run by [`a_leaked_canary_stops_the_binary`] in a child process only.
#[test]
#[ignore = "leaks a canary on purpose; run by a_leaked_canary_stops_the_binary"]
fn leak_on_purpose() {
    let value = crate::support::canary("leaked-on-purpose");
    tracing::info!(target: "latchkey::broker", "sending {value}");
}

#[test]
fn a_leaked_canary_stops_the_binary() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "canaries::leak_on_purpose", "--test-threads", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the leak went unnoticed: {stderr}");
    assert!(stderr.contains("CANARY LEAK: canary `leaked-on-purpose` appeared in a log line"), "{stderr}");
    assert!(!stderr.contains("canary-leaked-on-purpose-"), "the report repeats the value: {stderr}");
}
