//! The host's check of a plugin's answer (`edits::check`, then
//! `edits::apply`): whatever edits a plugin returns, the check refuses them
//! or passes only edits the declaration allows, with values that hold no
//! CR, LF or NUL and stay under the caps (THREATS cases 21, 22 and 26: the
//! host's side of whatever crosses the component boundary).

use std::collections::BTreeMap;

use latchkey::Secret;
use latchkey::plugin::edits::{
    self, Checked, Exposures, Header, MAX_EDITS, MAX_NAME_LEN, MAX_TOTAL_LEN, MAX_VALUE_LEN, Value,
};
use latchkey::plugin::{CallCredential, Edit, Exposure, Part, SchemeInfo, SecretFieldInfo, Segment};

use super::input::Input;

/// The credential's secret fields: name, value, declared exposure (`None`:
/// undeclared, so the open declaration decides).
const SECRETS: &[(&str, &str, Option<Exposure>)] = &[
    ("wire", "WIRE-SECRET-9f2c", Some(Exposure::Wire)),
    ("ident", "AKIDEXAMPLE1234", Some(Exposure::Identifier)),
    ("hidden", "HOST-ONLY-31d7", Some(Exposure::HostOnly)),
    ("crlf", "v\r\nInjected: 1", Some(Exposure::Wire)),
    ("ctl", "\u{7f}\u{0}ünï", Some(Exposure::Identifier)),
    ("open", "OPEN-FIELD-77aa", None),
];

const FIELDS: &[&str] = &["wire", "ident", "hidden", "crlf", "ctl", "open", "absent"];

const HEADERS: &[&str] = &[
    "authorization",
    "Authorization",
    "x-api-key",
    "x-amz-date",
    "host",
    "Host",
    "content-length",
    "transfer-encoding",
    "te",
    "connection",
    "proxy-authorization",
    "Proxy-Foo",
    "x-forwarded-for",
    "X-Forwarded-Host",
    "forwarded",
    "via",
    "bad name",
    "x:y",
    "",
    "*",
];

const TEXTS: &[&str] = &["Bearer ", "", " ", "\t", "a\r\nb", "\0", "ü", "%0d%0a", "\u{7f}", "=", "&", "#"];

fn text(input: &mut Input<'_>) -> String {
    input.word(TEXTS)
}

fn parts(input: &mut Input<'_>) -> Vec<Part> {
    (0..input.below(5))
        .map(|_| match input.below(3) {
            0 => Part::Text(text(input)),
            1 => Part::Secret(input.word(FIELDS)),
            _ => Part::Base64(
                (0..input.below(4))
                    .map(
                        |_| if input.bool() { Segment::Text(text(input)) } else { Segment::Secret(input.word(FIELDS)) },
                    )
                    .collect(),
            ),
        })
        .collect()
}

fn edit(input: &mut Input<'_>) -> Edit {
    match input.below(4) {
        0 => Edit::SetHeader((input.word(HEADERS), parts(input))),
        1 => Edit::AppendHeader((input.word(HEADERS), parts(input))),
        2 => Edit::RemoveHeader(input.word(HEADERS)),
        _ => Edit::AppendQuery((input.word(&["X-Amz-Signature", "a b", "", "é"]), parts(input))),
    }
}

fn exposure(input: &mut Input<'_>) -> Option<Exposure> {
    input.pick(&[None, Some(Exposure::Wire), Some(Exposure::Identifier), Some(Exposure::HostOnly)])
}

fn referenced(e: &Edit) -> Vec<&str> {
    let parts: &[Part] = match e {
        Edit::SetHeader((_, p)) | Edit::AppendHeader((_, p)) | Edit::AppendQuery((_, p)) => p,
        Edit::RemoveHeader(_) => &[],
    };
    let mut out = Vec::new();
    for p in parts {
        match p {
            Part::Text(_) => {}
            Part::Secret(f) => out.push(f.as_str()),
            Part::Base64(segs) => out.extend(segs.iter().filter_map(|s| match s {
                Segment::Secret(f) => Some(f.as_str()),
                Segment::Text(_) => None,
            })),
        }
    }
    out
}

/// The text a plugin wrote itself in an edit: its name and text parts.
fn literal_text(e: &Edit) -> String {
    let (name, parts): (&str, &[Part]) = match e {
        Edit::SetHeader((n, p)) | Edit::AppendHeader((n, p)) | Edit::AppendQuery((n, p)) => (n, p),
        Edit::RemoveHeader(n) => (n, &[]),
    };
    let mut out = name.to_string();
    for p in parts {
        match p {
            Part::Text(t) => out.push_str(t),
            Part::Secret(_) => {}
            Part::Base64(segs) => segs.iter().for_each(|s| {
                if let Segment::Text(t) = s {
                    out.push_str(t)
                }
            }),
        }
    }
    out
}

/// Target `edits`: a plugin's declaration and answer, drawn from `data`.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let writable: Vec<String> = (0..input.below(4)).map(|_| input.word(HEADERS).to_ascii_lowercase()).collect();
    let info = SchemeInfo {
        name: "fuzz".into(),
        version: "0".into(),
        description: String::new(),
        config_fields: vec![],
        secret_fields: SECRETS
            .iter()
            .filter_map(|(name, _, exposure)| {
                exposure.map(|exposure| SecretFieldInfo {
                    name: name.to_string(),
                    description: String::new(),
                    required: false,
                    exposure,
                })
            })
            .collect(),
        writable_headers: writable.clone(),
        open_secret_fields: exposure(&mut input),
        reads_body: false,
        request_independent: false,
    };
    let keyed: Vec<String> = FIELDS.iter().filter(|_| input.below(4) == 0).map(|f| f.to_string()).collect();
    let granted = input.below(8) == 0;
    let exposures = Exposures { info: &info, keyed: &keyed, granted };
    let secrets: BTreeMap<String, Secret> = SECRETS.iter().map(|(n, v, _)| (n.to_string(), Secret::new(*v))).collect();
    let cred = CallCredential::new("fuzz", 1, vec![], secrets);
    // Mostly few edits; sometimes past the cap.
    let count = if input.below(16) == 0 { MAX_EDITS + input.below(4) } else { input.below(8) };
    let answer: Vec<Edit> = (0..count).map(|_| edit(&mut input)).collect();
    let texts: String = answer.iter().map(literal_text).collect();

    // A reference to a missing or host-only field refuses the whole answer.
    let must_refuse = answer.len() > MAX_EDITS
        || answer
            .iter()
            .flat_map(referenced)
            .any(|f| !SECRETS.iter().any(|(n, _, _)| *n == f) || exposures.of(f) == Exposure::HostOnly);
    let Ok(checked) = edits::check(answer.clone(), exposures, &cred) else { return };
    assert!(!must_refuse, "an answer referring to a missing or host-only field passed: {answer:?}");
    assert_eq!(checked.len(), answer.len());
    let any = writable.iter().any(|w| w == "*");
    let mut total = 0;
    for (c, e) in checked.iter().zip(&answer) {
        let wire = referenced(e).iter().any(|f| exposures.of(f) == Exposure::Wire);
        match c {
            Checked::Set(name, v) | Checked::Append(name, v) => {
                header_name(name, any, &writable);
                assert!(edits::is_field_value(&v.text), "header `{name}` passed with a control character");
                assert!(!v.text.contains(['\r', '\n', '\0']));
                value(v, wire);
                total += name.len() + v.text.len();
            }
            Checked::Remove(name) => header_name(name, any, &writable),
            Checked::Query(name, v) => {
                assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                value(v, wire);
                total += name.len() + v.text.len();
            }
        }
    }
    assert!(total <= MAX_TOTAL_LEN);
    // No secret in Debug output: a wire or host-only value never shows
    // (unless the plugin wrote that text itself).
    let shown = format!("{checked:?}");
    for (name, secret, _) in SECRETS {
        if exposures.of(name) != Exposure::Identifier && !texts.contains(secret) {
            assert!(!shown.contains(secret), "secret field `{name}` shows in Debug output");
        }
    }

    // Applying: the URL stays in wire form and parses; every header value
    // is still a valid field value.
    let mut url = String::from(if input.bool() { "https://api.example.com/v1/x?a=1" } else { "https://h/" });
    let mut headers = vec![
        Header { name: "Host".into(), value: Value::plain("api.example.com") },
        Header { name: "authorization".into(), value: Value::plain("old") },
    ];
    edits::apply(&mut url, &mut headers, checked);
    assert!(url.bytes().all(|b| b > 0x20 && b < 0x7f), "URL left wire form: {url:?}");
    assert!(url::Url::parse(&url).is_ok(), "URL no longer parses: {url:?}");
    for h in &headers {
        assert!(edits::is_field_value(&h.value.text));
    }
}

fn header_name(name: &str, any: bool, writable: &[String]) {
    assert!(name.len() <= MAX_NAME_LEN && edits::is_token(name), "header name {name:?} passed");
    assert!(edits::denied_header(name).is_none(), "reserved header {name:?} passed");
    assert!(any || writable.iter().any(|w| w.eq_ignore_ascii_case(name)), "undeclared header {name:?} passed");
}

fn value(v: &Value, wire: bool) {
    assert!(v.text.len() <= MAX_VALUE_LEN);
    assert!(!wire || v.sensitive, "a value holding a wire secret is not marked sensitive");
}
