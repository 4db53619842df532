//! slipctl's command line as a user meets it: every subcommand explains itself
//! with an example, and usage errors exit 2.

use integration_tests::{bin, slipctl};

const SUBCOMMANDS: &[&str] = &[
    "publish", "deploy", "promote", "rollback", "retry", "releases", "status", "history", "envs",
    "rollout", "drift", "hosts", "apps",
];

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
        top.stdout.contains("3 controller unreachable"),
        "exit codes documented"
    );
}

#[test]
fn usage_errors_exit_2_without_contacting_anyone() {
    let out = slipctl("http://127.0.0.1:1", &["deploy", "web"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--env"), "{}", out.stderr);
}
