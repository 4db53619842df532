//! Per-file delta installs with the real binaries: after a one-file change
//! only that file's object moves (publisher → controller → agent), every
//! other file of the new release is a hardlink of the one running; an
//! unchanged tree republished moves nothing; a file edited in place on the
//! host is never linked into the next release (it is fetched again); a
//! release published as a delta gets its full pack built when a host with
//! none of its files asks (from objects filed again if the controller
//! stopped before filing them); and a host asking for objects it has no
//! business with is refused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{Agent, Controller, ReleaseOpts, eventually, publish_dir, sample_release};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// The sample app plus a 4 MiB library that no release changes.
fn release(dir: &Path, version: &str) -> PathBuf {
    let rel = sample_release(dir, &ReleaseOpts::new(version));
    std::fs::create_dir_all(rel.join("lib")).unwrap();
    let lib: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(rel.join("lib/big.so"), lib).unwrap();
    rel
}

/// The `fetch` line of `version` in the agent's deploy log.
fn fetch_line(agent: &Agent, version: &str) -> String {
    let log = std::fs::read_to_string(agent.app_dir().join("deploy.log")).unwrap();
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["version"] == version && v["step"] == "fetch" && v["outcome"] == "ok")
        .map(|v| v["detail"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no fetch of {version} in the deploy log:\n{log}"))
}

fn wire_bytes(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("wire_bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wire_bytes in {line:?}"))
}

fn publish_json(c: &Controller, rel: &Path, version: &str) -> serde_json::Value {
    let out = c.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        version,
        "--allow-dirty",
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn deploy(c: &Controller, agent: &Agent, version: &str) {
    let out = c.deploy_wait(version, "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    agent.wait_serving(version);
}

fn ino(agent: &Agent, version: &str, rel: &str) -> u64 {
    std::fs::metadata(agent.app_dir().join("releases").join(version).join(rel))
        .unwrap()
        .ino()
}

#[test]
fn a_one_file_change_moves_one_object_and_links_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);

    let first = publish_json(&c, &release(t.path(), "1.0.0"), "1.0.0");
    assert_eq!(first["objects_uploaded"], first["objects"], "{first}");
    let big = std::fs::read(t.path().join("release-1.0.0/lib/big.so")).unwrap();
    let big_object = c
        .data_dir
        .join("blobs/objects/default/sha256")
        .join(artifact::Digest::of(&big).hex());
    deploy(&c, &agent, "1.0.0");
    let full = wire_bytes(&fetch_line(&agent, "1.0.0"));
    assert!(
        full > 1 << 20,
        "the first install moved the whole tree: {full}"
    );
    // The first release went to its host as the uploaded full pack; its
    // objects are filed into the controller's store later.

    // One file differs (sample.conf names the version). The publish sends
    // that file and does not wait for a full pack of the release.
    let second = publish_json(&c, &release(t.path(), "1.0.1"), "1.0.1");
    assert_eq!(second["objects_uploaded"], 1, "{second}");
    assert!(second["blob_digest"].is_null(), "built later: {second}");
    deploy(&c, &agent, "1.0.1");
    let line = fetch_line(&agent, "1.0.1");
    let delta = wire_bytes(&line);
    assert!(line.starts_with("1 of "), "{line}");
    assert!(
        delta * 100 < full,
        "the delta ({delta} bytes) is under 1% of the full install ({full})"
    );
    assert_eq!(
        ino(&agent, "1.0.0", "lib/big.so"),
        ino(&agent, "1.0.1", "lib/big.so"),
        "an unchanged file is linked, not copied"
    );

    // The same tree again under a new version: nothing moves at all.
    let rel = t.path().join("release-1.0.1");
    let third = publish_json(&c, &rel, "1.0.2");
    assert_eq!(third["objects_uploaded"], 0, "{third}");
    assert_eq!(third["uploaded_bytes"], 0, "{third}");
    let out = c.deploy_wait("1.0.2", "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(fetch_line(&agent, "1.0.2").starts_with("0 of "));

    // A host with none of the files joins: the controller builds the
    // release's full pack from its store (filing the first release's
    // objects for it) and the host installs from that.
    let fresh = Agent::start(t.path(), &c, "pre-2", "preprod", DB_ENV);
    // (1.0.2's files are 1.0.1's: its app says 1.0.1.)
    eventually(Duration::from_secs(60), "pre-2 to run 1.0.2", || {
        let current = std::fs::read_link(fresh.app_dir().join("current")).ok()?;
        (current.ends_with("1.0.2") && fresh.app_says()? == "sample-app 1.0.1").then_some(())
    });
    let line = fetch_line(&fresh, "1.0.2");
    let n = line.split_whitespace().nth(2).unwrap();
    assert!(line.starts_with(&format!("{n} of {n} objects")), "{line}");
    assert_eq!(
        std::fs::read(fresh.app_dir().join("releases/1.0.2/lib/big.so")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(&big_object).unwrap(),
        big,
        "filed once needed"
    );
    let listed = c.ctl(&["releases", "web", "--json"]).ok().json();
    let pack = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "1.0.2")
        .unwrap()["blob_digest"]
        .as_str()
        .expect("the full pack is the release's now")
        .to_string();
    let pack_file = c
        .data_dir
        .join("blobs/sha256")
        .join(pack.strip_prefix("sha256:").unwrap());
    assert_eq!(
        std::fs::metadata(pack_file).unwrap().len(),
        wire_bytes(&line),
        "the host was sent that pack"
    );
}

#[test]
fn a_file_edited_in_place_on_the_host_is_fetched_again_not_linked() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish_dir(&c, &release(t.path(), "1.0.0"), "1.0.0");
    deploy(&c, &agent, "1.0.0");
    let original = std::fs::read(t.path().join("release-1.0.0/lib/big.so")).unwrap();

    // A hand fix on the server, in place, same size.
    let live = agent.app_dir().join("current/lib/big.so");
    let mut edited = original.clone();
    edited[100] ^= 0xff;
    std::fs::write(&live, &edited).unwrap();

    publish_dir(&c, &release(t.path(), "1.0.1"), "1.0.1");
    deploy(&c, &agent, "1.0.1");
    let line = fetch_line(&agent, "1.0.1");
    assert!(
        line.starts_with("2 of "),
        "the edited file is fetched too: {line}"
    );
    let installed = agent.app_dir().join("releases/1.0.1/lib/big.so");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        original,
        "the release has the published bytes"
    );
    assert_ne!(
        ino(&agent, "1.0.0", "lib/big.so"),
        ino(&agent, "1.0.1", "lib/big.so")
    );
}

#[test]
fn a_host_is_refused_objects_of_releases_it_does_not_run() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    let web = publish_json(&c, &release(t.path(), "1.0.0"), "1.0.0");
    // Another app of the same tenant, which this host does not run.
    let other = c.ctl(&[
        "publish",
        t.path().join("release-1.0.0").to_str().unwrap(),
        "--app",
        "api",
        "--version",
        "1.0.0",
        "--allow-dirty",
        "-o",
        "json",
    ]);
    let api: serde_json::Value = serde_json::from_str(&other.stdout).unwrap();
    let id = agent::identity::Identity::load(&agent.state_dir)
        .unwrap()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = trust::tls::connect(&c.url, Some(id.tls().unwrap()), false)
            .await
            .unwrap();
        let mut client = proto::v1::agents_client::AgentsClient::new(channel);
        let some_object = artifact::Digest::of(b"slipway").to_string();
        for (release, why) in [
            (
                api["release_digest"].as_str().unwrap(),
                "not one this host runs",
            ),
            (
                web["release_digest"].as_str().unwrap(),
                "is not a file of release",
            ),
        ] {
            let err = client
                .fetch_objects(proto::v1::FetchObjectsRequest {
                    manifest_digest: release.to_string(),
                    digests: vec![some_object.clone()],
                })
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
            assert!(err.message().contains(why), "{err:?}");
        }
        let err = client
            .fetch_manifest(proto::v1::FetchManifestRequest {
                digest: api["release_digest"].as_str().unwrap().to_string(),
                base_digest: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    });
}

#[test]
fn objects_a_restarted_controller_never_filed_come_from_the_full_pack_they_came_in() {
    let t = tempfile::tempdir().unwrap();
    let mut c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish_dir(&c, &release(t.path(), "1.0.0"), "1.0.0");
    deploy(&c, &agent, "1.0.0");
    publish_dir(&c, &release(t.path(), "1.0.1"), "1.0.1");
    deploy(&c, &agent, "1.0.1");
    // Stopped before the first release's objects were filed (a minute
    // after publish): they are only in its full pack, and 1.0.1, published
    // as a delta, has no full pack yet.
    c.restart();
    let big = std::fs::read(t.path().join("release-1.0.0/lib/big.so")).unwrap();
    let object = c
        .data_dir
        .join("blobs/objects/default/sha256")
        .join(artifact::Digest::of(&big).hex());
    assert!(!object.exists(), "not filed before the restart");
    let fresh = Agent::start(t.path(), &c, "pre-2", "preprod", DB_ENV);
    fresh.wait_serving("1.0.1");
    assert_eq!(std::fs::read(&object).unwrap(), big, "filed again");
    assert_eq!(
        std::fs::read(fresh.app_dir().join("releases/1.0.1/lib/big.so")).unwrap(),
        big
    );
}
