//! Timing side channels in the token checks (threat catalogue case 34), by
//! dudect's method (Reparaz, Balasch, Verbauwhede: "Dude, is my code constant
//! time?"): inputs of two classes are interleaved at random, each call is
//! timed, and Welch's t-test compares the two distributions (also after
//! cropping at several percentiles). |t| above 5 is evidence of a leak; a run
//! that stays below it with millions of samples shows none measurable.
//!
//! The classes are chosen so that a leak would separate them: a *near miss*
//! (the right token with its last character changed, the case a byte-by-byte
//! comparison answers slowest) against a *random* wrong token of the same
//! length and shape.
//!
//! - `admin_token`: [`admin_token_matches`], the admin API's and the
//!   console's check (SHA-256 of the presented token, compared in constant
//!   time with the configured digest).
//! - `agent_token` (with `agent_token_control`, random against random):
//!   [`Vault::authenticate_agent`] for tokens it has seen
//!   (its cache is keyed by the token's SHA-256, so a lookup's time depends on
//!   the digest, never on how much of the token is right). Both classes are
//!   cached first; a first sighting reads the database, the same query for
//!   either class.
//!
//! The format check run before the lookup (`check_token_shape`: prefix,
//! length, alphabet) is not measured: it compares the token with a public
//! format, never with a secret, so its time tells nothing about any token
//! (dudect does see it vary with the input, through branch prediction).
//! Both classes hold the same number of distinct tokens, so neither gains
//! from warmer caches.
//!
//! Run with `cargo xtask timing` (or `cargo bench -p latchkey --bench timing`);
//! it prints `max t` per check. Not a test: a timing threshold on a shared
//! machine would be noise.

use std::sync::Arc;

use dudect_bencher::rand::RngCore;
use dudect_bencher::{BenchRng, Class, CtRunner, ctbench_main};
use latchkey::plugin::{Runtime, RuntimeConfig};
use latchkey::server::auth::admin_token_matches;
use latchkey::vault::agents::AGENT_TOKEN_PREFIX;
use latchkey::vault::crypto::MasterKey;
use latchkey::vault::{KeySource, Location, Vault, VaultOptions};

/// Samples per check and run.
const SAMPLES: usize = 1_000_000;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn random_token(rng: &mut BenchRng, prefix: &str, len: usize) -> String {
    let body: String = (0..len).map(|_| ALPHABET[(rng.next_u32() % 64) as usize] as char).collect();
    format!("{prefix}{body}")
}

/// Near misses of `token`: the 4 032 tokens that share all but its last
/// two characters and differ in the last. Thousands of them, so that which
/// hash-map buckets a class happens to land in averages out.
fn near_misses(token: &str) -> Vec<String> {
    let (head, tail) = token.split_at(token.len() - 2);
    let last = tail.as_bytes()[1];
    let mut out = Vec::new();
    for &a in ALPHABET {
        for &b in ALPHABET.iter().filter(|&&b| b != last) {
            out.push(format!("{head}{}{}", a as char, b as char));
        }
    }
    out
}

/// As many random wrong tokens as there are near misses, so both classes
/// touch the same number of distinct cache entries.
fn randoms(rng: &mut BenchRng, prefix: &str, like: &str) -> Vec<String> {
    (0..ALPHABET.len() * (ALPHABET.len() - 1)).map(|_| random_token(rng, prefix, like.len() - prefix.len())).collect()
}

/// The two classes, interleaved at random: `(class, input)` pairs.
fn interleaved(rng: &mut BenchRng, near: &[String], random: &[String]) -> Vec<(Class, String)> {
    (0..SAMPLES)
        .map(|i| {
            if rng.next_u32() & 1 == 0 {
                (Class::Left, near[i % near.len()].clone())
            } else {
                (Class::Right, random[i % random.len()].clone())
            }
        })
        .collect()
}

fn admin_token(runner: &mut CtRunner, rng: &mut BenchRng) {
    let right = random_token(rng, "", 43);
    let expected = ring::digest::digest(&ring::digest::SHA256, right.as_bytes()).as_ref().to_vec();
    let (near, random) = (near_misses(&right), randoms(rng, "", &right));
    for (class, token) in interleaved(rng, &near, &random) {
        runner.run_one(class, || std::hint::black_box(admin_token_matches(&expected, &token)));
    }
}

fn agent_token(runner: &mut CtRunner, rng: &mut BenchRng) {
    agent_lookups(runner, rng, true);
}

/// Near misses (or, for the control, other random tokens) against random
/// wrong tokens, through [`Vault::authenticate_agent`].
fn agent_lookups(runner: &mut CtRunner, rng: &mut BenchRng, near_class: bool) {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let dir = tempfile::tempdir().expect("temp dir");
    let vault = tokio.block_on(async {
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).expect("plugin runtime"));
        let master_key = MasterKey::generate().expect("master key").to_base64();
        let keys = KeySource { master_key: Some(master_key), ..KeySource::default() };
        let location = Location::SqliteFile(dir.path().join("vault.db"));
        Vault::open(VaultOptions::new(location, keys), runtime).await.expect("vault")
    });
    let agent = tokio.block_on(vault.create_agent("default", "bot", "timing")).expect("agent");
    let right = agent.token.expose().to_string();
    let near = if near_class { near_misses(&right) } else { randoms(rng, AGENT_TOKEN_PREFIX, &right) };
    let random = randoms(rng, AGENT_TOKEN_PREFIX, &right);
    // Every input seen once, so the timed calls are cache lookups of both classes.
    for t in near.iter().chain(&random) {
        assert!(tokio.block_on(vault.authenticate_agent(t)).expect("lookup").is_none());
    }
    assert!(tokio.block_on(vault.authenticate_agent(&right)).expect("lookup").is_some());
    for (class, token) in interleaved(rng, &near, &random) {
        runner.run_one(class, || std::hint::black_box(tokio.block_on(vault.authenticate_agent(&token)).is_ok()));
    }
    tokio.block_on(vault.close());
}

/// The control for `agent_token`: two pools of random wrong tokens. Its
/// `max t` is what the key sample alone does to a run; `agent_token` leaks
/// only if it stands clearly and consistently above it.
fn agent_token_control(runner: &mut CtRunner, rng: &mut BenchRng) {
    agent_lookups(runner, rng, false);
}

ctbench_main!(admin_token, agent_token, agent_token_control);
