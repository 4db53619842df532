//! Release blobs in an S3-compatible bucket, against a real S3 server (moto
//! in server mode: the `moto[server]` package from PyPI, a few seconds to
//! install and start, and it implements multipart uploads and SigV4 checks
//! the way S3 answers them; a Rust server such as s3s-fs would cost CI minutes
//! of compiling). Two controllers on one PostgreSQL database share the
//! bucket; each one's blob directory is only its cache. Says skipped without
//! moto or PostgreSQL.

use std::process::Command;
use std::time::Duration;

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

/// The controller's largest blob in the bucket: a release's full pack.
fn largest_blob(c: &Controller) -> (String, std::path::PathBuf) {
    let mut blobs: Vec<(u64, String, std::path::PathBuf)> =
        std::fs::read_dir(c.data_dir.join("blobs/sha256"))
            .unwrap()
            .flatten()
            .map(|e| {
                let len = e.metadata().unwrap().len();
                (len, e.file_name().to_string_lossy().to_string(), e.path())
            })
            .collect();
    blobs.sort();
    let (_, name, path) = blobs.pop().expect("a blob on the controller");
    (name, path)
}

/// One controller whose blobs live in `s3`'s bucket and who hands agents
/// presigned URLs; with its `--blobs` value.
fn presigning_controller(dir: &std::path::Path, s3: &S3Server) -> (Controller, String) {
    let blobs = format!("s3://{BUCKET}/prod?endpoint={}", s3.endpoint);
    let c = Controller::start_with_env(
        dir,
        &["--blobs", &blobs, "--presigned-downloads", "2m"],
        &S3Server::env(),
    );
    (c, blobs)
}

#[test]
fn agents_download_from_the_bucket_resume_there_and_refuse_a_wrong_copy() {
    let t = tempfile::tempdir().unwrap();
    let Some(s3) = S3Server::start(BUCKET) else {
        return;
    };
    let (c, blobs) = presigning_controller(t.path(), &s3);
    // 4 MiB that do not compress: the download comes in many pieces.
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    let mut noise = vec![0u8; 4 << 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut noise,
    )
    .unwrap();
    std::fs::write(rel.join("noise.bin"), &noise).unwrap();
    publish_dir(&c, &rel, "1.0.0");
    let (key, local) = largest_blob(&c);
    let size = std::fs::metadata(&local).unwrap().len();

    // A fresh host dies once the first bytes from the bucket are on disk,
    // comes back and asks the bucket for the rest only.
    let mut a1 = Agent::configured(t.path(), &c, "pre-1", "preprod", DB_ENV, true);
    a1.spawn_env(&[("SLIPWAY_FAILPOINT", "fetch-streaming")]);
    a1.wait_connected(&c);
    let out = std::thread::scope(|s| {
        let deploy = s.spawn(|| c.deploy_wait("1.0.0", "preprod"));
        let died = a1.wait_exit(
            Duration::from_secs(60),
            "the agent to die at its first bytes",
        );
        assert!(!died.success(), "{died}");
        a1.spawn();
        deploy.join().unwrap()
    });
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    a1.wait_serving("1.0.0");
    let log = a1.log_text();
    assert!(log.contains("resuming blob download"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("downloaded from the bucket"))
        .unwrap_or_else(|| panic!("the blob came from the bucket: {log}"));
    let from_bucket: u64 = line
        .split("bytes=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        from_bucket > 0 && from_bucket < size,
        "after the resume, only the rest ({from_bucket} of {size} bytes)"
    );
    assert!(!log.contains("through the controller"), "{log}");
    assert!(!log.contains("X-Amz-Signature"), "the URL is never logged");

    // The bucket's copy replaced by as many wrong bytes: a new host checks
    // what it downloaded, refuses it and takes the controller's copy.
    let wrong: Vec<u8> = std::fs::read(&local).unwrap().iter().map(|b| !b).collect();
    let wrong_file = t.path().join("wrong");
    std::fs::write(&wrong_file, wrong).unwrap();
    s3.put(
        &format!("{}/{BUCKET}/prod/sha256/{key}", s3.endpoint),
        &format!("@{}", wrong_file.display()),
    );
    let a2 = Agent::start(t.path(), &c, "pre-2", "preprod", DB_ENV);
    a2.wait_serving("1.0.0");
    let log = a2.log_text();
    assert!(
        log.contains("the bucket's copy did not verify; fetching through the controller"),
        "{log}"
    );

    // Presigned downloads need a bucket, and a sane lifetime.
    for (flags, why) in [
        (vec!["--presigned-downloads", "5m"], "needs --blobs s3://"),
        (
            vec!["--blobs", blobs.as_str(), "--presigned-downloads", "1s"],
            "must be between 10s and 12h",
        ),
    ] {
        let out = Command::new(bin("slipway-controller"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-listen", "off"])
            .arg("--data-dir")
            .arg(t.path().join("refused"))
            .args(&flags)
            .envs(S3Server::env())
            .output()
            .expect("run controller");
        assert!(!out.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{flags:?}: {err}");
    }
}

#[test]
fn a_delta_published_on_one_replica_installs_through_another() {
    let t = tempfile::tempdir().unwrap();
    let Some(s3) = S3Server::start(BUCKET) else {
        return;
    };
    let Some((r0, r1)) = replicas_on_a_bucket(t.path(), &s3) else {
        return;
    };
    let agent = Agent::start(t.path(), &r1, "pre-1", "preprod", DB_ENV);
    publish(&r0, t.path(), &ReleaseOpts::new("1.0.0"));
    r1.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");

    // 2.0.0 through r0, which holds 1.0.0's files: only the changed ones go
    // up, in an object pack; no full pack exists yet (it is built a minute
    // later). The host, on r1, asks r1 for the files it lacks: r1 received
    // none of them and files them from that pack in the bucket.
    publish(&r0, t.path(), &ReleaseOpts::new("2.0.0"));
    let out = r1.deploy_wait("2.0.0", "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    agent.wait_serving("2.0.0");
    let deploy_log = agent.deploy_log();
    let fetched = deploy_log
        .lines()
        .filter(|l| l.contains("2.0.0") && l.contains("fetch"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        fetched.contains("objects") && fetched.contains("kept on this host"),
        "a delta install: {deploy_log}"
    );
    let log = std::fs::read_to_string(t.path().join("r1/controller.log")).unwrap();
    assert!(
        log.contains("objects filed from a release's object pack"),
        "r1 filed the objects from the delta's pack in the bucket"
    );
}

/// A bucket that takes connections and never answers: the controller gives up
/// asking it for a presigned URL after 2 s, and the host fetches the blob
/// through the controller (from its copy) instead of waiting on the bucket.
#[test]
fn a_bucket_that_stops_answering_sends_agents_through_the_controller() {
    let t = tempfile::tempdir().unwrap();
    let Some(mut s3) = S3Server::start(BUCKET) else {
        return;
    };
    let (c, _) = presigning_controller(t.path(), &s3);
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    publish_dir(&c, &rel, "1.0.0");
    s3.stop();
    let silent = std::net::TcpListener::bind(s3.endpoint.trim_start_matches("http://"))
        .expect("the bucket's port");
    // Connections are taken and held, never answered.
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().map_while(Result::ok).collect();
        drop(held);
    });

    let a = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    let out = c.deploy_wait("1.0.0", "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    a.wait_serving("1.0.0");
    let log = std::fs::read_to_string(t.path().join("controller.log")).unwrap();
    assert!(
        log.contains("bucket did not answer in 2 s; the agent fetches through the controller"),
        "{log}"
    );
    let agent_log = a.log_text();
    assert!(
        !agent_log.contains("downloaded from the bucket"),
        "{agent_log}"
    );
}
