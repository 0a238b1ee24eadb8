//! Golden vectors: every case in `tests/vectors/*.json` through the real
//! plugin, compared with the whole outgoing request. See tests/vectors/README.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use latchkey::Secret;
use latchkey::plugin::CallCredential;
use latchkey::sign::{self, SignInput};
use serde::Deserialize;

use crate::support::runtime;

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    at: String,
    request: Req,
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    expect_explain: Vec<String>,
    #[serde(default)]
    expect_error: Option<String>,
}

#[derive(Deserialize)]
struct Req {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body_base64: String,
}

#[derive(Deserialize)]
struct Expect {
    url: Option<String>,
    headers: Vec<(String, String)>,
}

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

/// Run one scheme's vector file; returns how many cases ran.
fn check(scheme: &str) -> usize {
    let path = vector_dir().join(format!("{scheme}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: File = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!file.cases.is_empty(), "{scheme}: no cases");
    let rt = runtime();
    let plugin = rt.get(scheme).unwrap();
    let mut failures = Vec::new();
    for case in &file.cases {
        if let Err(msg) = run_case(rt, &plugin, case) {
            failures.push(format!("{}: {msg}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{scheme}: {} of {} cases failed:\n{}",
        failures.len(),
        file.cases.len(),
        failures.join("\n")
    );
    file.cases.len()
}

fn run_case(rt: &latchkey::Runtime, plugin: &latchkey::Plugin, case: &Case) -> Result<(), String> {
    let at = time::OffsetDateTime::parse(&case.at, &time::format_description::well_known::Rfc3339)
        .map_err(|e| e.to_string())?;
    let input = SignInput {
        method: case.request.method.clone(),
        url: case.request.url.clone(),
        headers: case.request.headers.clone(),
        body: base64::engine::general_purpose::STANDARD.decode(&case.request.body_base64).map_err(|e| e.to_string())?,
        at: Some(at),
        body_digest: latchkey::sign::BodyDigest::Compute,
        origin: None,
    };
    let config: Vec<(String, String)> = case.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let secrets: BTreeMap<String, Secret> =
        case.secrets.iter().map(|(k, v)| (k.clone(), Secret::new(v.clone()))).collect();
    let result = (|| {
        let prepared = sign::prepare(&input)?;
        sign::check_credential(rt, plugin, &config, &secrets)?;
        // A credential per case: plugin caches (minted JWTs) are per credential.
        let cred = Arc::new(CallCredential::new(case.name.clone(), 1, config.clone(), secrets.clone()));
        let signed = sign::sign(rt, plugin, &cred, &prepared)?;
        Ok::<_, sign::SignError>((signed, sign::explain(rt, plugin, &cred, &prepared)?))
    })();
    match (&case.expect_error, result) {
        (Some(want), Err(e)) if e.to_string().contains(want.as_str()) => Ok(()),
        (Some(want), Err(e)) => Err(format!("error {e:?} does not contain {want:?}")),
        (Some(want), Ok(_)) => Err(format!("expected an error containing {want:?}, got success")),
        (None, Err(e)) => Err(format!("failed: {e}")),
        (None, Ok((signed, explain))) => {
            if let Some(exp) = &case.expect {
                let want_url = exp.url.as_deref().unwrap_or(&case.request.url);
                if signed.url != want_url {
                    return Err(format!("url\n  got  {}\n  want {}", signed.url, want_url));
                }
                if signed.headers != exp.headers {
                    return Err(format!("headers\n  got  {:?}\n  want {:?}", signed.headers, exp.headers));
                }
            }
            for s in &case.expect_explain {
                if !explain.contains(s.as_str()) {
                    return Err(format!("explain does not contain {s:?}; it was:\n{explain}"));
                }
            }
            for v in case.secrets.values().filter(|v| v.len() >= 8) {
                if explain.contains(v.as_str()) {
                    return Err("explain contains a secret value".into());
                }
            }
            Ok(())
        }
    }
}

macro_rules! vectors {
    ($($test:ident => $scheme:literal),* $(,)?) => {
        $(#[test] fn $test() { check($scheme); })*

        /// Every vector file has a test above, and every test its file.
        #[test]
        fn every_vector_file_is_checked() {
            let mut known = vec![$($scheme),*];
            known.sort();
            let mut files: Vec<String> = std::fs::read_dir(vector_dir()).unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
                .collect();
            files.sort();
            assert_eq!(files, known);
        }
    };
}

vectors! {
    aws_sigv4 => "aws-sigv4",
    aliyun_acs3 => "aliyun-acs3",
    tencent_tc3 => "tencent-tc3",
    jwt => "jwt",
}
