//! Native tests of the pure signer: the host's crypto is stood in for by a
//! small SHA-256/HMAC below, and the host's edit rules by `apply_edits`, so
//! the whole golden-vector file runs here too, without Wasm.

use super::*;
use canonical::{encode_single, normalize, plan};
use latchkey_plugin_sdk::encoding::base64;

/// FIPS 180-4 SHA-256, for tests only (the plugin hashes in the host).
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for i in 0..8 {
            h[i] = h[i].wrapping_add(v[i]);
        }
    }
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[4 * i..4 * i + 4].copy_from_slice(&h[i].to_be_bytes());
    }
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(sha256(&inner)).collect();
    sha256(&outer)
}

type Secrets = Vec<(String, String)>;

fn secret<'a>(secrets: &'a Secrets, field: &str) -> &'a str {
    secrets.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str()).expect("secret present")
}

fn render(parts: &[Part], secrets: &Secrets) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.clone(),
            Part::Secret(f) => secret(secrets, f).to_string(),
            Part::Base64(_) => panic!("SigV4 never base64-encodes a secret"),
        })
        .collect()
}

/// What the host does with an answer: `set-header` replaces the first header
/// of that name in place and drops the others, or appends; query parameters
/// are appended RFC 3986-encoded.
fn apply_edits(url: &mut String, headers: &mut Vec<(String, String)>, edits: &[Edit], secrets: &Secrets) {
    for e in edits {
        match e {
            Edit::SetHeader((name, parts)) => {
                let value = render(parts, secrets);
                let mut seen = false;
                headers.retain_mut(|(n, v)| {
                    if !n.eq_ignore_ascii_case(name) {
                        return true;
                    }
                    if seen {
                        return false;
                    }
                    seen = true;
                    *v = value.clone();
                    true
                });
                if !seen {
                    headers.push((name.clone(), value));
                }
            }
            Edit::AppendHeader((name, parts)) => headers.push((name.clone(), render(parts, secrets))),
            Edit::RemoveHeader(name) => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            Edit::AppendQuery((name, parts)) => {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&canonical::encode(name.as_bytes(), true));
                url.push('=');
                url.push_str(&canonical::encode(render(parts, secrets).as_bytes(), true));
            }
        }
    }
}

/// One signing run, as `latchkey sign` does it but with the test crypto.
struct Signed {
    url: String,
    headers: Vec<(String, String)>,
    canonical_request: String,
    explain_canonical: String,
}

fn sign(
    config: &[(&str, &str)],
    secrets: &Secrets,
    at: i64,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Signed, Error> {
    let config = Config::new(config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    settings::check(&config)?;
    let parsed = Url::parse(url)?;
    let settings = Settings::resolve(&config, &parsed.host)?;
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let body_sha256 = body.map(|b| hex(&sha256(b)));
    let req = Request {
        method,
        url: &parsed,
        headers: &headers,
        body_sha256: body_sha256.as_deref(),
        has_session_token: secrets.iter().any(|(k, _)| k == SESSION_TOKEN),
    };
    let plan = plan(&settings, &req, Utc::from_unix(at))?;
    let canonical_request = render(&plan.canonical_request, secrets);
    let sts = plan.string_to_sign(&hex(&sha256(canonical_request.as_bytes())));
    let explain_canonical = format!("{}\n\n{sts}", canonical::display(&plan.canonical_request));
    let mut key = [b"AWS4".as_slice(), secret(secrets, SECRET_ACCESS_KEY).as_bytes()].concat();
    for d in plan.derivation() {
        key = hmac(&key, d).to_vec();
    }
    let signature = hex(&hmac(&key, sts.as_bytes()));
    let edits = plan.finish(&signature);
    let mut out_url = url.to_string();
    let mut out_headers = headers.clone();
    apply_edits(&mut out_url, &mut out_headers, &edits, secrets);
    Ok(Signed { url: out_url, headers: out_headers, canonical_request, explain_canonical })
}

fn aws_doc_secrets() -> Secrets {
    vec![
        (ACCESS_KEY_ID.into(), "AKIAIOSFODNN7EXAMPLE".into()),
        (SECRET_ACCESS_KEY.into(), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
    ]
}

fn suite_secrets() -> Secrets {
    vec![
        (ACCESS_KEY_ID.into(), "AKIDEXAMPLE".into()),
        (SECRET_ACCESS_KEY.into(), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
    ]
}

/// 2013-05-24T00:00:00Z, the S3 documentation examples' time.
const S3_DOC_TIME: i64 = 1_369_353_600;
/// 2015-08-30T12:36:00Z, the aws-c-auth suite's time.
const SUITE_TIME: i64 = 1_440_938_160;

fn header<'a>(s: &'a Signed, name: &str) -> Option<&'a str> {
    s.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[test]
fn test_crypto_is_right() {
    assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(hex(&sha256(&[b'a'; 200])), "c2a908d98f5df987ade41b5fce213067efbcc21ef2240212a41e54b5e7c28ae5");
    // RFC 4231 test case 2.
    assert_eq!(
        hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn s3_get_object_with_range() {
    let s = sign(
        &[],
        &aws_doc_secrets(),
        S3_DOC_TIME,
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        &[("Range", "bytes=0-9")],
        Some(b""),
    )
    .unwrap();
    assert_eq!(
        header(&s, "authorization").unwrap(),
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
         SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
         Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    );
    assert_eq!(header(&s, "x-amz-date"), Some("20130524T000000Z"));
}

#[test]
fn s3_put_object_encodes_dollar_once() {
    for path in ["/test$file.text", "/test%24file.text"] {
        let s = sign(
            &[],
            &aws_doc_secrets(),
            S3_DOC_TIME,
            "PUT",
            &format!("https://examplebucket.s3.amazonaws.com{path}"),
            &[("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
            Some(b"Welcome to Amazon S3."),
        )
        .unwrap();
        assert!(s.canonical_request.starts_with("PUT\n/test%24file.text\n\n"), "{}", s.canonical_request);
        assert!(header(&s, "authorization").unwrap().ends_with(
            "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, \
             Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        ));
        assert_eq!(
            header(&s, "x-amz-content-sha256"),
            Some("44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        );
    }
}

#[test]
fn s3_bucket_lifecycle_and_list() {
    let run = |url: &str| {
        let s = sign(&[], &aws_doc_secrets(), S3_DOC_TIME, "GET", url, &[], Some(b"")).unwrap();
        header(&s, "authorization").unwrap().rsplit('=').next().unwrap().to_string()
    };
    assert_eq!(
        run("https://examplebucket.s3.amazonaws.com/?lifecycle"),
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    );
    assert_eq!(
        run("https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J"),
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    );
}

#[test]
fn s3_presigned_url() {
    let s = sign(
        &[("signature_location", "query"), ("expires_seconds", "86400")],
        &aws_doc_secrets(),
        S3_DOC_TIME,
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(
        s.url,
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date=20130524T000000Z&X-Amz-SignedHeaders=host&X-Amz-Expires=86400\
         &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    );
    assert!(s.headers.is_empty());
    assert!(s.explain_canonical.contains("X-Amz-Credential=<access_key_id>%2F20130524"));
}

#[test]
fn suite_get_vanilla_both_modes() {
    let cfg = [("region", "us-east-1"), ("service", "service")];
    let s = sign(&cfg, &suite_secrets(), SUITE_TIME, "GET", "https://example.amazonaws.com/", &[], Some(b"")).unwrap();
    assert_eq!(
        s.headers,
        vec![
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
            (
                "authorization".to_string(),
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                    .to_string()
            ),
        ]
    );
    let q = [("region", "us-east-1"), ("service", "service"), ("signature_location", "query")];
    let s = sign(&q, &suite_secrets(), SUITE_TIME, "GET", "https://example.amazonaws.com/", &[], Some(b"")).unwrap();
    assert!(s.url.ends_with("e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d"), "{}", s.url);
}

#[test]
fn session_token_signed_or_omitted() {
    let mut secrets = suite_secrets();
    secrets.push((SESSION_TOKEN.into(), "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267".into()));
    let cfg = [("region", "us-east-1"), ("service", "service")];
    let s = sign(&cfg, &secrets, SUITE_TIME, "GET", "https://example.amazonaws.com/", &[], Some(b"")).unwrap();
    assert_eq!(s.headers[0].0, "x-amz-security-token");
    assert!(header(&s, "authorization").unwrap().ends_with(
        "SignedHeaders=host;x-amz-date;x-amz-security-token, \
         Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
    ));
    assert!(s.explain_canonical.contains("x-amz-security-token:<session_token>\n"));
    assert!(!s.explain_canonical.contains("6e86291e"));

    // Presigning with a signed token is refused rather than signed wrongly.
    let q = [("region", "us-east-1"), ("service", "service"), ("signature_location", "query")];
    let err = sign(&q, &secrets, SUITE_TIME, "GET", "https://example.amazonaws.com/", &[], Some(b"")).err().unwrap();
    assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("session token")), "{err:?}");
}

#[test]
fn missing_body_hash_is_never_silently_unsigned() {
    let cfg = [("region", "us-east-1"), ("service", "service")];
    let err =
        sign(&cfg, &suite_secrets(), SUITE_TIME, "PUT", "https://example.amazonaws.com/", &[], None).err().unwrap();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("unsigned_payload")), "{err:?}");
    let cfg = [("region", "us-east-1"), ("service", "service"), ("unsigned_payload", "true")];
    let s = sign(&cfg, &suite_secrets(), SUITE_TIME, "PUT", "https://example.amazonaws.com/", &[], None).unwrap();
    assert_eq!(header(&s, "x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
    assert!(s.canonical_request.ends_with("\nUNSIGNED-PAYLOAD"));
}

#[test]
fn s3_paths_are_kept_and_others_normalised_and_double_encoded() {
    let path = "/a//b/./c/../d%2Fe%20f+g/%E2%82%AC";
    let s3 =
        sign(&[], &aws_doc_secrets(), S3_DOC_TIME, "GET", &format!("https://b.s3.amazonaws.com{path}"), &[], Some(b""))
            .unwrap();
    assert!(
        s3.canonical_request.starts_with("GET\n/a//b/./c/../d%2Fe%20f%2Bg/%E2%82%AC\n"),
        "{}",
        s3.canonical_request
    );
    let other = sign(
        &[],
        &aws_doc_secrets(),
        S3_DOC_TIME,
        "GET",
        &format!("https://execute-api.us-east-1.amazonaws.com{path}"),
        &[],
        Some(b""),
    )
    .unwrap();
    assert!(
        other.canonical_request.starts_with("GET\n/a/b/d%252Fe%2520f%2Bg/%25E2%2582%25AC\n"),
        "{}",
        other.canonical_request
    );
}

#[test]
fn path_helpers() {
    assert_eq!(normalize("/"), "/");
    assert_eq!(normalize("//"), "/");
    assert_eq!(normalize("/./"), "/");
    assert_eq!(normalize("/example/.."), "/");
    assert_eq!(normalize("/a/b/../.."), "/");
    assert_eq!(normalize("/a/b/.."), "/a");
    assert_eq!(normalize("//example//"), "/example/");
    assert_eq!(normalize("/../x"), "/x");
    assert_eq!(encode_single("/a b+c%2fd%zz~"), "/a%20b%2Bc%2fd%25zz~");
}

#[test]
fn query_canonicalisation() {
    let cfg = [("region", "us-east-1"), ("service", "service")];
    let s = sign(
        &cfg,
        &suite_secrets(),
        SUITE_TIME,
        "GET",
        "https://example.amazonaws.com/?b=2&a&a=1&=empty&c=%2f%7E+&&d=x=y&a=",
        &[],
        Some(b""),
    )
    .unwrap();
    let line = s.canonical_request.lines().nth(2).unwrap();
    assert_eq!(line, "=empty&a=&a=&a=1&b=2&c=%2F~%2B&d=x%3Dy");
}

#[test]
fn headers_fold_group_and_skip() {
    let cfg = [("region", "us-east-1"), ("service", "service")];
    let s = sign(
        &cfg,
        &suite_secrets(),
        SUITE_TIME,
        "GET",
        "https://example.amazonaws.com:8443/",
        &[
            ("My-Header", "  a   b \t c  "),
            ("User-Agent", "curl"),
            ("my-header", "second"),
            ("Authorization", "Bearer stale"),
            ("X-Amz-Date", "19990101T000000Z"),
            ("Connection", "close"),
            ("Host", "Example.amazonaws.com:8443"),
            ("X-Amz-Security-Token", "caller-token"),
            ("Empty", ""),
        ],
        Some(b""),
    )
    .unwrap();
    assert!(
        s.canonical_request.contains(
            "empty:\nhost:example.amazonaws.com:8443\nmy-header:a b c,second\nx-amz-date:20150830T123600Z\n\n\
             empty;host;my-header;x-amz-date\n"
        ),
        "{}",
        s.canonical_request
    );
    // The replaced headers stay where they were; the caller's token is gone.
    let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["My-Header", "User-Agent", "my-header", "Authorization", "X-Amz-Date", "Connection", "Host", "Empty"]
    );
    assert_eq!(header(&s, "x-amz-date"), Some("20150830T123600Z"));
    assert!(header(&s, "authorization").unwrap().starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));

    let err = sign(
        &cfg,
        &suite_secrets(),
        SUITE_TIME,
        "GET",
        "https://example.amazonaws.com/",
        &[("Host", "other.example")],
        Some(b""),
    )
    .err()
    .unwrap();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("Host")), "{err:?}");
}

#[test]
fn presigned_urls_are_not_signed_twice() {
    let cfg = [("region", "us-east-1"), ("service", "s3")];
    let err = sign(
        &cfg,
        &suite_secrets(),
        SUITE_TIME,
        "GET",
        "https://example.amazonaws.com/k?X-Amz-Signature=abc",
        &[],
        Some(b""),
    )
    .err()
    .unwrap();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("X-Amz-Signature")), "{err:?}");
}

#[test]
fn validates_secrets_without_echoing_them() {
    let c = Config::new(vec![]);
    assert!(AwsSigV4::validate_secret(&c, ACCESS_KEY_ID, "AKIAIOSFODNN7EXAMPLE").is_ok());
    let err = AwsSigV4::validate_secret(&c, ACCESS_KEY_ID, "AKIA/SECRETISH").unwrap_err();
    assert!(matches!(&err, Error::InvalidSecret(m) if !m.contains("SECRETISH")), "{err:?}");
    assert!(AwsSigV4::validate_secret(&c, SESSION_TOKEN, "abc def").is_err());
    assert!(AwsSigV4::validate_secret(&c, SESSION_TOKEN, "AQoD+/==").is_ok());
    assert!(AwsSigV4::validate_secret(&c, SECRET_ACCESS_KEY, "").is_err());
    assert!(AwsSigV4::validate_secret(&c, "other", "x").is_err());
}

#[test]
fn clock_comes_from_the_call() {
    // The same request at two injected times gives two dates and signatures,
    // and the same time twice gives the same bytes: no ambient clock.
    let cfg = [("region", "us-east-1"), ("service", "service")];
    let run = |t| sign(&cfg, &suite_secrets(), t, "GET", "https://example.amazonaws.com/", &[], Some(b"")).unwrap();
    let (a, b, c) = (run(SUITE_TIME), run(SUITE_TIME + 16 * 60), run(SUITE_TIME));
    assert_eq!(header(&a, "x-amz-date"), Some("20150830T123600Z"));
    assert_eq!(header(&b, "x-amz-date"), Some("20150830T125200Z"));
    assert_eq!(a.headers, c.headers);
    assert_ne!(a.headers, b.headers);
}

/// Every case of the golden-vector file, through the pure signer.
#[test]
fn golden_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/aws-sigv4.json");
    let text = std::fs::read_to_string(path).expect("vector file");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("vector JSON");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() > 50, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let strs = |v: &serde_json::Value| -> Vec<(String, String)> {
            v.as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
                .unwrap_or_default()
        };
        let config = strs(&case["config"]);
        let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let secrets = strs(&case["secrets"]);
        let at = parse_rfc3339(case["at"].as_str().unwrap());
        let req = &case["request"];
        let headers: Vec<(String, String)> = req["headers"]
            .as_array()
            .map(|a| {
                a.iter().map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string())).collect()
            })
            .unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = decode_b64(req["body_base64"].as_str().unwrap_or(""));
        let url = req["url"].as_str().unwrap();
        let result = sign(&config, &secrets, at, req["method"].as_str().unwrap(), url, &headers, Some(&body));
        match (result, case["expect_error"].as_str()) {
            (Err(e), Some(want)) => {
                let text = format!("{e:?}");
                if !text.contains(want) {
                    failures.push(format!("{name}: error {text} lacks {want:?}"));
                }
            }
            (Err(e), None) => failures.push(format!("{name}: unexpected error {e:?}")),
            (Ok(_), Some(want)) => failures.push(format!("{name}: expected error {want:?}")),
            (Ok(s), None) => {
                let expect = &case["expect"];
                let want_url = expect["url"].as_str().unwrap_or(url);
                if s.url != want_url {
                    failures.push(format!("{name}: url\n  got  {}\n  want {want_url}", s.url));
                }
                let want_headers: Vec<(String, String)> = expect["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
                    .collect();
                if s.headers != want_headers {
                    failures.push(format!("{name}: headers\n  got  {:?}\n  want {want_headers:?}", s.headers));
                }
                for want in case["expect_explain"].as_array().into_iter().flatten() {
                    let want = want.as_str().unwrap();
                    if !s.explain_canonical.contains(want) {
                        failures.push(format!("{name}: explain lacks {want:?}\n{}", s.explain_canonical));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn parse_rfc3339(s: &str) -> i64 {
    // `YYYY-MM-DDTHH:MM:SSZ` only, which is all the vector file uses.
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

fn decode_b64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = A.iter().position(|&a| a == c).unwrap() as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn test_helpers_round_trip() {
    assert_eq!(parse_rfc3339("2015-08-30T12:36:00Z"), SUITE_TIME);
    assert_eq!(parse_rfc3339("2013-05-24T00:00:00Z"), S3_DOC_TIME);
    assert_eq!(decode_b64(&base64(b"\x00\xffbinary")), b"\x00\xffbinary");
}
