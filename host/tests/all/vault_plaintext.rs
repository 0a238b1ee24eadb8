//! No plaintext anywhere: store known secrets through every CLI path, then
//! search the database (files or tables), the logs (at trace level) and
//! every CLI output for them, as text, hex and base64.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::db::{Backend, TestDb};
use crate::support::canary;

struct Cli<'a> {
    db: &'a TestDb,
    /// Everything any command printed, stdout and stderr (logs included).
    seen: Vec<u8>,
}

impl Cli<'_> {
    fn run(&mut self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
        cmd.args(args)
            .env("LATCHKEY_DATA_DIR", self.db.path())
            .env("LATCHKEY_MASTER_KEY", self.db.key.as_str())
            .env("LATCHKEY_LOG", "trace")
            .env_remove("LATCHKEY_KEYRING_FILE")
            .env_remove("LATCHKEY_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &self.db.url {
            Some(url) => cmd.env("LATCHKEY_DATABASE_URL", url),
            None => cmd.env_remove("LATCHKEY_DATABASE_URL"),
        };
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        self.seen.extend_from_slice(&out.stdout);
        self.seen.extend_from_slice(&out.stderr);
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn ok(&mut self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out) = self.run(args, stdin);
        assert!(ok, "latchkey {args:?} failed:\n{out}");
        out
    }
}

/// The forms a leaked secret could take in a dump.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    vec![
        secret.as_bytes().to_vec(),
        hex::encode(secret).into_bytes(),
        base64::engine::general_purpose::STANDARD.encode(secret).trim_end_matches('=').as_bytes().to_vec(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

vault_tests! {
    no_plaintext_in_store_logs_or_output => no_plaintext_in_store_logs_or_output;
}

async fn no_plaintext_in_store_logs_or_output(db: &TestDb) {
    let mut cli = Cli { db, seen: Vec::new() };
    let key_arg = canary("arg");
    let key_stdin = canary("stdin");
    let key_file = canary("file");
    let aws_secret = canary("awssecret");
    let rotated = canary("rotated");
    let refused = canary("refused");
    let file = db.path().join("key.txt");
    std::fs::write(&file, format!("{key_file}\n")).unwrap();

    cli.ok(
        &[
            "credential",
            "add",
            "a1",
            "--scheme",
            "api-key",
            "--secret",
            &format!("key={key_arg}"),
            "--destination",
            "api.openai.com",
        ],
        None,
    );
    cli.ok(
        &["credential", "add", "a2", "--scheme", "api-key", "--secret", "key=@-", "--destination", "api.openai.com"],
        Some(&format!("{key_stdin}\n")),
    );
    cli.ok(&["credential", "add", "a3", "--scheme", "api-key", "--secret", &format!("key=@{}", file.display())], None);
    cli.ok(
        &[
            "credential",
            "add",
            "aws",
            "--scheme",
            "aws-sigv4",
            "--secret",
            "access_key_id=AKIDEXAMPLE",
            "--secret",
            &format!("secret_access_key={aws_secret}"),
            "--destination",
            "*.amazonaws.com",
        ],
        None,
    );
    // Refused input must not be echoed either.
    let (ok, out) = cli
        .run(&["credential", "add", "bad", "--scheme", "api-key", "--secret", &format!("key=Bearer {refused}")], None);
    assert!(!ok && out.contains("invalid_secret"), "{out}");
    let (ok, _) =
        cli.run(&["credential", "add", "bad2", "--scheme", "basic", "--secret", &format!("username={refused}")], None);
    assert!(!ok);
    cli.ok(&["credential", "rotate", "a1", "--secret", &format!("key={rotated}")], None);
    cli.ok(
        &["credential", "update", "a2", "--add-destination", "*.openai.com", "--secret", "key=@-"],
        Some(&key_stdin),
    );
    cli.ok(&["credential", "disable", "a3"], None);
    cli.ok(&["credential", "enable", "a3"], None);
    for args in [
        &["credential", "list"][..],
        &["credential", "list", "--json"],
        &["credential", "show", "a1"],
        &["credential", "show", "aws", "--json"],
        &["audit"],
        &["audit", "--json"],
        &["vault", "status"],
    ] {
        cli.ok(args, None);
    }
    // A signing scheme's output carries a signature, never the key.
    let signed = cli.ok(
        &[
            "sign",
            "--credential",
            "aws",
            "--at",
            "2015-08-30T12:36:00Z",
            "--url",
            "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
        ],
        None,
    );
    assert!(signed.contains("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request"), "{signed}");
    let (ok, out) = cli.run(&["sign", "--credential", "aws", "--url", "https://evil.example.com/"], None);
    assert!(!ok && out.contains("destination_not_allowed"), "{out}");
    cli.ok(&["vault", "rotate-master-key", "--no-generate"], None);
    cli.ok(&["credential", "delete", "a3"], None);

    // The logs really were at trace level (so the scan covers them).
    let seen = String::from_utf8_lossy(&cli.seen).to_string();
    assert!(seen.contains("TRACE") && seen.contains("latchkey::audit"), "debug logs expected in the capture");

    // What the store holds.
    let mut stored: Vec<u8> = Vec::new();
    match db.backend {
        Backend::Sqlite => {
            for entry in std::fs::read_dir(db.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap().to_string_lossy().starts_with("vault.db") {
                    stored.extend(std::fs::read(&path).unwrap());
                }
            }
            assert!(stored.len() > 4096);
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db.url.as_deref().unwrap()).await.unwrap();
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.len() >= 5, "{tables:?}");
            for (table,) in tables {
                let rows: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT CAST(t AS text) FROM {table} t")).fetch_all(&pool).await.unwrap();
                for (row,) in rows {
                    stored.extend(row.into_bytes());
                }
            }
            pool.close().await;
            assert!(contains(&stored, b"a1"), "the dump holds the rows");
        }
    }

    for secret in [&key_arg, &key_stdin, &key_file, &aws_secret, &rotated, &refused] {
        for form in forms(secret) {
            assert!(!contains(&stored, &form), "a secret is in the {:?} store in plaintext", db.backend);
            assert!(!contains(&cli.seen, &form), "a secret is in the CLI output or logs");
        }
    }
}
