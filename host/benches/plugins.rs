//! Plugin call cost against native Rust, measured in the same run.
//!
//! - `sigv4/native`: the `aws-sigv4` crate (the AWS SDK's own signer) signs a
//!   request and the instructions are applied to a header list.
//! - `sigv4/plugin_fresh`: the same request through the `aws-sigv4` plugin
//!   exactly as production runs it: a fresh instance per call, host-side
//!   HMAC, edits checked and applied.
//! - `sigv4/plugin_warm`: the plugin on one reused instance.
//! - `api_key/native`: one header pushed onto the list.
//! - `api_key/plugin_fresh`: the `api-key` plugin, fresh instance per call.
//!
//! `cargo xtask bench` runs this and writes the ratios to BENCHMARKS.md.

// `criterion_group!` generates undocumented items.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use criterion::{Criterion, criterion_group, criterion_main};
use latchkey::plugin::edits::{self, Header, Value};
use latchkey::plugin::{CallCredential, Datetime, Request};
use latchkey::{Runtime, RuntimeConfig, Secret};

const URL: &str = "https://dynamodb.us-east-1.amazonaws.com/?Action=ListTables&Version=2012-08-10";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const AT: u64 = 1_440_938_160;

fn request_headers() -> Vec<(String, String)> {
    vec![
        ("host".into(), "dynamodb.us-east-1.amazonaws.com".into()),
        ("content-type".into(), "application/x-amz-json-1.0".into()),
        ("x-amz-target".into(), "DynamoDB_20120810.ListTables".into()),
    ]
}

fn to_headers(h: &[(String, String)]) -> Vec<Header> {
    h.iter().map(|(n, v)| Header { name: n.clone(), value: Value::plain(v.clone()) }).collect()
}

fn native_sigv4(identity: &Identity, headers: &[(String, String)]) -> Vec<(String, String)> {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region("us-east-1")
        .name("dynamodb")
        .time(SystemTime::UNIX_EPOCH + Duration::from_secs(AT))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        URL,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(b""),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (new_headers, _) = instructions.into_parts();
    let mut out = headers.to_vec();
    for h in new_headers {
        out.push((h.name().to_string(), h.value().to_string()));
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let at = Datetime { seconds: AT as i64, nanoseconds: 0 };
    let headers = request_headers();
    let request = Request {
        method: "POST".into(),
        url: URL.into(),
        headers: headers.clone(),
        body_sha256: Some(EMPTY_SHA256.into()),
    };

    let sigv4 = rt.get("aws-sigv4").unwrap();
    let secrets: BTreeMap<String, Secret> = [
        ("access_key_id".to_string(), Secret::new("AKIDEXAMPLE")),
        ("secret_access_key".to_string(), Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")),
    ]
    .into();
    let config = vec![("region".to_string(), "us-east-1".to_string()), ("service".to_string(), "dynamodb".to_string())];
    let cred = Arc::new(CallCredential::new("bench", 1, config, secrets));
    let identity: Identity =
        Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "bench").into();

    // Both sides must produce the same Authorization header, or the
    // comparison is meaningless.
    let native_auth = native_sigv4(&identity, &headers).into_iter().find(|(n, _)| n == "authorization").unwrap().1;
    let mut url = URL.to_string();
    let mut hs = to_headers(&headers);
    edits::apply(&mut url, &mut hs, rt.apply(&sigv4, &cred, at, &request).unwrap());
    let plugin_auth = hs.iter().find(|h| h.name.eq_ignore_ascii_case("authorization")).unwrap().value.text.clone();
    assert_eq!(native_auth, plugin_auth, "plugin and aws-sigv4 disagree");

    let mut g = c.benchmark_group("sigv4");
    g.bench_function("native", |b| b.iter(|| black_box(native_sigv4(&identity, black_box(&headers)))));
    g.bench_function("plugin_fresh", |b| {
        b.iter(|| {
            let edits = rt.apply(&sigv4, &cred, at, black_box(&request)).unwrap();
            let (mut url, mut hs) = (URL.to_string(), to_headers(&headers));
            edits::apply(&mut url, &mut hs, edits);
            black_box(hs)
        })
    });
    let mut warm = rt.warm_instance(&sigv4, &cred, at).unwrap();
    g.bench_function("plugin_warm", |b| {
        b.iter(|| {
            let edits = warm.apply(black_box(&request)).unwrap();
            let (mut url, mut hs) = (URL.to_string(), to_headers(&headers));
            edits::apply(&mut url, &mut hs, edits);
            black_box(hs)
        })
    });
    g.finish();

    let api_key = rt.get("api-key").unwrap();
    let key_cred = Arc::new(CallCredential::new(
        "bench",
        1,
        vec![("prefix".into(), "Bearer ".into())],
        [("key".to_string(), Secret::new("sk-bench-0123456789"))].into(),
    ));
    let mut g = c.benchmark_group("api_key");
    g.bench_function("native", |b| {
        b.iter(|| {
            let mut hs = to_headers(&headers);
            hs.push(Header {
                name: "Authorization".into(),
                value: Value {
                    text: format!("Bearer {}", black_box("sk-bench-0123456789")),
                    sensitive: true,
                    scan: String::new(),
                    shown: String::new(),
                },
            });
            black_box(hs)
        })
    });
    g.bench_function("plugin_fresh", |b| {
        b.iter(|| {
            let edits = rt.apply(&api_key, &key_cred, at, black_box(&request)).unwrap();
            let (mut url, mut hs) = (URL.to_string(), to_headers(&headers));
            edits::apply(&mut url, &mut hs, edits);
            black_box(hs)
        })
    });
    // The broker's path for a request-independent scheme: the answer held
    // for this credential state, checked and spliced (no instance).
    rt.apply_call(&api_key, &key_cred, at, &request).unwrap();
    g.bench_function("plugin_template", |b| {
        b.iter(|| {
            let applied = rt.apply_template(&api_key, black_box(&key_cred)).expect("held").unwrap();
            let (mut url, mut hs) = (URL.to_string(), to_headers(&headers));
            edits::apply(&mut url, &mut hs, applied.edits);
            black_box(hs)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
