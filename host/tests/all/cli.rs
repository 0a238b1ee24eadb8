//! The `latchkey` binary as users run it: `sign` output and its errors.

use std::process::Command;

fn latchkey(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey")).args(args).output().expect("run latchkey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sign_prints_the_complete_request() {
    let (code, out, _) = latchkey(&[
        "sign",
        "--scheme",
        "api-key",
        "--config",
        "header=X-Api-Key",
        "--secret",
        "key=k-42",
        "--method",
        "POST",
        "--url",
        "https://api.example.test/v1/x?a=1",
        "-H",
        "Accept: */*",
        "-H",
        "x-api-key: agent-supplied",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "method": "POST",
            "url": "https://api.example.test/v1/x?a=1",
            "headers": [["Accept", "*/*"], ["x-api-key", "k-42"]]
        })
    );
}

#[test]
fn bad_input_is_one_clear_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-body");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--scheme".into(), "no-such".into(), "--url".into(), "https://h.test/".into()], "unknown_scheme"),
        (
            vec![
                "--scheme".into(),
                "aws-sigv4".into(),
                "--secret".into(),
                "access_key_id=AKID".into(),
                "--url".into(),
                "https://s3.amazonaws.com/".into(),
            ],
            "provider_key_missing",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--url".into(),
                "h.test/no-scheme".into(),
            ],
            "invalid_request",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--url".into(),
                "https://u:p@h.test/".into(),
            ],
            "invalid_request",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--url".into(),
                "https://h.test/a b".into(),
            ],
            "invalid_request",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--url".into(),
                "https://h.test/".into(),
                "-H".into(),
                "No colon".into(),
            ],
            "invalid_request",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--url".into(),
                "https://h.test/".into(),
                "-H".into(),
                "Host: other.test".into(),
            ],
            "invalid_request",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--url".into(),
                "https://h.test/".into(),
                "--body-file".into(),
                missing.display().to_string(),
            ],
            "invalid_argument",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--secret".into(),
                "nope=1".into(),
                "--url".into(),
                "https://h.test/".into(),
            ],
            "unknown_secret_field",
        ),
        (
            vec![
                "--scheme".into(),
                "api-key".into(),
                "--secret".into(),
                "key=x".into(),
                "--at".into(),
                "yesterday".into(),
                "--url".into(),
                "https://h.test/".into(),
            ],
            "invalid_argument",
        ),
    ];
    for (args, code) in cases {
        let mut full = vec!["sign"];
        full.extend(args.iter().map(String::as_str));
        let (status, out, err) = latchkey(&full);
        assert_ne!(status, 0, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(&format!("latchkey: error[{code}]: ")), "{args:?}: {err}");
    }
}

#[test]
fn secrets_never_echoed_in_errors_or_explain() {
    let key = crate::support::canary("cli");
    let (code, _, err) = latchkey(&[
        "sign",
        "--scheme",
        "api-key",
        "--secret",
        &format!("key=Bearer {key}"),
        "--url",
        "https://h.test/",
    ]);
    assert_ne!(code, 0);
    assert!(!err.contains(&key), "{err}");
    let (code, _, err) = latchkey(&["sign", "--scheme", "api-key", "--secret", &key, "--url", "https://h.test/"]);
    assert_ne!(code, 0);
    assert!(!err.contains(&key), "{err}");
    let (code, out, err) = latchkey(&[
        "sign",
        "--explain",
        "--scheme",
        "aws-sigv4",
        "--config",
        "region=us-east-1",
        "--config",
        "service=sts",
        "--secret",
        "access_key_id=AKIDEXAMPLE",
        "--secret",
        &format!("secret_access_key={key}"),
        "--secret",
        &format!("session_token={key}tok"),
        "--url",
        "https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(&key), "explain leaked a secret: {err}");
    assert!(!out.contains(&format!("{key}\"")), "the secret key itself must not be in the request");
}

#[test]
fn secret_from_file_and_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key");
    std::fs::write(&f, "from-file\n").unwrap();
    let (code, out, err) = latchkey(&[
        "sign",
        "--scheme",
        "api-key",
        "--secret",
        &format!("key=@{}", f.display()),
        "--url",
        "https://h.test/",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#"["Authorization","from-file"]"#), "{out}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["sign", "--scheme", "api-key", "--secret", "key=@-", "--url", "https://h.test/"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"from-stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"["Authorization","from-stdin"]"#));
}

#[test]
fn plugin_list_and_inspect() {
    let (code, out, _) = latchkey(&["plugin", "list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["aliyun-acs3", "api-key", "aws-sigv4", "basic", "custom-headers", "jwt", "tencent-tc3"]);
    let (code, out, _) =
        latchkey(&["plugin", "inspect", "--json", crate::support::guests::REVEAL, "--grant-secrets", "test-reveal"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "test-reveal");
    assert_eq!(v["reads_raw_secrets"], true);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    let (code, _, err) = latchkey(&["plugin", "inspect", crate::support::guests::SOCKETS]);
    assert_ne!(code, 0);
    assert!(err.contains("plugin_load_failed") && err.contains("wasi:sockets"), "{err}");
}

#[test]
fn plugin_dir_overrides_builtin() {
    // A plugin folder holding a component that calls itself `api-key`...
    // is what an operator does to replace a scheme; here we check a foreign
    // scheme from the folder appears beside the built-ins.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(crate::support::guests::STATE, dir.path().join("state.wasm")).unwrap();
    let (code, out, err) = latchkey(&["--plugin-dir", &dir.path().display().to_string(), "plugin", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test-state") && out.contains("file"), "{out}");
}

/// The vault commands as an operator uses them, on an embedded vault.
#[test]
fn vault_commands_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(args)
            .env("LATCHKEY_DATA_DIR", dir.path())
            .env_remove("LATCHKEY_MASTER_KEY")
            .env_remove("LATCHKEY_KEYRING_FILE")
            .env_remove("LATCHKEY_DATABASE_URL")
            .env_remove("LATCHKEY_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The first command creates the development key, loudly.
    let (code, _, err) = run(&[
        "credential",
        "add",
        "gh",
        "--scheme",
        "api-key",
        "--config",
        "prefix=token ",
        "--secret",
        "key=ghp_test123\n",
        "--destination",
        "api.github.com",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("DEVELOPMENT master key"), "{err}");
    assert!(err.contains("note:") && err.contains("line break"), "the trimmed newline is reported: {err}");
    assert!(dir.path().join("master.key").exists());

    let (code, out, _) = run(&["credential", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    assert!(
        out.contains("gh") && out.contains("api-key") && out.contains("enabled") && out.contains("api.github.com"),
        "{out}"
    );

    let (code, out, _) = run(&["sign", "--credential", "gh", "--url", "https://api.github.com/user"]);
    assert_eq!(code, 0);
    assert!(out.contains(r#"["Authorization","token ghp_test123"]"#), "{out}");

    let (code, _, _) = run(&["credential", "disable", "gh"]);
    assert_eq!(code, 0);
    let (code, out, _) = run(&["credential", "list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["state"], "disabled");
    assert_eq!(list[0]["version"], 2);
    assert!(list[0]["last_used_at"].is_string(), "the successful sign is recorded as a use");
    let (code, _, err) = run(&["sign", "--credential", "gh", "--url", "https://api.github.com/user"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("latchkey: error[credential_disabled]:"), "{err}");

    run(&["credential", "enable", "gh"]);
    let (code, _, err) = run(&["credential", "attach", "gh", "--agent", "ci-bot"]);
    assert!(code == 1 && err.contains("error[agent_not_found]"), "an attachment to no agent: {err}");
    run(&["agent", "add", "ci-bot"]);
    let (code, _, _) = run(&["credential", "attach", "gh", "--agent", "ci-bot"]);
    assert_eq!(code, 0);
    let (code, _, err) = run(&["credential", "delete", "gh"]);
    assert_eq!(code, 1);
    assert!(err.contains("error[credential_attached]") && err.contains("ci-bot"), "{err}");
    let (code, out, _) = run(&["credential", "delete", "gh", "--force"]);
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = run(&["audit", "--credential", "gh"]);
    assert_eq!(code, 0);
    for action in ["create", "use", "disable", "enable", "attach", "delete"] {
        assert!(out.contains(action), "audit lacks {action}: {out}");
    }
    assert!(out.contains("credential_disabled"), "the refused use is audited: {out}");
    let (code, out, _) = run(&["audit", "--json", "--action", "use"]);
    assert_eq!(code, 0);
    // Counts per minute and outcome: two uses, whichever minutes they fell in.
    let uses: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(uses.iter().map(|u| u["count"].as_u64().unwrap()).sum::<u64>(), 2, "{out}");
    assert!(uses.iter().any(|u| u["outcome"] == "credential_disabled"), "{out}");
    let (code, _, err) = run(&["audit", "--since", "yesterday"]);
    assert_eq!(code, 1);
    assert!(err.contains("error[invalid_argument]"), "{err}");
}

#[test]
fn offline_sign_applies_the_vault_hygiene() {
    let dir = tempfile::tempdir().unwrap();
    // A key file with the line break an editor leaves: removed, as the vault removes it, with a note.
    let key = dir.path().join("key");
    std::fs::write(&key, "k-hygiene-42\n\n").unwrap();
    let (code, out, err) = latchkey(&[
        "sign",
        "--scheme",
        "api-key",
        "--secret",
        &format!("key=@{}", key.display()),
        "--url",
        "https://api.example.test/",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["headers"], serde_json::json!([["Authorization", "k-hygiene-42"]]), "{v}");
    assert!(err.contains("note:") && err.contains("line break"), "{err}");
    assert!(!err.contains("k-hygiene-42"), "the secret in a note: {err}");
    // A key pasted with its scheme's prefix is refused, as `credential add` refuses it.
    let (code, _, err) = latchkey(&[
        "sign",
        "--scheme",
        "api-key",
        "--secret",
        "key=Bearer sk-pasted-prefix",
        "--url",
        "https://api.example.test/",
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("latchkey: error[invalid_secret]:") && !err.contains("sk-pasted-prefix"), "{err}");
    // --scheme beside --credential is refused, not silently ignored.
    let (code, _, err) =
        latchkey(&["sign", "--scheme", "aws-sigv4", "--credential", "gh", "--url", "https://api.example.test/"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn an_unreachable_postgres_says_why_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["credential", "list"])
        .env("LATCHKEY_DATA_DIR", dir.path())
        .env("LATCHKEY_DATABASE_URL", "postgres://postgres@127.0.0.1:1/test")
        .env("LATCHKEY_MASTER_KEY", "dGhpcy1pcy1hLXRlc3Qta2V5LTMyLWJ5dGVzLWxvbmc=")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("error[vault_unavailable]"), "{err}");
    assert!(err.to_lowercase().contains("refused") && !err.contains("pool timed out"), "the cause is kept: {err}");
}
