//! Release blobs in an S3-compatible bucket, against a real S3 server (moto
//! in server mode: the `moto[server]` package from PyPI, a few seconds to
//! install and start, and it implements multipart uploads and SigV4 checks
//! the way S3 answers them; a Rust server such as s3s-fs would cost CI minutes
//! of compiling). Two controllers on one PostgreSQL database share the
//! bucket; each one's blob directory is only its cache. Says skipped without
//! moto or PostgreSQL.

use integration_tests::*;

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";
const BUCKET: &str = "slipway-releases";

/// Two controllers on one database and one bucket (the second with the
/// first one's keys and admin token).
fn replicas_on_a_bucket(dir: &std::path::Path, s3: &S3Server) -> Option<(Controller, Controller)> {
    let database = fresh_postgres_database()?;
    let blobs = format!("s3://{BUCKET}/prod?endpoint={}", s3.endpoint);
    let flags = ["--database", database.as_str(), "--blobs", blobs.as_str()];
    let env = S3Server::env();
    std::fs::create_dir_all(dir.join("r0")).unwrap();
    let first = Controller::start_with_env(&dir.join("r0"), &flags, &env);
    let data_dir = dir.join("r1/controller");
    std::fs::create_dir_all(data_dir.join("pki")).unwrap();
    for f in ["ca.pem", "ca.key", "directive.key"] {
        std::fs::copy(
            first.data_dir.join("pki").join(f),
            data_dir.join("pki").join(f),
        )
        .unwrap();
    }
    std::fs::copy(
        first.data_dir.join("admin.token"),
        data_dir.join("admin.token"),
    )
    .unwrap();
    let second = Controller::start_with_env(&dir.join("r1"), &flags, &env);
    Some((first, second))
}

fn cached(c: &Controller) -> Vec<String> {
    std::fs::read_dir(c.data_dir.join("blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn release_blobs_live_in_the_bucket_and_a_wrong_copy_is_never_served() {
    let t = tempfile::tempdir().unwrap();
    let Some(mut s3) = S3Server::start(BUCKET) else {
        return;
    };
    let Some((r0, r1)) = replicas_on_a_bucket(t.path(), &s3) else {
        return;
    };
    // Published through r0: the blob is in the bucket under its digest.
    let agent = Agent::start(t.path(), &r1, "pre-1", "preprod", DB_ENV);
    publish(&r0, t.path(), &ReleaseOpts::new("1.0.0"));
    let listing = s3.curl(&[&format!(
        "{}/{BUCKET}?list-type=2&prefix=prod/sha256/",
        s3.endpoint
    )]);
    let in_bucket: Vec<String> = listing
        .split("<Key>prod/sha256/")
        .skip(1)
        .filter_map(|k| k.split('<').next())
        .map(String::from)
        .collect();
    assert!(!in_bucket.is_empty(), "{listing}");
    assert!(cached(&r1).is_empty(), "r1 has not needed it yet");

    // Its bytes replaced in the bucket: r1, which holds the host's session
    // and has no copy, must fetch it, and refuses what does not hash to its
    // name; the deploy fails and nothing wrong is kept.
    let object = |key: &str| format!("{}/{BUCKET}/prod/sha256/{key}", s3.endpoint);
    for key in &in_bucket {
        s3.put(&object(key), "not the release");
    }
    let out = r1.ctl(&[
        "deploy",
        "web",
        "1.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert_eq!(agent.app_says(), None, "nothing was installed");
    let log = std::fs::read_to_string(t.path().join("r1/controller.log")).unwrap();
    assert!(
        log.contains("does not match its name"),
        "the wrong copy was refused"
    );
    assert!(cached(&r1).is_empty(), "nothing wrong kept in r1's cache");

    // The right bytes back in the bucket (r0 kept its copy): r1 brings them
    // down, checked, and the host runs the release.
    for key in &in_bucket {
        let file = r0.data_dir.join("blobs/sha256").join(key);
        s3.put(&object(key), &format!("@{}", file.display()));
    }
    let out = r1.ctl(&[
        "retry",
        "web",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    agent.wait_serving("1.0.0");
    assert!(
        cached(&r1).iter().any(|c| in_bucket.contains(c)),
        "served from r1's copy of the bucket's blob"
    );

    // The bucket goes away: a publish fails cleanly and records nothing.
    s3.stop();
    let rel = sample_release(t.path(), &ReleaseOpts::new("3.0.0"));
    let out = r0.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "3.0.0",
        "--allow-dirty",
    ]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.trim().lines().count() <= 2, "{}", out.stderr);
    let releases = r0.ctl(&["releases", "web"]).ok().stdout;
    assert!(!releases.contains("3.0.0"), "{releases}");
}
