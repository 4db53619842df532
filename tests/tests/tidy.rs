//! ARCHITECTURE.md's invariants, checked on the source tree: every file says
//! what it owns, prost types stay at the gRPC edges, the agent never links
//! sqlx, nothing blocks an async worker, and stringly-typed errors only go
//! down. A failure names the file and the rule.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file of the workspace's crates (not target/, not fuzz corpora).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                    walk(&path, root, out);
                }
            } else if name.ends_with(".rs") {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    for krate in [
        "proto",
        "artifact",
        "trust",
        "daemon",
        "controller",
        "agent",
        "ctl",
        "tests",
        "examples",
        "fuzz",
    ] {
        walk(&root.join(krate), &root, &mut out);
    }
    out.sort();
    assert!(out.len() > 50, "the walk found the sources");
    out
}

/// The non-test part of a file (up to its first `#[cfg(test)]`).
fn code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn every_source_file_opens_with_what_it_owns() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` line: {missing:?}"
    );
}

#[test]
fn nothing_blocks_an_async_worker_or_is_ignored() {
    for (path, text) in sources() {
        if path == "tests/tests/tidy.rs" {
            continue;
        }
        assert!(!text.contains("block_in_place"), "{path}: block_in_place");
        assert!(!text.contains("#[ignore"), "{path}: #[ignore]");
    }
}

/// Files of the agent and the controller that may name prost types: the gRPC
/// edges. The list only ever shrinks (`manifests.rs`, added with issue 12,
/// is the manifest fetch: an edge like `fetch.rs`).
const PROTO_EDGES: &[&str] = &[
    "agent/src/session.rs",
    "agent/src/directive.rs",
    "agent/src/fetch.rs",
    "agent/src/manifests.rs",
    "agent/src/identity.rs",
    "agent/src/state.rs",
    "agent/src/app/backend.rs",
    "controller/src/grpc/",
    "controller/src/lib.rs",
];

#[test]
fn prost_types_stay_at_the_grpc_edges() {
    for (path, text) in sources() {
        let daemon = path.starts_with("agent/src/") || path.starts_with("controller/src/");
        if !daemon || PROTO_EDGES.iter().any(|edge| path.starts_with(edge)) {
            continue;
        }
        assert!(
            !code(&text).contains("proto::"),
            "{path} names prost types; convert to domain types at the edge"
        );
    }
}

#[test]
fn the_agent_never_links_sqlx_and_the_app_runner_never_sees_the_wire() {
    let agent = std::fs::read_to_string(root().join("agent/Cargo.toml")).unwrap();
    assert!(!agent.contains("sqlx"), "agent/Cargo.toml names sqlx");
    for (path, text) in sources() {
        if path.starts_with("agent/src/app/") && path != "agent/src/app/backend.rs" {
            assert!(!code(&text).contains("proto::"), "{path} imports proto");
        }
    }
}

/// Files allowed `Result<_, String>` and how many (the planner's refusal is
/// still text); a file may go below its count, never above, and no other
/// file may start.
const STRING_ERRORS: &[(&str, usize)] = &[
    ("controller/src/plan.rs", 1),
    // clap value parsers: the text is clap's usage error, printed as is.
    ("ctl/src/values.rs", 6),
];

/// How many `Result<T, String>` types `text` names.
fn string_results(text: &str) -> usize {
    let mut n = 0;
    for (at, _) in text.match_indices("Result<") {
        let rest = &text[at + "Result<".len()..];
        let (mut depth, mut last_arg) = (0i32, 0usize);
        for (i, c) in rest.char_indices() {
            match c {
                '<' | '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => last_arg = i + 1,
                '>' if depth == 0 => {
                    if last_arg > 0 && rest[last_arg..i].trim() == "String" {
                        n += 1;
                    }
                    break;
                }
                '>' => depth -= 1,
                _ => {}
            }
        }
    }
    n
}

#[test]
fn the_string_error_count_sees_what_it_should() {
    assert_eq!(string_results("fn f() -> Result<(), String> {"), 1);
    assert_eq!(
        string_results("Result<Vec<BTreeMap<String, String>>, String>"),
        1
    );
    assert_eq!(string_results("Result<BTreeMap<String, String>, Error>"), 0);
    assert_eq!(string_results("Option<Result<ProcRecord, String>>"), 1);
}

#[test]
fn stringly_typed_errors_only_go_down() {
    for (path, text) in sources() {
        let n = string_results(code(&text));
        let allowed = STRING_ERRORS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(0, |(_, n)| *n);
        assert!(
            n <= allowed,
            "{path}: {n} `Result<_, String>` (allowed {allowed}); use a typed error"
        );
    }
}
