//! Adversarial tests, one attack each: every test asserts the refusal AND that
//! the host and the store are unchanged. Real controller, agents and slipctl
//! over TLS on loopback.

use std::time::Duration;

use integration_tests::{
    Agent, Controller, ReleaseOpts, eventually, exit, publish, sample_release,
};

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
    assert_eq!(out.code, exit::PERMISSION_DENIED, "{}", out.stderr);
    assert!(
        out.stderr.contains("lacks the publisher role"),
        "{}",
        out.stderr
    );
    assert_eq!(
        c.ctl(&["releases", "web"]).code,
        exit::NOT_FOUND,
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
        assert_eq!(
            out.code,
            exit::PERMISSION_DENIED,
            "{args:?} must be refused: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("lacks the promoter role"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(desired_in(&c, "1.0.0"), vec!["preprod"], "prod untouched");

    // No token, a garbage token, a revoked token: refused as well.
    let out = c.ctl_as("", &["deploy", "web", "1.0.0", "--env", "prod"]);
    assert_eq!(out.code, exit::PERMISSION_DENIED);
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
    // Calls without a valid token are refused before their body is read and
    // leave no row: an anonymous caller cannot write to a tenant's log.
    assert!(
        !history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "unauthenticated"),
        "{history}"
    );
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

    // The real one works once: a second machine presenting it is refused
    // (the same host running join again is harmless: tests/tests/join.rs).
    join(&c, t.path(), "web-1", &token).ok();
    assert!(identity("web-1").join("agent.pem").exists());
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = join(&c, &elsewhere, "web-1", &token);
    assert!(out.stderr.contains("already used"), "{}", out.stderr);
    assert!(!elsewhere.join("web-1/identity/identity.json").exists());

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
    a.append_config(&format!(
        "\n[trust]\npublisher_keys = [\"{}\"]\n",
        public.trim()
    ));
    a.spawn();
    a.wait_connected(&c);
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
    c.deploy_wait("1.0.0", "preprod").ok();
    publish_signed("2.0.0");
    c.deploy_wait("2.0.0", "preprod").ok();
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
    // The failed rollout is reverted to what runs: the refusal stays on record.
    assert!(
        a.status_json()["failed"]["reason"]
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

/// A Deployments client sending `token`, on a runtime of its own.
fn deployments_as(
    c: &Controller,
    token: &str,
) -> (
    tokio::runtime::Runtime,
    proto::v1::deployments_client::DeploymentsClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channel = rt.block_on(c.channel());
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let client = proto::v1::deployments_client::DeploymentsClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    (rt, client)
}

#[test]
fn a_signed_rollback_is_spent_once_and_its_replay_through_deploy_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let key_file = t.path().join("release.key");
    let public = c
        .ctl(&["keys", "generate", "--out", key_file.to_str().unwrap()])
        .ok()
        .stdout;
    let key = trust::sign::KeyPair::load(&key_file).unwrap();
    let mut a = Agent::configured(t.path(), &c, "web-1", "preprod", DB_ENV, true);
    a.append_config(&format!(
        "\n[trust]\npublisher_keys = [\"{}\"]\n",
        public.trim()
    ));
    a.spawn();
    a.wait_connected(&c);
    for version in ["1.0.0", "2.0.0"] {
        let rel = sample_release(t.path(), &ReleaseOpts::new(version));
        c.ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            version,
            "--sign",
            key_file.to_str().unwrap(),
        ])
        .ok();
        c.deploy_wait(version, "preprod").ok();
    }
    a.wait_serving("2.0.0");
    let releases = c.ctl(&["releases", "web", "--json"]).ok().json();
    let release = |v: &str| {
        releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .unwrap()
            .clone()
    };
    let (old, new) = (release("1.0.0"), release("2.0.0"));

    // The operator's authorization to go from 2.0.0 back to 1.0.0, exactly
    // as `slipctl rollback --to 1.0.0 --sign` makes it (kept here so it can
    // be replayed; the controller never shows it).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let terms = trust::sign::RollbackTerms::new(new["counter"].as_u64().unwrap(), now, 3600);
    let digest = old["release_digest"].as_str().unwrap();
    let s = key.sign(
        &terms
            .statement("default", "web", "preprod", "1.0.0", digest)
            .bytes(),
    );
    let authorization = vec![proto::v1::Signature {
        key: s.key,
        sig: s.sig,
    }];
    let wire_terms = proto::v1::RollbackTerms {
        from_counter: terms.from_counter,
        expires_at: terms.expires_at,
        nonce: terms.nonce.clone(),
    };
    let (rt, mut operator) = deployments_as(&c, &c.admin_token);
    let rollback = |dry_run| proto::v1::RollbackRequest {
        tenant: "default".into(),
        app: "web".into(),
        environment: "preprod".into(),
        to_version: "1.0.0".into(),
        authorization: authorization.clone(),
        rollback_terms: Some(wire_terms.clone()),
        dry_run,
    };
    // A dry run checks the authorization without spending it.
    let plan = rt
        .block_on(operator.rollback(rollback(true)))
        .expect("a dry run of the rollback")
        .into_inner();
    assert!(plan.dry_run && plan.rollout_id == 0, "{plan:?}");
    assert_eq!(a.app_says().as_deref(), Some("sample-app 2.0.0"));
    rt.block_on(operator.rollback(rollback(false)))
        .expect("the first use is honoured");
    a.wait_serving("1.0.0");

    // CI redeploys 2.0.0; a deployer token replays the old authorization.
    c.deploy_wait("2.0.0", "preprod").ok();
    a.wait_serving("2.0.0");
    let ci = c.token("ci", &["deployer"]);
    let (rt, mut ci) = deployments_as(&c, &ci);
    let refused = rt
        .block_on(ci.deploy(proto::v1::DeployRequest {
            tenant: "default".into(),
            app: "web".into(),
            version: "1.0.0".into(),
            environment: "preprod".into(),
            authorization: authorization.clone(),
            rollback_terms: Some(wire_terms),
            strategy: None,
            dry_run: true,
        }))
        .expect_err("a replayed rollback authorization is refused, dry run or not");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("was used already"),
        "{refused:?}"
    );
    // A v1 authorization (no terms) is refused with a clear message.
    let v1 = rt
        .block_on(ci.deploy(proto::v1::DeployRequest {
            tenant: "default".into(),
            app: "web".into(),
            version: "1.0.0".into(),
            environment: "preprod".into(),
            authorization,
            rollback_terms: None,
            strategy: None,
            dry_run: false,
        }))
        .expect_err("a v1 authorization is refused");
    assert!(
        v1.message().contains("v1 authorizations are refused"),
        "{v1:?}"
    );
    assert_eq!(desired_in(&c, "2.0.0"), ["preprod"]);
    assert_eq!(a.app_says().as_deref(), Some("sample-app 2.0.0"));
}

/// `CreateRelease` of `version` of web (the blob of `src`, already uploaded)
/// with `counter` and no signature, as a publisher token could send it.
fn create_release_with_counter(
    c: &Controller,
    token: &str,
    src: &std::path::Path,
    version: &str,
    counter: u64,
) -> Result<proto::v1::Release, tonic::Status> {
    // Its objects are on the controller already (published as 1.0.0).
    let entries = artifact::objects::scan_dir(src).unwrap();
    let manifest = artifact::Manifest::from_entries("web", version, None, entries).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let mut client = proto::v1::releases_client::ReleasesClient::with_interceptor(
            c.channel().await,
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            },
        );
        client
            .create_release(proto::v1::CreateReleaseRequest {
                manifest: manifest.to_canonical_bytes(),
                counter,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().release.unwrap())
    })
}

#[test]
fn release_counters_stay_in_range_and_a_yank_unblocks_signed_publishing() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let key = t.path().join("release.key");
    c.ctl(&["keys", "generate", "--out", key.to_str().unwrap()])
        .ok();
    let ci = c.token("ci", &["publisher", "deployer"]);
    let publish_signed = |version: &str| {
        let rel = sample_release(t.path(), &ReleaseOpts::new(version));
        c.ctl_as(
            &ci,
            &[
                "publish",
                rel.to_str().unwrap(),
                "--app",
                "web",
                "--version",
                version,
                "--sign",
                key.to_str().unwrap(),
            ],
        )
    };
    publish_signed("1.0.0").ok();
    let src = t.path().join("release-1.0.0");
    let counters = || -> Vec<(String, u64, bool)> {
        let listed = c.ctl(&["releases", "web", "--json"]).ok().json();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["version"].as_str().unwrap().to_string(),
                    r["counter"].as_u64().unwrap(),
                    !r["yanked_at"].is_null(),
                )
            })
            .collect()
    };

    // 2^64-1 (stored as -1 before) and 2^63 are out of range; a counter not
    // above the highest is refused too. Nothing is stored.
    for huge in [u64::MAX, 1 << 63] {
        let e = create_release_with_counter(&c, &ci, &src, "6.6.6", huge).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("out of range"), "{e:?}");
    }
    let e = create_release_with_counter(&c, &ci, &src, "0.9.0", 1).unwrap_err();
    assert!(
        e.message()
            .contains("release counter 1 is not above the highest (1)"),
        "{e:?}"
    );
    assert_eq!(counters(), [("1.0.0".to_string(), 1, false)]);

    // The largest counter is accepted, and then no signed release fits above it.
    let top = create_release_with_counter(&c, &ci, &src, "9.9.9", i64::MAX as u64).unwrap();
    assert_eq!(top.counter, i64::MAX as u64);
    let frozen = publish_signed("2.0.0");
    assert_ne!(frozen.code, 0);
    assert!(
        frozen.stderr.contains("no counter is left"),
        "{}",
        frozen.stderr
    );

    // The way out: an admin yanks it (a publisher may not; nor can a desired
    // release be yanked).
    let refused = c.ctl_as(&ci, &["releases", "yank", "web", "9.9.9"]);
    assert_eq!(refused.code, exit::PERMISSION_DENIED, "{}", refused.stderr);
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]).ok();
    let desired = c.ctl(&["releases", "yank", "web", "1.0.0"]);
    assert_eq!(desired.code, exit::FAILED, "{}", desired.stderr);
    assert!(
        desired.stderr.contains("web 1.0.0 is desired in preprod"),
        "{}",
        desired.stderr
    );
    c.ctl(&[
        "releases",
        "yank",
        "web",
        "9.9.9",
        "--reason",
        "counter by mistake",
    ])
    .ok();
    publish_signed("2.0.0").ok();
    assert_eq!(
        counters(),
        [
            ("2.0.0".to_string(), 2, false),
            ("9.9.9".to_string(), i64::MAX as u64, true),
            ("1.0.0".to_string(), 1, false),
        ]
    );
    let table = c.ctl(&["releases", "list", "web"]).ok().stdout;
    assert!(table.contains("9.9.9 (yanked)"), "{table}");
    // A yanked release is never desired again.
    let e = c.ctl(&["deploy", "web", "9.9.9", "--env", "preprod"]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.contains("was yanked"), "{}", e.stderr);
    let history = c.ctl(&["history", "web"]).ok().stdout;
    assert!(history.contains("yank"), "{history}");
}

/// Fetches a blob with `agent`'s certificate: the gRPC status of the refusal.
fn fetch_refused(c: &Controller, agent: &Agent, digest: &str) -> tonic::Status {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = proto::v1::agents_client::AgentsClient::new(agent.channel(c).await);
        let mut stream = match client
            .fetch_blob(proto::v1::FetchBlobRequest {
                digest: digest.into(),
                offset: 0,
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(status) => return status,
        };
        match stream.message().await {
            Err(status) => status,
            Ok(m) => panic!(
                "fetch of {digest} was served: {:?} bytes",
                m.map(|c| c.data.len())
            ),
        }
    })
}

#[test]
fn another_tenant_cannot_see_fetch_or_probe_our_blobs() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let acme = c
        .ctl(&["tenants", "add", "acme"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let acme_dir = t.path().join("acme");
    std::fs::create_dir_all(&acme_dir).unwrap();
    let rel = sample_release(&acme_dir, &ReleaseOpts::new("1.0.0"));
    c.ctl_as(
        &acme,
        &[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.0",
        ],
    )
    .ok();
    let acme_release = c.ctl_as(&acme, &["releases", "web", "--json"]).ok().json();
    let blob = acme_release[0]["blob_digest"].as_str().unwrap().to_string();

    // An agent of tenant default asks for acme's blob by digest: refused
    // exactly like a digest nobody uploaded.
    let a = Agent::start(t.path(), &c, "web-1", "preprod", DB_ENV);
    eventually(Duration::from_secs(20), "agent enrolled", || {
        a.state_dir
            .join("identity/agent.pem")
            .exists()
            .then_some(())
    });
    let theirs = fetch_refused(&c, &a, &blob);
    let nobody = fetch_refused(&c, &a, &format!("sha256:{}", "0".repeat(64)));
    assert_eq!(theirs.code(), tonic::Code::NotFound, "{theirs:?}");
    assert_eq!(
        theirs.message().replace(&blob, "D"),
        nobody
            .message()
            .replace(&format!("sha256:{}", "0".repeat(64)), "D"),
        "the refusal does not tell whether another tenant has it"
    );

    // default's view: no app web, the digest is reported missing (not "present").
    assert_eq!(c.ctl(&["releases", "web"]).code, exit::NOT_FOUND);
    // Publishing the same bytes under default uploads them again (no probe by digest).
    let out = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.0",
        ])
        .ok();
    assert!(out.stdout.contains("uploaded"), "{}", out.stdout);
    // acme's token cannot act on tenant default.
    let out = c.ctl_as(&acme, &["--tenant", "default", "status"]);
    assert_eq!(out.code, exit::PERMISSION_DENIED);
    assert!(
        out.stderr.contains("is for tenant \"acme\""),
        "{}",
        out.stderr
    );
    // Only operators (admins of default) create tenants.
    let out = c.ctl_as(&acme, &["tenants", "add", "evil"]);
    assert!(
        out.stderr.contains("only admins of tenant"),
        "{}",
        out.stderr
    );
}

#[test]
fn agent_certificates_renew_before_they_expire_and_the_agent_keeps_working() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start_with(t.path(), &["--agent-cert-ttl-secs", "12"]);
    let a = Agent::start(t.path(), &c, "web-1", "preprod", DB_ENV);
    let fingerprint = || {
        c.ctl(&["hosts", "--json"]).ok().json()[0]["cert_fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = eventually(Duration::from_secs(20), "enrollment", || {
        Some(fingerprint()).filter(|f| !f.is_empty())
    });
    let second = eventually(Duration::from_secs(20), "a renewed certificate", || {
        Some(fingerprint()).filter(|f| !f.is_empty() && *f != first)
    });
    eventually(Duration::from_secs(20), "a second renewal", || {
        Some(fingerprint()).filter(|f| *f != first && *f != second)
    });
    // Well past the first certificate's life the host still deploys.
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]).ok();
    a.wait_serving("1.0.0");
    assert!(a.log_text().contains("certificate renewed"));
}

#[test]
fn plaintext_is_loopback_only_and_https_needs_the_ca() {
    let t = tempfile::tempdir().unwrap();
    let plain = integration_tests::free_port();
    let c = Controller::start_with(
        t.path(),
        &["--plaintext-listen", &format!("127.0.0.1:{plain}")],
    );
    let run = |url: &str, token: &str, ca: bool, args: &[&str]| -> integration_tests::CtlOutput {
        let mut cmd = std::process::Command::new(integration_tests::bin("slipctl"));
        cmd.args(args)
            .env("SLIPWAY_CONTROLLER", url)
            .env("SLIPWAY_TOKEN", token);
        if ca {
            cmd.env("SLIPWAY_CA_CERT", c.ca_cert());
        } else {
            cmd.env_remove("SLIPWAY_CA_CERT");
        }
        cmd.output().unwrap().into()
    };
    let plain_url = format!("http://127.0.0.1:{plain}");
    // slipctl over the explicit loopback plaintext listener: still needs a token.
    let out = run(&plain_url, &c.admin_token, false, &["envs"]).ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("prod ") && l.contains(" yes ")),
        "{}",
        out.stdout
    );
    let out = run(&plain_url, "", false, &["envs"]);
    assert!(out.stderr.contains("no API token"), "{}", out.stderr);
    // Agent calls are not served there at all.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let ch = trust::tls::connect(&plain_url, None, false).await.unwrap();
        proto::v1::agents_client::AgentsClient::new(ch)
            .fetch_blob(proto::v1::FetchBlobRequest {
                digest: format!("sha256:{}", "0".repeat(64)),
                offset: 0,
            })
            .await
            .expect_err("no agent service on plaintext")
    });
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // Plaintext to a non-loopback address, https without the CA: usage errors.
    let out = run("http://10.1.2.3:7400", &c.admin_token, false, &["envs"]);
    assert_eq!(out.code, exit::USAGE);
    assert!(out.stderr.contains("loopback only"), "{}", out.stderr);
    let out = run(&c.url, &c.admin_token, false, &["envs"]);
    assert_eq!(out.code, exit::USAGE);
    assert!(out.stderr.contains("--ca-cert"), "{}", out.stderr);
    // With the CA, https works.
    run(&c.url, &c.admin_token, true, &["envs"]).ok();

    // The controller refuses to serve plaintext off loopback.
    let out = std::process::Command::new(integration_tests::bin("slipway-controller"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--plaintext-listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(t.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback addresses only"));
}

#[test]
fn canary_secrets_never_leave_the_host_or_reach_a_log() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let db_canary = format!("canary-db-{}", trust::secret::random_hex(8));
    let key_canary = format!("canary-key-{}", trust::secret::random_hex(8));
    let env = format!("DATABASE_URL=postgres://app:{db_canary}@db/app\nPAYMENT_KEY={key_canary}\n");
    let a = Agent::start(t.path(), &c, "web-1", "preprod", &env);
    let ci = c.token("ci", &["publisher", "deployer"]);

    // Healthy v1 whose prepare hook prints the secret; broken v2 (rolled back);
    // v3 whose prepare hook fails after printing it; an operator rollback.
    let mut v1 = ReleaseOpts::new("1.0.0");
    v1.prepare = "echo db=$DATABASE_URL key=$PAYMENT_KEY";
    let mut v2 = ReleaseOpts::new("2.0.0");
    v2.healthy = false;
    let mut v3 = ReleaseOpts::new("3.0.0");
    v3.prepare = "echo $PAYMENT_KEY >&2; exit 3";
    for o in [&v1, &v2, &v3] {
        let rel = sample_release(t.path(), o);
        c.ctl_as(
            &ci,
            &[
                "publish",
                rel.to_str().unwrap(),
                "--app",
                "web",
                "--version",
                o.version,
            ],
        )
        .ok();
    }
    c.ctl_as(
        &ci,
        &[
            "deploy",
            "web",
            "1.0.0",
            "--env",
            "preprod",
            "--wait",
            "--timeout",
            "60",
        ],
    )
    .ok();
    let mut replies = Vec::new();
    for v in ["2.0.0", "3.0.0"] {
        let out = c.ctl_as(
            &ci,
            &[
                "deploy",
                "web",
                v,
                "--env",
                "preprod",
                "--wait",
                "--timeout",
                "60",
            ],
        );
        replies.push(out.stdout + &out.stderr);
    }
    eventually(Duration::from_secs(30), "v3 refused", || {
        a.deploy_log().contains("3.0.0").then_some(())
    });
    a.wait_serving("1.0.0");
    c.ctl_as(
        &ci,
        &["rollback", "web", "--env", "preprod", "--to", "1.0.0"],
    )
    .ok();
    for args in [
        vec!["status", "--json"],
        vec!["history", "--json", "--limit", "500"],
        vec!["releases", "web", "--json"],
        vec!["hosts", "--json"],
        vec!["tokens", "list", "--json"],
    ] {
        let out = c.ctl(&args).ok();
        replies.push(out.stdout + &out.stderr);
    }
    assert!(
        a.deploy_log().contains("db=***"),
        "the hook ran and its output was kept, masked: {}",
        a.deploy_log()
    );

    let ci_secret = ci.rsplit('_').next().unwrap().to_string();
    let admin_secret = c.admin_token.rsplit('_').next().unwrap().to_string();
    let mut places: Vec<(String, String)> = replies
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("controller reply {i}"), r))
        .collect();
    let mut files = vec![
        t.path().join("controller.log"),
        t.path().join("agent-web-1.log"),
        a.app_dir().join("status.json"),
        a.app_dir().join("deploy.log"),
    ];
    for entry in std::fs::read_dir(&c.data_dir).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("slipway.db")
        {
            files.push(entry.path());
        }
    }
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        places.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for (where_, text) in &places {
        for canary in [&db_canary, &key_canary, &ci_secret, &admin_secret] {
            assert!(
                !text.contains(canary.as_str()),
                "{canary} leaked into {where_}"
            );
        }
    }
}

/// Publishes, through the real API, a blob whose tar does not match its
/// manifest (as a compromised publisher or controller could): `../evil` where
/// the manifest lists `x`.
fn publish_hostile(c: &Controller, version: &str) {
    let mut tarball = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tarball);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        let name = b"../evil";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
    }
    let blob = zstd::encode_all(&tarball[..], 3).unwrap();
    let digest = artifact::Digest::of(&blob).to_string();
    let manifest = artifact::Manifest {
        format: 1,
        app: "web".into(),
        version: version.into(),
        git_commit: None,
        blob: Some(artifact::manifest::BlobRef {
            digest: digest.clone(),
            size: blob.len() as u64,
        }),
        entries: vec![artifact::Entry {
            path: "x".into(),
            kind: artifact::EntryKind::File,
            mode: 0o644,
            size: 1,
            sha256: Some(artifact::Digest::of(b"x").to_string()),
            target: None,
        }],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use proto::v1::{
            CreateReleaseRequest, UploadBlobHeader, UploadBlobRequest, upload_blob_request,
        };
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", c.admin_token).parse().unwrap();
        let mut client = proto::v1::releases_client::ReleasesClient::with_interceptor(
            c.channel().await,
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            },
        );
        let msgs = vec![
            UploadBlobRequest {
                part: Some(upload_blob_request::Part::Header(UploadBlobHeader {
                    tenant: String::new(),
                    digest,
                    size: blob.len() as u64,
                })),
            },
            UploadBlobRequest {
                part: Some(upload_blob_request::Part::Chunk(blob)),
            },
        ];
        client.upload_blob(tokio_stream::iter(msgs)).await.unwrap();
        client
            .create_release(CreateReleaseRequest {
                manifest: manifest.to_canonical_bytes(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

#[test]
fn a_hostile_archive_is_refused_by_the_app_user_and_the_host_is_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    // The app's user must be able to reach its files.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Controller::start(t.path());
    let mut a = Agent::configured(t.path(), &c, "web-1", "preprod", DB_ENV, true);
    a.append_config("user = \"nobody\"\n");
    a.spawn();
    a.wait_connected(&c);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    a.wait_serving("1.0.0");
    let releases = a.app_dir().join("releases");
    let before: Vec<_> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();

    publish_hostile(&c, "2.0.0");
    c.ctl(&["deploy", "web", "2.0.0", "--env", "preprod"]).ok();
    let error = eventually(
        Duration::from_secs(30),
        "the hostile release to be refused",
        || {
            // The refusal is on record even once the failed rollout is reverted.
            let s = a.status_json();
            (s["failed"]["version"] == "2.0.0")
                .then(|| s["failed"]["reason"].as_str().unwrap().to_string())
        },
    );
    assert!(
        error.contains("unpack") && error.contains("not in the manifest"),
        "{error}"
    );
    assert!(
        error.contains("as uid"),
        "refused by the unpacking child: {error}"
    );
    assert_eq!(a.app_says().as_deref(), Some("sample-app 1.0.0"));
    let after: Vec<_> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "no release, temp or staging dir left");
    assert!(!a.app_dir().join("evil").exists() && !releases.join("evil").exists());
}

#[test]
fn an_operator_provided_ca_is_used_and_pinned() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("operator-ca");
    let ca = trust::pki::Ca::load_or_create(&ca_dir).unwrap();
    let (cert, key) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"));
    let c = Controller::start_with(
        t.path(),
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
    );
    // The controller made no CA of its own, and join tokens pin the operator's.
    assert!(!c.data_dir.join("pki/ca.pem").exists());
    let token = c.join_token("web-9", "preprod");
    let pin = ca.pin().strip_prefix("sha256:").unwrap();
    assert!(token.ends_with(pin), "{token} pins {pin}");
    // slipctl (given the operator's CA file) and an enrolling agent trust it.
    c.ctl(&["envs"]).ok();
    let _a = Agent::start(t.path(), &c, "web-1", "preprod", DB_ENV);
    eventually(Duration::from_secs(20), "the agent to connect", || {
        let hosts = c.ctl(&["hosts", "--json"]).ok().json();
        (hosts[0]["connected"] == true).then_some(())
    });
}
