//! Adversarial tests, one attack each: every test asserts the refusal AND that
//! the host and the store are unchanged. Real controller, agents and slipctl
//! over TLS on loopback.

use std::time::Duration;

use integration_tests::{Agent, Controller, ReleaseOpts, eventually, publish, sample_release};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

fn desired_in(c: &Controller, version: &str) -> Vec<String> {
    let releases = c.ctl(&["releases", "web", "--json"]).ok().json();
    releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .map(|r| {
            r["desired_in"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_ci_token_deploys_to_preprod_but_never_touches_production() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let ci = c.token("ci", &["publisher", "deployer"]);
    let viewer = c.token("dashboard", &["viewer"]);
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    let rel = rel.to_str().unwrap();

    // A viewer cannot publish; nothing is stored.
    let out = c.ctl_as(
        &viewer,
        &["publish", rel, "--app", "web", "--version", "1.0.0"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("lacks the publisher role"),
        "{}",
        out.stderr
    );
    assert_eq!(
        c.ctl(&["releases", "web"]).code,
        1,
        "no release was created"
    );

    c.ctl_as(&ci, &["publish", rel, "--app", "web", "--version", "1.0.0"])
        .ok();
    c.ctl_as(&ci, &["deploy", "web", "1.0.0", "--env", "preprod"])
        .ok();

    for args in [
        vec!["deploy", "web", "1.0.0", "--env", "prod"],
        vec!["promote", "web", "--from", "preprod", "--to", "prod"],
        vec!["rollback", "web", "--env", "prod", "--to", "1.0.0"],
        vec!["retry", "web", "--env", "prod"],
    ] {
        let out = c.ctl_as(&ci, &args);
        assert_eq!(out.code, 1, "{args:?} must be refused: {}", out.stdout);
        assert!(
            out.stderr.contains("lacks the promoter role"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(desired_in(&c, "1.0.0"), vec!["preprod"], "prod untouched");

    // No token, a garbage token, a revoked token: refused as well.
    let out = c.ctl_as("", &["deploy", "web", "1.0.0", "--env", "prod"]);
    assert!(out.stderr.contains("no API token"), "{}", out.stderr);
    let forged = format!("swt_{}_{}", "0".repeat(16), "1".repeat(64));
    let out = c.ctl_as(&forged, &["deploy", "web", "1.0.0", "--env", "prod"]);
    assert!(out.stderr.contains("invalid API token"), "{}", out.stderr);
    c.ctl(&["tokens", "revoke", "ci"]).ok();
    let out = c.ctl_as(&ci, &["deploy", "web", "1.0.0", "--env", "preprod"]);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
    assert_eq!(desired_in(&c, "1.0.0"), vec!["preprod"]);

    // Every refused change is in the audit log, with who tried.
    let history = c.ctl(&["history", "--json", "--limit", "100"]).ok().json();
    let refused: Vec<&serde_json::Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"].as_str().unwrap().starts_with("refused"))
        .collect();
    for action in ["deploy", "promote", "rollback", "retry"] {
        assert!(
            refused
                .iter()
                .any(|e| e["action"] == action
                    && e["actor"].as_str().unwrap().starts_with("ci (token")),
            "refused {action} by ci is audited: {history}"
        );
    }
    assert!(refused.iter().any(|e| e["actor"] == "unauthenticated"));
    assert!(
        refused
            .iter()
            .any(|e| e["action"] == "publish" || e["action"] == "upload")
    );
    // Tokens are stored hashed: the secret is nowhere in the database.
    let db = std::fs::read(c.data_dir.join("slipway.db")).unwrap();
    let secret = ci.rsplit('_').next().unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(secret));
}

fn join(
    c: &Controller,
    dir: &std::path::Path,
    host: &str,
    token: &str,
) -> integration_tests::CtlOutput {
    let cfg = dir.join(format!("{host}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "controller = \"{}\"\nhost = \"{host}\"\nenvironment = \"preprod\"\nstate_dir = \"{}\"\n",
            c.url,
            dir.join(host).display()
        ),
    )
    .unwrap();
    std::process::Command::new(integration_tests::bin("slipway-agent"))
        .arg("--config")
        .arg(&cfg)
        .args(["join", token])
        .output()
        .unwrap()
        .into()
}

#[test]
fn join_tokens_are_one_time_host_bound_short_lived_and_pin_the_controller() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let token = c.join_token("web-1", "preprod");
    let identity = |host: &str| t.path().join(host).join("identity");

    // Another host presenting web-1's token.
    let out = join(&c, t.path(), "web-2", &token);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("issued for host \"web-1\""),
        "{}",
        out.stderr
    );
    assert!(!identity("web-2").join("identity.json").exists());

    // A forged secret with the right id.
    let (head, pin) = token.rsplit_once('_').unwrap();
    let (id, _) = head.strip_prefix("swj_").unwrap().split_once('_').unwrap();
    let forged = format!("swj_{id}_{}_{pin}", "a".repeat(64));
    let out = join(&c, t.path(), "web-1", &forged);
    assert!(out.stderr.contains("join token unknown"), "{}", out.stderr);

    // A token pinning another CA: the agent refuses the controller itself.
    let wrong_pin = format!("{head}_{}", "b".repeat(64));
    let out = join(&c, t.path(), "web-1", &wrong_pin);
    assert_ne!(out.code, 0);
    assert!(!identity("web-1").join("identity.json").exists());

    // The real one works once.
    join(&c, t.path(), "web-1", &token).ok();
    assert!(identity("web-1").join("agent.pem").exists());
    let out = join(&c, t.path(), "web-1", &token);
    assert!(out.stderr.contains("already used"), "{}", out.stderr);

    // An expired token.
    let short = c
        .ctl(&["hosts", "add", "web-3", "--env", "preprod", "--ttl", "1"])
        .ok()
        .stdout
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let out = join(&c, t.path(), "web-3", &short);
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
    assert!(!identity("web-3").join("identity.json").exists());

    let hosts = c.ctl(&["hosts", "--json"]).ok().json();
    let enrolled: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| !h["cert_fingerprint"].as_str().unwrap().is_empty())
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(enrolled, vec!["web-1"]);
}

#[test]
fn a_revoked_host_is_cut_off_and_calls_without_a_certificate_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let a = Agent::start(t.path(), &c, "web-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]).ok();
    a.wait_serving("1.0.0");

    // No client certificate: the agent API refuses (as for a missing blob, nothing leaks).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let mut client = proto::v1::agents_client::AgentsClient::new(c.channel().await);
        client
            .fetch_blob(proto::v1::FetchBlobRequest {
                digest: format!("sha256:{}", "0".repeat(64)),
                offset: 0,
            })
            .await
            .expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    c.ctl(&["hosts", "revoke", "web-1"]).ok();
    eventually(
        Duration::from_secs(15),
        "the revoked agent to be cut off",
        || {
            let l = a.log_text();
            (l.contains("was revoked") || l.contains("unknown client certificate")).then_some(())
        },
    );
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.ctl(&["deploy", "web", "2.0.0", "--env", "preprod"]).ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.app_says().as_deref(),
        Some("sample-app 1.0.0"),
        "nothing reached the revoked host"
    );
    let hosts = c.ctl(&["hosts", "--json"]).ok().json();
    assert_eq!(hosts[0]["revoked"], true);
    assert_eq!(hosts[0]["connected"], false);
}

#[test]
fn a_key_enforcing_agent_refuses_unsigned_releases_and_unsigned_downgrades() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let key = t.path().join("release.key");
    let public = c
        .ctl(&["keys", "generate", "--out", key.to_str().unwrap()])
        .ok()
        .stdout;
    let mut a = Agent::configured(t.path(), &c, "web-1", "preprod", DB_ENV, true);
    let mut cfg = std::fs::read_to_string(&a.config).unwrap();
    cfg.push_str(&format!(
        "\n[trust]\npublisher_keys = [\"{}\"]\n",
        public.trim()
    ));
    std::fs::write(&a.config, cfg).unwrap();
    a.spawn();
    let publish_signed = |version: &str| {
        let rel = sample_release(t.path(), &ReleaseOpts::new(version));
        c.ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            version,
            "--sign",
            key.to_str().unwrap(),
        ])
        .ok();
    };

    publish_signed("1.0.0");
    c.ctl(&[
        "deploy",
        "web",
        "1.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    publish_signed("2.0.0");
    c.ctl(&[
        "deploy",
        "web",
        "2.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    a.wait_serving("2.0.0");

    // Unsigned: refused before anything is fetched; 2.0.0 keeps serving.
    publish(&c, t.path(), &ReleaseOpts::new("3.0.0"));
    c.ctl(&[
        "deploy",
        "web",
        "3.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(
        a.status_json()["last_error"]
            .as_str()
            .unwrap()
            .contains("signed by 0 trusted"),
        "{}",
        a.status_json()
    );
    assert_eq!(a.app_says().as_deref(), Some("sample-app 2.0.0"));
    assert!(
        !a.app_dir().join("releases/3.0.0").exists(),
        "nothing unpacked"
    );

    // Downgrade to 1.0.0 (lower counter) without an operator signature: refused.
    c.ctl(&[
        "rollback",
        "web",
        "--env",
        "preprod",
        "--to",
        "1.0.0",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(
        a.status_json()["last_error"]
            .as_str()
            .unwrap()
            .contains("downgrade refused"),
        "{}",
        a.status_json()
    );
    assert_eq!(a.app_says().as_deref(), Some("sample-app 2.0.0"));

    // With the operator's signature it goes through.
    c.ctl(&[
        "rollback",
        "web",
        "--env",
        "preprod",
        "--to",
        "1.0.0",
        "--sign",
        key.to_str().unwrap(),
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    a.wait_serving("1.0.0");
}
