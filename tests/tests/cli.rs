//! slipctl's command line as a user meets it: every subcommand explains itself
//! with an example, flag typos exit 2 before anything is sent, each class of
//! failure has its exit code, and help, tables, JSON and error messages are
//! pinned by insta snapshots (times, ids, ports and secrets redacted).

use std::path::Path;
use std::process::{Command, Stdio};

use integration_tests::{
    Controller, CtlOutput, ReleaseOpts, bin, exit, free_port, sample_release, slipctl,
};

const SUBCOMMANDS: &[&str] = &[
    "publish", "deploy", "promote", "rollback", "retry", "releases", "status", "history", "envs",
    "rollout", "drift", "hosts", "apps", "tokens", "tenants", "whoami", "keys", "config",
];

/// insta settings with filters for what varies between runs.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    for (re, with) in [
        (r"swt_[0-9a-f]{16}_[0-9a-f]{64}", "[API TOKEN]"),
        (
            r"swj_[0-9a-f]{16}_[0-9a-f]{64}_[0-9a-f]{64}",
            "[JOIN TOKEN]",
        ),
        (r"\b[0-9a-f]{16}\b", "[ID]"),
        (r"sha256:[0-9a-f]{12,64}", "sha256:[DIGEST]"),
        (r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\dZ", "[TIME]"),
        (r"\b\d+[smhd] ago\b", "[AGO]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"valid until \d+", "valid until [UNIX TIME]"),
        (r"\(commit [0-9a-z]+\)", "(commit [SHA])"),
    ] {
        s.add_filter(re, with);
    }
    s
}

/// stdout, then stderr and the exit code, as one snapshot text.
fn shown(out: &CtlOutput) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.code, out.stdout, out.stderr
    )
}

/// slipctl against `c` with the admin token and a fixed table width.
fn ctl_narrow(c: &Controller, columns: &str, args: &[&str]) -> CtlOutput {
    std::process::Command::new(bin("slipctl"))
        .args(args)
        .env("SLIPWAY_CONTROLLER", &c.url)
        .env("SLIPWAY_CA_CERT", c.ca_cert())
        .env("SLIPWAY_TOKEN", &c.admin_token)
        .env("COLUMNS", columns)
        .output()
        .expect("run slipctl")
        .into()
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in SUBCOMMANDS {
        let out = std::process::Command::new(bin("slipctl"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example:"),
            "{sub} --help lacks an example:\n{text}"
        );
        assert!(
            text.contains(&format!("slipctl {sub}")),
            "{sub}'s example uses it:\n{text}"
        );
    }
    let top = slipctl("http://127.0.0.1:1", &["--help"]);
    assert_eq!(top.code, 0);
    assert!(
        top.stdout.contains("3  controller unreachable"),
        "exit codes documented"
    );
}

#[test]
fn help_is_pinned() {
    let _s = settings().bind_to_scope();
    for (name, args) in [
        ("help_top", &["--help"][..]),
        ("help_deploy", &["deploy", "--help"]),
        ("help_hosts_add", &["hosts", "add", "--help"]),
        ("help_tokens_create", &["tokens", "create", "--help"]),
    ] {
        let out = slipctl("http://127.0.0.1:1", args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        insta::assert_snapshot!(name, out.stdout);
    }
}

#[test]
fn version_names_the_binary_and_its_commit() {
    let out = slipctl("http://127.0.0.1:1", &["--version"]);
    assert_eq!(out.code, 0);
    let line = out.stdout.trim();
    assert!(
        line.starts_with(&format!("slipctl {} (commit ", env!("CARGO_PKG_VERSION")))
            && line.ends_with(')'),
        "{line}"
    );
}

#[test]
fn usage_errors_exit_2_without_contacting_anyone() {
    let out = slipctl("http://127.0.0.1:1", &["deploy", "web"]);
    assert_eq!(out.code, exit::USAGE, "{}", out.stderr);
    assert!(out.stderr.contains("--env"), "{}", out.stderr);
}

/// Typos in flag values are caught by slipctl itself: exit 2 with clap's
/// message, although nothing listens at the address (that would be exit 3).
#[test]
fn bad_flag_values_exit_2_before_any_network_call() {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let _s = settings().bind_to_scope();
    let cases: &[(&str, &[&str])] = &[
        (
            "batch_not_a_count",
            &["deploy", "web", "1.0.0", "--env", "prod", "--batch", "2x"],
        ),
        (
            "batch_zero",
            &["deploy", "web", "1.0.0", "--env", "prod", "--batch", "0%"],
        ),
        (
            "max_failures_over_100",
            &[
                "promote",
                "web",
                "--from",
                "a",
                "--to",
                "b",
                "--max-failures",
                "150%",
            ],
        ),
        (
            "role_typo",
            &["tokens", "create", "ci", "--role", "deployr"],
        ),
        (
            "criticality_typo",
            &[
                "hosts",
                "add",
                "h",
                "--env",
                "prod",
                "--criticality",
                "huge",
            ],
        ),
        ("label_without_value", &["hosts", "--label", "zone"]),
        ("label_bad_key", &["hosts", "set", "h", "--label", "a b=c"]),
        (
            "unlabel_bad_key",
            &["hosts", "set", "h", "--unlabel", "a/b c"],
        ),
        (
            "selector_bad",
            &["apps", "place", "web", "--env", "prod", "--selector", "=x"],
        ),
        ("output_unknown", &["status", "-o", "yaml"]),
    ];
    for (name, args) in cases {
        let out = slipctl(&nobody, args);
        assert_eq!(out.code, exit::USAGE, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        insta::assert_snapshot!(format!("bad_value_{name}"), out.stderr);
    }
    // The same commands with good values do try the network: nothing listens.
    let out = slipctl(
        &nobody,
        &["deploy", "web", "1.0.0", "--env", "prod", "--batch", "25%"],
    );
    assert_eq!(out.code, exit::UNREACHABLE, "{}", out.stderr);
}

#[test]
fn an_unreachable_controller_exits_3_with_one_line() {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let out = slipctl(&nobody, &["status"]);
    assert_eq!(out.code, exit::UNREACHABLE, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("error: cannot reach controller at {nobody}")),
        "{}",
        out.stderr
    );
}

/// `http://` to the controller's TLS port reaches a socket but no gRPC: that
/// is a protocol mismatch, exit 3 with a hint, not a generic failure.
#[test]
fn plaintext_to_the_tls_port_is_unreachable_and_says_why() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let plain = c.url.replace("https://", "http://");
    let out = std::process::Command::new(bin("slipctl"))
        .args(["envs"])
        .env("SLIPWAY_CONTROLLER", &plain)
        .env("SLIPWAY_TOKEN", &c.admin_token)
        .env_remove("SLIPWAY_CA_CERT")
        .output()
        .unwrap();
    let out = CtlOutput::from(out);
    assert_eq!(out.code, exit::UNREACHABLE, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("use https://"),
        "names the fix: {}",
        out.stderr
    );
}

#[test]
fn refusals_and_unknown_names_have_their_own_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let viewer = c.token("dashboard", &["viewer"]);
    let _s = settings().bind_to_scope();

    let out = c.ctl_as(&viewer, &["envs", "set", "prod", "--soak", "60"]);
    assert_eq!(out.code, exit::PERMISSION_DENIED, "{}", out.stderr);
    insta::assert_snapshot!("error_permission_denied", shown(&out));
    let out = c.ctl_as("", &["status"]);
    assert_eq!(out.code, exit::PERMISSION_DENIED, "{}", out.stderr);
    insta::assert_snapshot!("error_no_token", shown(&out));

    for (name, args) in [
        ("error_unknown_app", &["releases", "wbe"][..]),
        (
            "error_unknown_env",
            &["envs", "set", "prdo", "--soak", "60"],
        ),
        ("error_unknown_host", &["hosts", "revoke", "nope-1"]),
        ("error_unknown_token", &["tokens", "revoke", "nope"]),
    ] {
        let out = c.ctl(args);
        assert_eq!(out.code, exit::NOT_FOUND, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        insta::assert_snapshot!(name, shown(&out));
    }
}

/// Tables fit the width they are given; `-o json` gives RFC 3339 times and
/// what a script needs from commands that change things.
#[test]
fn tables_fit_the_terminal_and_json_has_rfc3339_times() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let _s = settings().bind_to_scope();
    let out = c
        .ctl(&[
            "-o",
            "json",
            "tokens",
            "create",
            "ci",
            "--role",
            "publisher",
            "--role",
            "deployer",
        ])
        .ok();
    let created = out.json();
    assert!(created["token"].as_str().unwrap().starts_with("swt_"));
    insta::assert_snapshot!("json_tokens_create", out.stdout);
    let out = c
        .ctl(&[
            "hosts",
            "add",
            "web-1",
            "--env",
            "prod",
            "--purpose",
            "web",
            "--criticality",
            "high",
            "--label",
            "zone=fsn1",
            "--json",
        ])
        .ok();
    let join = out.json();
    assert!(join["join_token"].as_str().unwrap().starts_with("swj_"));
    assert!(
        join["expires_at"].as_str().unwrap().ends_with('Z'),
        "{join}"
    );
    insta::assert_snapshot!("json_hosts_add", out.stdout);
    insta::assert_snapshot!("json_whoami", c.ctl(&["whoami", "-o", "json"]).ok().stdout);

    insta::assert_snapshot!("table_envs", ctl_narrow(&c, "200", &["envs"]).ok().stdout);
    insta::assert_snapshot!("table_hosts", ctl_narrow(&c, "200", &["hosts"]).ok().stdout);
    // Narrow: cells wrap inside their column instead of overflowing the line.
    let narrow = ctl_narrow(&c, "60", &["hosts"]).ok().stdout;
    insta::assert_snapshot!("table_hosts_60_columns", narrow);
    let history = ctl_narrow(&c, "72", &["history"]).ok().stdout;
    for out in [&narrow, &history] {
        let widest = out.lines().map(|l| l.trim_end().chars().count()).max();
        assert!(widest <= Some(72), "{widest:?} columns:\n{out}");
    }
    insta::assert_snapshot!(
        "table_history",
        ctl_narrow(&c, "250", &["history"]).ok().stdout
    );
    let events = c.ctl(&["history", "-o", "json"]).ok().json();
    let at = events[0]["at"].as_str().unwrap();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{at}"
    );
}

/// `publish` and `deploy` print, with `-o json`, the digest and the rollout
/// id and generation a CI job keeps.
#[test]
fn publish_and_deploy_speak_json_for_ci() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    let out = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.0",
            "--allow-dirty",
            "-o",
            "json",
        ])
        .ok();
    let published = out.json();
    let digest = published["release_digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{published}");
    assert_eq!(published["uploaded"], true);
    let out = c
        .ctl(&["deploy", "web", "1.0.0", "--env", "preprod", "--json"])
        .ok();
    let change = out.json();
    assert_eq!(change["release_digest"], digest.as_str());
    assert_eq!(change["version"], "1.0.0");
    assert!(change["previous_version"].is_null(), "{change}");
    assert!(change["generation"].as_u64().unwrap() >= 1, "{change}");
    assert!(change["rollout_id"].as_u64().is_some(), "{change}");
}

/// slipctl with only the contexts file at `config` (no SLIPWAY_* variables).
fn ctl_with_contexts(config: &Path, cwd: &Path, args: &[&str], vars: &[(&str, &str)]) -> CtlOutput {
    let mut cmd = Command::new(bin("slipctl"));
    for v in [
        "SLIPWAY_CONTROLLER",
        "SLIPWAY_CA_CERT",
        "SLIPWAY_TOKEN",
        "SLIPWAY_TOKEN_FILE",
        "SLIPWAY_TENANT",
        "SLIPWAY_CONTEXT",
    ] {
        cmd.env_remove(v);
    }
    cmd.args(args)
        .env("SLIPWAY_CONFIG", config)
        .envs(vars.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run slipctl")
        .into()
}

#[test]
fn a_context_names_the_controller_ca_and_token_and_a_flag_or_variable_wins() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    std::fs::write(t.path().join("admin.token"), &c.admin_token).unwrap();
    let ca = c.ca_cert();
    let config = t.path().join("home/slipway/config.toml");
    let run = |args: &[&str]| ctl_with_contexts(&config, t.path(), args, &[]);

    // Nothing configured: the built-in default, and no CA to trust.
    assert_eq!(run(&["whoami"]).code, exit::USAGE);

    // Relative paths are stored absolute: the context works from anywhere.
    let out = run(&[
        "config",
        "set-context",
        "local",
        "--controller",
        &c.url,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--token-file",
        "admin.token",
    ])
    .ok();
    assert!(
        out.stdout.contains("context local created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(current)"),
        "the first context becomes current"
    );
    let stored = std::fs::read_to_string(&config).unwrap();
    let token_path = t.path().join("admin.token");
    assert!(
        stored.contains(&format!("token_file = \"{}\"", token_path.display())),
        "{stored}"
    );
    assert!(
        !stored.contains(&c.admin_token),
        "only the token's path is stored"
    );
    let elsewhere = ctl_with_contexts(&config, Path::new("/"), &["whoami", "-o", "json"], &[]);
    assert_eq!(elsewhere.ok().json()["tenant"], "default");

    // A second context; chosen per command by flag or variable.
    let dead = format!("https://127.0.0.1:{}", free_port());
    run(&[
        "config",
        "set-context",
        "dead",
        "--controller",
        &dead,
        "--ca-cert",
        ca.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        run(&["--context", "dead", "whoami"]).code,
        exit::UNREACHABLE
    );
    let by_var = ctl_with_contexts(
        &config,
        t.path(),
        &["whoami"],
        &[("SLIPWAY_CONTEXT", "dead")],
    );
    assert_eq!(by_var.code, exit::UNREACHABLE);
    let listed = run(&["config", "get-contexts", "-o", "json"]).ok().json();
    let names: Vec<(&str, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["current"] == true))
        .collect();
    assert_eq!(names, [("dead", false), ("local", true)]);

    // use-context switches every later command; a flag still wins over it.
    run(&["config", "use-context", "dead"]).ok();
    assert_eq!(
        run(&["config", "current-context"]).ok().stdout.trim(),
        "dead"
    );
    assert_eq!(run(&["whoami"]).code, exit::UNREACHABLE);
    let token = token_path.to_str().unwrap();
    assert_eq!(
        run(&["--controller", &c.url, "--token-file", token, "whoami"]).code,
        0
    );

    // An unknown context: one line naming the file and the contexts there.
    let out = run(&["--context", "nope", "whoami"]);
    assert_eq!(out.code, exit::USAGE);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: no context \"nope\" in {} (contexts: dead, local)",
            config.display()
        )
    );
    let out = run(&["config", "set-context", "bad name"]);
    assert_eq!(out.code, exit::USAGE, "{}", out.stderr);
    run(&["config", "delete-context", "dead"]).ok();
    assert_eq!(run(&["config", "current-context"]).code, exit::NOT_FOUND);
}
