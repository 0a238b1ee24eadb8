//! The scheme's configuration: the declared fields, their defaults, and the
//! region and service inferred from an AWS host name when they are not set.

use latchkey_plugin_sdk::{Config, Error, FieldInfo};

/// The longest `X-Amz-Expires` AWS accepts: seven days.
pub const MAX_EXPIRES: u32 = 604_800;
/// The presigned-URL lifetime when `expires_seconds` is not set: one hour,
/// as the AWS SDKs default.
pub const DEFAULT_EXPIRES: u32 = 3600;

/// The config fields, in the order `latchkey plugin list` shows them.
pub fn config_fields() -> Vec<FieldInfo> {
    vec![
        FieldInfo::optional(
            "region",
            "Signing region, e.g. `us-east-1`; inferred from an `*.amazonaws.com` host when absent",
        ),
        FieldInfo::optional(
            "service",
            "Signing service name, e.g. `s3`, `sts`, `execute-api`; inferred from an `*.amazonaws.com` host when absent",
        ),
        FieldInfo::optional(
            "unsigned_payload",
            "`true` to sign `UNSIGNED-PAYLOAD` instead of the body hash (needed to stream bodies the host does not hash)",
        ),
        FieldInfo::optional(
            "omit_session_token",
            "`true` to add `X-Amz-Security-Token` after signing instead of signing it (some services, e.g. IoT, require this)",
        ),
        FieldInfo::optional(
            "signature_location",
            "`header` (default: an `Authorization` header) or `query` (a presigned URL)",
        ),
        FieldInfo::optional(
            "expires_seconds",
            "Presigned-URL lifetime in seconds, 1 to 604800 (default 3600); only with `signature_location=query`",
        ),
        FieldInfo::optional(
            "normalize_path",
            "Resolve `.`, `..` and `//` in the signed path (default: `false` for S3, `true` for every other service)",
        ),
        FieldInfo::optional(
            "double_encode",
            "URI-encode the already-encoded path once more when signing (default: `false` for S3, `true` for every other service)",
        ),
        FieldInfo::optional(
            "content_sha256_header",
            "Send and sign `x-amz-content-sha256` (default: `true` for S3 or with `unsigned_payload`, else `false`)",
        ),
    ]
}

/// Where the signature goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// An `Authorization` header.
    Header,
    /// `X-Amz-*` query parameters (a presigned URL) valid for this many seconds.
    Query {
        /// The `X-Amz-Expires` value.
        expires: u32,
    },
}

/// Where a region or service name came from, for `--explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Set in the credential's config.
    Configured,
    /// Read off the request's host name.
    Inferred,
}

/// Everything the signer needs to know besides the request and the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The signing region.
    pub region: String,
    /// Whether `region` was configured or inferred.
    pub region_origin: Origin,
    /// The signing service name.
    pub service: String,
    /// Whether `service` was configured or inferred.
    pub service_origin: Origin,
    /// Sign `UNSIGNED-PAYLOAD` instead of the body hash.
    pub unsigned_payload: bool,
    /// Add the session token after signing instead of signing it.
    pub omit_session_token: bool,
    /// Header or query signing.
    pub location: Location,
    /// Resolve dot segments and empty segments in the signed path.
    pub normalize_path: bool,
    /// Encode the wire path once more when signing.
    pub double_encode: bool,
    /// Send and sign `x-amz-content-sha256`.
    pub content_sha256_header: bool,
}

impl Settings {
    /// Whether the service follows S3's rules: the object key is signed as it
    /// is sent (encoded once, never normalised) and the payload hash travels
    /// in `x-amz-content-sha256`.
    pub fn is_s3(&self) -> bool {
        is_s3_service(&self.service)
    }

    /// Resolve the configuration against the request's host: configured values
    /// win; a missing region or service is inferred from an AWS host name, and
    /// an uninferable one is an `invalid-config` error saying what to set.
    pub fn resolve(config: &Config, host: &str) -> Result<Settings, Error> {
        check(config)?;
        let (inferred_service, inferred_region) = infer(host);
        let (service, service_origin) = match config.get("service") {
            Some(s) => (s.to_string(), Origin::Configured),
            None => match inferred_service {
                Some(s) => (s, Origin::Inferred),
                None => {
                    return Err(Error::InvalidConfig(format!(
                        "cannot infer the AWS service from host `{host}`; set config `service` (e.g. `s3`, `sts`, `execute-api`)"
                    )));
                }
            },
        };
        let (region, region_origin) = match config.get("region") {
            Some(r) => (r.to_string(), Origin::Configured),
            None => match inferred_region {
                Some(r) => (r, Origin::Inferred),
                None => {
                    return Err(Error::InvalidConfig(format!(
                        "cannot infer the AWS region from host `{host}`; set config `region` (e.g. `us-east-1`)"
                    )));
                }
            },
        };
        let s3 = is_s3_service(&service);
        let unsigned_payload = config.flag("unsigned_payload")?;
        let location = match config.get("signature_location") {
            None | Some("header") => Location::Header,
            Some(_) => Location::Query { expires: expires(config)?.unwrap_or(DEFAULT_EXPIRES) },
        };
        Ok(Settings {
            region,
            region_origin,
            service,
            service_origin,
            unsigned_payload,
            omit_session_token: config.flag("omit_session_token")?,
            location,
            normalize_path: flag_or(config, "normalize_path", !s3)?,
            double_encode: flag_or(config, "double_encode", !s3)?,
            content_sha256_header: flag_or(config, "content_sha256_header", s3 || unsigned_payload)?,
        })
    }
}

/// Check a configuration without a request: known fields, well-formed values.
pub fn check(config: &Config) -> Result<(), Error> {
    config.check_fields(&config_fields())?;
    for name in ["unsigned_payload", "omit_session_token", "normalize_path", "double_encode", "content_sha256_header"] {
        config.flag(name)?;
    }
    for name in ["region", "service"] {
        if let Some(v) = config.get(name) {
            // Both go into the credential scope, which `/` separates: anything
            // beyond a DNS-like label would make a scope AWS cannot parse.
            let ok = v.len() <= 64 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(Error::InvalidConfig(format!(
                    "`{name}` must be lower-case letters, digits and `-` (at most 64), e.g. `us-east-1` or `s3`"
                )));
            }
        }
    }
    let query = match config.get("signature_location") {
        None | Some("header") => false,
        Some("query") => true,
        Some(_) => {
            return Err(Error::InvalidConfig("`signature_location` must be `header` or `query`".into()));
        }
    };
    if expires(config)?.is_some() && !query {
        return Err(Error::InvalidConfig(
            "`expires_seconds` applies to presigned URLs only: set `signature_location=query` too".into(),
        ));
    }
    Ok(())
}

/// The `expires_seconds` field, if set, within AWS's limits.
fn expires(config: &Config) -> Result<Option<u32>, Error> {
    let Some(v) = config.get("expires_seconds") else {
        return Ok(None);
    };
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_EXPIRES).contains(&n) => Ok(Some(n)),
        _ => Err(Error::InvalidConfig(format!(
            "`expires_seconds` must be a whole number from 1 to {MAX_EXPIRES} (seven days)"
        ))),
    }
}

fn flag_or(config: &Config, name: &str, default: bool) -> Result<bool, Error> {
    if config.get(name).is_some() { config.flag(name) } else { Ok(default) }
}

/// Services that sign like S3. S3 Control and access points sign as `s3`;
/// Object Lambda and Outposts have their own names but S3's path rules.
fn is_s3_service(service: &str) -> bool {
    matches!(service, "s3" | "s3-object-lambda" | "s3-outposts")
}

/// Whether a DNS label is an AWS region name: two letters, one or more words,
/// a number (`us-east-1`, `us-gov-west-1`, `cn-north-1`, `us-isob-east-1`).
pub fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() < 3 {
        return false;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
        && parts[1..parts.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Endpoint names whose signing name differs from the host label.
fn signing_name(label: &str) -> &str {
    let label = label.strip_suffix("-fips").unwrap_or(label);
    match label {
        "s3-control" | "s3-accesspoint" => "s3",
        "email" => "ses",
        "bedrock-runtime" | "bedrock-agent" | "bedrock-agent-runtime" => "bedrock",
        "queue" => "sqs",
        other => other,
    }
}

/// Services with one global endpoint (`sts.amazonaws.com`) that sign for
/// `us-east-1`.
const GLOBAL: &[&str] = &["s3", "sts", "iam", "route53", "cloudfront", "waf", "sdb", "budgets", "sqs"];

/// The (service, region) an AWS host name implies, each when it can be told.
///
/// Understood shapes, under `amazonaws.com`, `amazonaws.com.cn` and `api.aws`:
/// `<service>.<region>` (with any prefix such as a bucket or API id, and
/// `dualstack`/`fips` markers), `<domain>.<region>.es` and `.aoss`, S3's
/// legacy `s3-<region>` and `s3-external-1`, and the global endpoints
/// (`sts.amazonaws.com`, `s3.amazonaws.com`, `bucket.s3.amazonaws.com`, ...),
/// which sign for `us-east-1`.
pub fn infer(host: &str) -> (Option<String>, Option<String>) {
    let host = host.trim_end_matches('.');
    let (rest, global_ok) = if let Some(r) = host.strip_suffix(".amazonaws.com") {
        (r, true)
    } else if let Some(r) = host.strip_suffix(".amazonaws.com.cn") {
        (r, false)
    } else if let Some(r) = host.strip_suffix(".api.aws") {
        (r, false)
    } else {
        return (None, None);
    };
    let labels: Vec<&str> = rest.split('.').filter(|l| !l.is_empty()).collect();
    let Some(&last) = labels.last() else {
        return (None, None);
    };
    let own = |s: &str| Some(s.to_string());

    if is_region(last) {
        let service = labels[..labels.len() - 1].iter().rev().find(|l| !matches!(**l, "dualstack" | "fips"));
        return (service.map(|s| signing_name(s).to_string()), own(last));
    }
    // OpenSearch domains put the region before the service name.
    if matches!(last, "es" | "aoss") && labels.len() >= 2 && is_region(labels[labels.len() - 2]) {
        return (own(last), own(labels[labels.len() - 2]));
    }
    // S3's legacy endpoints carry the region in the service label.
    if let Some(suffix) = last.strip_prefix("s3-") {
        if is_region(suffix) {
            return (own("s3"), own(suffix));
        }
        if suffix == "external-1" && global_ok {
            return (own("s3"), own("us-east-1"));
        }
    }
    let service = signing_name(last).to_string();
    let region = (global_ok && GLOBAL.contains(&service.as_str())).then(|| "us-east-1".to_string());
    (Some(service), region)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn pair(host: &str) -> (Option<String>, Option<String>) {
        infer(host)
    }

    fn some(service: &str, region: &str) -> (Option<String>, Option<String>) {
        (Some(service.into()), Some(region.into()))
    }

    #[test]
    fn infers_service_and_region_from_aws_hosts() {
        assert_eq!(pair("s3.us-west-2.amazonaws.com"), some("s3", "us-west-2"));
        assert_eq!(pair("bucket.s3.amazonaws.com"), some("s3", "us-east-1"));
        assert_eq!(pair("s3.amazonaws.com"), some("s3", "us-east-1"));
        assert_eq!(pair("bucket.s3.eu-west-1.amazonaws.com"), some("s3", "eu-west-1"));
        assert_eq!(pair("my.bucket.s3.dualstack.eu-west-1.amazonaws.com"), some("s3", "eu-west-1"));
        assert_eq!(pair("bucket.s3-eu-west-1.amazonaws.com"), some("s3", "eu-west-1"));
        assert_eq!(pair("s3-external-1.amazonaws.com"), some("s3", "us-east-1"));
        assert_eq!(pair("sts.amazonaws.com"), some("sts", "us-east-1"));
        assert_eq!(pair("sts.us-east-2.amazonaws.com"), some("sts", "us-east-2"));
        assert_eq!(pair("iam.amazonaws.com"), some("iam", "us-east-1"));
        assert_eq!(pair("dynamodb.eu-west-1.amazonaws.com"), some("dynamodb", "eu-west-1"));
        assert_eq!(pair("ec2.ap-south-1.amazonaws.com"), some("ec2", "ap-south-1"));
        assert_eq!(pair("ec2.cn-north-1.amazonaws.com.cn"), some("ec2", "cn-north-1"));
        assert_eq!(pair("bucket.s3.cn-northwest-1.amazonaws.com.cn"), some("s3", "cn-northwest-1"));
        assert_eq!(pair("ec2.us-gov-west-1.amazonaws.com"), some("ec2", "us-gov-west-1"));
        assert_eq!(pair("abc123.execute-api.us-east-1.amazonaws.com"), some("execute-api", "us-east-1"));
        assert_eq!(pair("runtime.sagemaker.eu-central-1.amazonaws.com"), some("sagemaker", "eu-central-1"));
        assert_eq!(pair("bedrock-runtime.us-west-2.amazonaws.com"), some("bedrock", "us-west-2"));
        assert_eq!(pair("email.eu-west-1.amazonaws.com"), some("ses", "eu-west-1"));
        assert_eq!(pair("dynamodb-fips.us-east-1.amazonaws.com"), some("dynamodb", "us-east-1"));
        assert_eq!(pair("123456789012.s3-control.us-east-1.amazonaws.com"), some("s3", "us-east-1"));
        assert_eq!(pair("search-logs-abc.eu-west-1.es.amazonaws.com"), some("es", "eu-west-1"));
        assert_eq!(pair("ec2.us-east-1.api.aws"), some("ec2", "us-east-1"));
        // A bucket named like a region does not fool the global endpoint.
        assert_eq!(pair("us-west-2.s3.amazonaws.com"), some("s3", "us-east-1"));
        assert_eq!(pair("sts.amazonaws.com."), some("sts", "us-east-1"));
    }

    #[test]
    fn cannot_infer_everything() {
        assert_eq!(pair("example.com"), (None, None));
        assert_eq!(pair("localhost"), (None, None));
        assert_eq!(pair("127.0.0.1"), (None, None));
        assert_eq!(pair("amazonaws.com.evil.example"), (None, None));
        assert_eq!(pair("example.amazonaws.com"), (Some("example".into()), None));
        assert_eq!(pair("bucket.s3-accelerate.amazonaws.com"), (Some("s3-accelerate".into()), None));
        assert_eq!(pair("sts.amazonaws.com.cn"), (Some("sts".into()), None));
    }

    #[test]
    fn resolve_defaults_follow_the_service() {
        let s = Settings::resolve(&cfg(&[]), "bucket.s3.amazonaws.com").unwrap();
        assert_eq!((s.service.as_str(), s.region.as_str()), ("s3", "us-east-1"));
        assert_eq!(s.service_origin, Origin::Inferred);
        assert!(!s.normalize_path && !s.double_encode && s.content_sha256_header);
        assert_eq!(s.location, Location::Header);

        let s = Settings::resolve(&cfg(&[("region", "eu-west-1")]), "dynamodb.us-east-1.amazonaws.com").unwrap();
        assert_eq!((s.service.as_str(), s.region.as_str()), ("dynamodb", "eu-west-1"));
        assert_eq!(s.region_origin, Origin::Configured);
        assert!(s.normalize_path && s.double_encode && !s.content_sha256_header);

        let s = Settings::resolve(&cfg(&[("unsigned_payload", "true")]), "sts.amazonaws.com").unwrap();
        assert!(s.content_sha256_header);

        let s = Settings::resolve(
            &cfg(&[("service", "s3"), ("region", "us-east-1"), ("normalize_path", "true"), ("double_encode", "yes")]),
            "localhost",
        )
        .unwrap();
        assert!(s.normalize_path && s.double_encode && s.is_s3());

        let s = Settings::resolve(&cfg(&[("signature_location", "query")]), "s3.amazonaws.com").unwrap();
        assert_eq!(s.location, Location::Query { expires: 3600 });
    }

    #[test]
    fn resolve_fails_clearly_when_it_cannot_infer() {
        let err = Settings::resolve(&cfg(&[]), "example.com").unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("`service`")), "{err:?}");
        let err = Settings::resolve(&cfg(&[("service", "execute-api")]), "api.example.com").unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("`region`")), "{err:?}");
        let err = Settings::resolve(&cfg(&[]), "example.amazonaws.com").unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("region")), "{err:?}");
    }

    #[test]
    fn checks_values() {
        assert!(check(&cfg(&[("region", "us-east-1"), ("service", "s3")])).is_ok());
        assert!(check(&cfg(&[("region", "us-east-1/evil")])).is_err());
        assert!(check(&cfg(&[("service", "S3")])).is_err());
        assert!(check(&cfg(&[("unsigned_payload", "maybe")])).is_err());
        assert!(check(&cfg(&[("signature_location", "body")])).is_err());
        assert!(check(&cfg(&[("bogus", "1")])).is_err());
        let q = |e: &str| check(&cfg(&[("signature_location", "query"), ("expires_seconds", e)]));
        assert!(q("1").is_ok() && q("604800").is_ok());
        assert!(q("0").is_err() && q("604801").is_err() && q("-1").is_err() && q("1h").is_err());
        assert!(check(&cfg(&[("expires_seconds", "60")])).is_err(), "expires without query signing");
        let err = Settings::resolve(
            &cfg(&[("signature_location", "query"), ("expires_seconds", "604801")]),
            "s3.amazonaws.com",
        )
        .unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("604800")), "{err:?}");
    }

    #[test]
    fn region_names() {
        for r in ["us-east-1", "us-gov-west-1", "cn-north-1", "ap-southeast-7", "us-isob-east-1", "il-central-1"] {
            assert!(is_region(r), "{r}");
        }
        for r in ["s3", "us-east", "us-east-x", "usa-east-1", "dualstack", "us--1", "external-1"] {
            assert!(!is_region(r), "{r}");
        }
    }
}
