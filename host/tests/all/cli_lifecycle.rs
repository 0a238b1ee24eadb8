//! The CLI's lifecycle as an operator runs it, on both backends: every
//! command that prints data does so as JSON with `--json` (parsed here),
//! lists have a header row or say `no …`, a closed pipe ends a command
//! quietly, the same refusal has the same code as over HTTP, and provider
//! checks keep the proxy's address policy and mock mode.

use std::process::{Command, Stdio};

use crate::db::{Backend, TestDb};

struct Cli<'a> {
    db: &'a TestDb,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Cli<'_> {
    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
        c.env("LATCHKEY_DATA_DIR", self.db.dir.path())
            .env("LATCHKEY_MASTER_KEY", self.db.key.as_str())
            .env_remove("LATCHKEY_KEYRING_FILE")
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("LATCHKEY_ORG")
            .env("USER", "tester");
        match &self.db.url {
            Some(url) => c.env("LATCHKEY_DATABASE_URL", url),
            None => c.env_remove("LATCHKEY_DATABASE_URL"),
        };
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = self.command().args(args).output().expect("run latchkey");
        let o = Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(!o.stderr.contains("panicked"), "latchkey {args:?} panicked: {}", o.stderr);
        o
    }

    /// Run with `--json`, which must succeed and print one JSON value.
    #[track_caller]
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let o = self.run(&all);
        assert!(o.ok, "latchkey {all:?} failed: {}{}", o.stdout, o.stderr);
        serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("latchkey {all:?} printed no JSON ({e}): {}", o.stdout))
    }

    /// Run, expecting the failure `code`.
    #[track_caller]
    fn fails(&self, args: &[&str], code: &str) -> String {
        let o = self.run(args);
        assert!(!o.ok, "latchkey {args:?} succeeded: {}", o.stdout);
        assert!(o.stderr.contains(&format!("error[{code}]")), "latchkey {args:?}: want {code}, got {}", o.stderr);
        o.stderr
    }

    /// Run with standard output closed before anything is written.
    fn run_into_closed_pipe(&self, args: &[&str]) {
        let mut child = self.command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "latchkey {args:?} | (closed): {stderr}");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            assert!(
                out.status.success() || out.status.signal() == Some(libc_sigpipe()),
                "latchkey {args:?} | (closed) ended {:?}: {stderr}",
                out.status
            );
        }
    }
}

#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    tokio::task::block_in_place(|| lifecycle(&db));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_on_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    tokio::task::block_in_place(|| lifecycle(&db));
    db.cleanup().await;
}

fn lifecycle(db: &TestDb) {
    let cli = Cli { db };
    let key = format!("sk-cli-life-{}", crate::db::suffix());
    let secret = format!("key={key}");

    // Empty lists say so, under no header; JSON is an empty array.
    for (list, none) in [
        (&["credential", "list"][..], "no credentials"),
        (&["agent", "list"][..], "no agents"),
        (&["route", "list"][..], "no routes"),
        (&["idp", "list"][..], "no identity providers"),
        (&["token", "list"][..], "no registration tokens"),
    ] {
        let o = cli.run(list);
        assert!(o.ok && o.stdout.starts_with(none), "{list:?}: {}", o.stdout);
        assert_eq!(cli.json(list), serde_json::json!([]), "{list:?}");
    }

    // Credentials.
    let v = cli.json(&[
        "credential",
        "add",
        "openai",
        "--scheme",
        "api-key",
        "--config",
        "prefix=Bearer ",
        "--secret",
        &secret,
        "--destination",
        "api.openai.com",
        "--destination",
        "127.0.0.1",
        "--destination",
        "localhost",
    ]);
    assert_eq!(v["config"], serde_json::json!({"prefix": "Bearer "}), "{v}");
    cli.json(&["credential", "show", "openai"]);
    cli.json(&["credential", "update", "openai", "--add-destination", "api.example.com"]);
    cli.json(&["credential", "disable", "openai"]);
    cli.json(&["credential", "enable", "openai"]);
    cli.json(&["credential", "rotate", "openai", "--secret", &secret]);
    assert_eq!(cli.json(&["credential", "list"]).as_array().unwrap().len(), 1);

    // Agents, with the same codes as the admin API.
    let v = cli.json(&["agent", "add", "ci-bot"]);
    let first = v["token"].as_str().unwrap().to_string();
    assert!(first.starts_with("lk_agt_"));
    cli.fails(&["agent", "add", "ci-bot"], "agent_exists");
    cli.fails(&["agent", "add", "typo-bot", "--credential", "opneai"], "credential_not_found");
    cli.fails(&["agent", "show", "typo-bot"], "agent_not_found");
    cli.fails(&["credential", "attach", "openai", "--agent", "typo-bot-xyz"], "agent_not_found");
    cli.fails(&["credential", "detach", "openai", "--agent", "ci-bot"], "attachment_not_found");
    let v = cli.json(&["credential", "attach", "openai", "--agent", "ci-bot"]);
    assert_eq!(v["attachments"]["agents"], serde_json::json!(["ci-bot"]));
    cli.json(&["credential", "detach", "openai", "--agent", "ci-bot"]);
    cli.json(&["credential", "attach", "openai", "--agent", "ci-bot"]);
    let v = cli.json(&["agent", "show", "ci-bot"]);
    assert_eq!((v["state"].as_str(), v["credentials"].clone()), (Some("enabled"), serde_json::json!(["openai"])));
    assert_eq!(cli.json(&["agent", "disable", "ci-bot"])["state"], "disabled");
    assert_eq!(cli.json(&["agent", "enable", "ci-bot"])["state"], "enabled");
    let v = cli.json(&["agent", "reissue-token", "ci-bot"]);
    assert_ne!(v["token"].as_str().unwrap(), first);
    let table = cli.run(&["agent", "list"]).stdout;
    assert!(table.starts_with("ORG") && table.contains("ci-bot"), "{table}");
    assert!(!table.contains(&first[7..]), "a token in the agent list");

    // Routes: a forbidden upstream is refused when added.
    let stderr = cli.fails(
        &["route", "add", "evil", "--upstream", "https://api.evil.example", "--credential", "openai"],
        "destination_not_allowed",
    );
    assert!(stderr.contains("--add-destination api.evil.example"), "{stderr}");
    cli.json(&["route", "add", "openai", "--upstream", "https://api.openai.com", "--credential", "openai", "--mock"]);
    cli.json(&["route", "show", "openai"]);
    assert_eq!(cli.json(&["route", "list"]).as_array().unwrap().len(), 1);
    // Checks: the mock answers a mock route; a loopback upstream is refused
    // without --allow-upstream-network, by address and by name.
    let v = cli.json(&["credential", "check", "openai"]);
    assert_eq!(v["state"], "mock", "{v}");
    cli.json(&["credential", "add", "local", "--scheme", "api-key", "--secret", &secret, "--destination", "127.0.0.1"]);
    cli.json(&["route", "add", "local", "--upstream", "http://127.0.0.1:9", "--credential", "local"]);
    cli.fails(&["credential", "check", "local"], "upstream_address_refused");
    cli.json(&["credential", "update", "local", "--add-destination", "localhost"]);
    cli.json(&["route", "add", "local", "--upstream", "http://localhost:9", "--credential", "local"]);
    cli.fails(&["credential", "check", "local"], "upstream_address_refused");
    let o = cli.run(&[
        "credential",
        "check",
        "local",
        "--allow-upstream-network",
        "127.0.0.0/8",
        "--allow-upstream-network",
        "::1/128",
    ]);
    assert!(
        !o.ok && o.stdout.contains("unreachable") && o.stdout.contains("onnect"),
        "the cause is kept: {}{}",
        o.stdout,
        o.stderr
    );
    let v = cli.json(&["credential", "delete", "local", "--force"]);
    assert_eq!(v["name"], "local");
    assert!(cli.json(&["route", "list"]).as_array().unwrap().iter().all(|r| r["credential"] != "local"));

    // Identity providers and JWT bindings.
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    )
    .unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"keys":[]}"#).unwrap();
    let jwks = jwks.to_str().unwrap();
    let idp = |name: &str, issuer: &str, file: &str| {
        vec!["idp", "add", name, "--issuer", issuer, "--alg", "EdDSA", "--jwks-file", file, "--audience", "latchkey"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let args = idp("gh", "https://token.example", jwks);
    cli.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = idp("gh2", "https://token.example", jwks);
    cli.fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), "issuer_exists");
    let args = idp("e", "https://e.example", empty.to_str().unwrap());
    cli.fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), "invalid_argument");
    cli.json(&["idp", "show", "gh"]);
    assert_eq!(cli.json(&["idp", "list"]).as_array().unwrap().len(), 1);
    let v = cli.json(&["agent", "bind-jwt", "deploy", "--idp", "gh", "--subject", "repo:acme/app"]);
    assert_eq!(v["jwt"]["idp"], "gh");
    cli.fails(&["idp", "delete", "gh"], "in_use");
    assert!(cli.json(&["agent", "unbind-jwt", "deploy"])["jwt"].is_null());
    cli.json(&["agent", "bind-jwt", "deploy", "--idp", "gh", "--subject", "repo:acme/app"]);
    assert_eq!(cli.json(&["idp", "delete", "gh", "--force"])["cascaded"], serde_json::json!(["deploy"]));
    cli.fails(&["idp", "show", "gh"], "identity_provider_not_found");

    // Registration tokens.
    let v = cli.json(&["token", "create", "--ttl", "10m"]);
    let (reg, prefix) = (v["token"].as_str().unwrap().to_string(), v["prefix"].as_str().unwrap().to_string());
    let listed = cli.json(&["token", "list"]);
    assert!(listed.to_string().contains(&prefix) && !listed.to_string().contains(&reg[11..]), "{listed}");
    assert_eq!(cli.json(&["token", "revoke", &prefix])["state"], "revoked");
    cli.fails(&["token", "revoke", "lk_reg_zzzz"], "token_not_found");

    // Everything else that prints data.
    cli.json(&["vault", "status"]);
    cli.json(&["vault", "rotate-master-key", "--no-generate"]);
    cli.json(&["plugin", "inspect", crate::support::guests::README_EXAMPLE]);
    let o = cli.run(&["sign", "--credential", "openai", "--url", "https://api.openai.com/v1/models"]);
    assert!(o.ok, "{}", o.stderr);
    let signed: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(signed["url"], "https://api.openai.com/v1/models");
    assert!(cli.json(&["plugin", "list"]).as_array().unwrap().len() >= 7);
    let o = cli.run(&["audit", "--json"]);
    assert!(o.ok, "{}", o.stderr);
    let lines: Vec<serde_json::Value> = o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty());
    // The actor is the operator and their host, never unknown.
    let reissue: Vec<_> = lines.iter().filter(|e| e["action"] == "agent-token-reissue").collect();
    assert_eq!(reissue.len(), 1);
    let actor = reissue[0]["actor"].as_str().unwrap();
    assert!(actor.starts_with("cli:tester@") && !actor.ends_with('@'), "{actor}");
    cli.json(&["agent", "delete", "deploy"]);
    cli.fails(&["agent", "delete", "ci-bot"], "in_use");
    assert_eq!(cli.json(&["agent", "delete", "ci-bot", "--force"])["cascaded"], serde_json::json!(["openai"]));
    cli.json(&["route", "delete", "openai"]);
    let trail = cli.run(&["audit", "--json", "--limit", "1000"]).stdout;
    for kind in [
        "agent-create",
        "agent-delete",
        "route-put",
        "route-delete",
        "idp-put",
        "idp-delete",
        "token-create",
        "token-revoke",
    ] {
        assert!(trail.contains(&format!("\"action\":\"{kind}\"")), "no {kind} in the audit trail");
    }
    assert!(!trail.contains(&key), "a secret in the audit trail");

    // A closed pipe ends every list quietly.
    for list in [
        &["credential", "list"][..],
        &["agent", "list"],
        &["route", "list"],
        &["idp", "list"],
        &["token", "list"],
        &["plugin", "list"],
        &["audit"],
    ] {
        cli.run_into_closed_pipe(list);
    }
}
