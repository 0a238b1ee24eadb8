//! The WASI a plugin gets: enough for Rust's standard library to run (and to
//! report a panic), and nothing that reaches outside the call.
//!
//! No preopened directories, no environment, no arguments, no stdin, stdout
//! discarded, stderr captured into a small buffer for error reports, sockets
//! and name lookup disabled, and clocks frozen at the call's signing time so a
//! plugin has no ambient clock.

use std::time::Duration;

use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::bindings::Datetime;

/// Capacity of the captured stderr of one call.
pub(crate) const STDERR_CAPACITY: usize = 4096;

struct FrozenWallClock(Duration);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

pub(crate) fn sandbox_ctx(now: Datetime, stderr: MemoryOutputPipe) -> WasiCtx {
    let since_epoch = Duration::new(now.seconds.max(0) as u64, now.nanoseconds);
    WasiCtxBuilder::new()
        .stderr(stderr)
        .wall_clock(FrozenWallClock(since_epoch))
        .monotonic_clock(FrozenMonotonicClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build()
}

/// Whether a component may import `name` (an interface name such as
/// `wasi:io/streams@0.2.6`), given whether it holds the `secrets` grant.
///
/// Filesystem interfaces are allowed because Rust's standard library imports
/// them; with no preopened directory they can open nothing. Sockets, HTTP and
/// anything unknown are refused at load time.
pub(crate) fn import_allowed(name: &str, secrets_granted: bool) -> bool {
    let iface = name.split('@').next().unwrap_or(name);
    match iface {
        "latchkey:plugin/types"
        | "latchkey:plugin/credentials"
        | "latchkey:plugin/crypto"
        | "latchkey:plugin/cache"
        | "latchkey:plugin/log"
        | "latchkey:plugin/random" => true,
        "latchkey:plugin/secrets" => secrets_granted,
        "wasi:io/error" | "wasi:io/streams" | "wasi:io/poll" => true,
        "wasi:cli/environment"
        | "wasi:cli/exit"
        | "wasi:cli/stdin"
        | "wasi:cli/stdout"
        | "wasi:cli/stderr"
        | "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr" => true,
        "wasi:clocks/wall-clock" | "wasi:clocks/monotonic-clock" => true,
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => true,
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::import_allowed;

    #[test]
    fn policy() {
        assert!(import_allowed("latchkey:plugin/crypto@0.1.0", false));
        assert!(!import_allowed("latchkey:plugin/secrets@0.1.0", false));
        assert!(import_allowed("latchkey:plugin/secrets@0.1.0", true));
        assert!(!import_allowed("wasi:sockets/tcp@0.2.6", true));
        assert!(!import_allowed("wasi:http/outgoing-handler@0.2.6", true));
        assert!(!import_allowed("evil:thing/x", true));
    }
}
