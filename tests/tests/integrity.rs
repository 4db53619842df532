//! Integrity end to end: uploads whose bytes do not match their digest, blobs
//! tampered with on the controller's disk, interrupted and corrupt downloads.

use std::time::Duration;

use integration_tests::{Agent, Controller, ReleaseOpts, eventually, publish};
use proto::v1::releases_client::ReleasesClient;
use proto::v1::{UploadBlobHeader, UploadBlobRequest, upload_blob_request};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

fn blob_of(c: &Controller, version: &str) -> (String, std::path::PathBuf) {
    let releases = c.ctl(&["releases", "web", "--json"]).ok().json();
    let digest = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap()["blob_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = digest.strip_prefix("sha256:").unwrap().to_string();
    (hex.clone(), c.data_dir.join("blobs/sha256").join(hex))
}

fn upload(c: &Controller, declared_digest: &str, declared_size: u64, data: &[u8]) -> tonic::Status {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", c.admin_token).parse().unwrap();
        let mut client =
            ReleasesClient::with_interceptor(c.channel().await, move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            });
        let msgs = vec![
            UploadBlobRequest {
                part: Some(upload_blob_request::Part::Header(UploadBlobHeader {
                    tenant: "default".into(),
                    digest: declared_digest.into(),
                    size: declared_size,
                })),
            },
            UploadBlobRequest {
                part: Some(upload_blob_request::Part::Chunk(data.to_vec())),
            },
        ];
        client
            .upload_blob(tokio_stream::iter(msgs))
            .await
            .expect_err("upload must be refused")
    })
}

#[test]
fn an_upload_whose_bytes_do_not_match_its_digest_is_refused_and_not_kept() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    // sha256("other"), but the bytes sent are "hello".
    let other = "sha256:d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa";
    let status = upload(&c, other, 5, b"hello");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("digest mismatch"),
        "{}",
        status.message()
    );
    let status = upload(&c, other, 3, b"hello");
    assert!(
        status.message().contains("size mismatch"),
        "{}",
        status.message()
    );
    for dir in ["blobs/sha256", "blobs/tmp"] {
        assert_eq!(
            std::fs::read_dir(c.data_dir.join(dir)).unwrap().count(),
            0,
            "nothing kept in {dir}"
        );
    }
    let history = c.ctl(&["history", "--json"]).ok().json();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "upload"
                && e["outcome"].as_str().unwrap().starts_with("refused"))
    );
}

#[test]
fn an_object_corrupt_on_the_controller_is_never_served_and_a_publish_repairs_it() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod", "--wait"])
        .ok();

    // 2.0.0 differs from 1.0.0 in one file: the host fetches that object
    // alone. It rots on the controller's disk.
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    let conf = std::fs::read(t.path().join("release-2.0.0/sample.conf")).unwrap();
    let hex = artifact::Digest::of(&conf).hex();
    let tenant = c.ctl(&["whoami", "-o", "json"]).ok().json()["tenant"]
        .as_str()
        .unwrap()
        .to_string();
    let store = c.data_dir.join("blobs/objects").join(&tenant);
    let path = store.join("sha256").join(&hex);
    let mut bytes = conf.clone();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    // The controller checks what it streams: the stream ends with DataLoss,
    // the object is moved aside (it now reads as missing), the host refuses
    // the release and keeps serving 1.0.0.
    c.ctl(&["deploy", "web", "2.0.0", "--env", "preprod"]).ok();
    let corrupt = store.join("corrupt").join(&hex);
    eventually(
        Duration::from_secs(60),
        "the corrupt object moved aside",
        || (corrupt.is_file() && !path.exists()).then_some(()),
    );
    assert_ne!(std::fs::read(&corrupt).unwrap(), conf);
    assert_eq!(agent.app_says().as_deref(), Some("sample-app 1.0.0"));
    assert!(!agent.app_dir().join("releases/2.0.0").exists());

    // A publish of the same release finds the object missing and uploads it
    // again; the deploy then goes through.
    let again = c.ctl(&[
        "publish",
        t.path().join("release-2.0.0").to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "2.0.0",
        "--allow-dirty",
    ]);
    let again = again.ok();
    assert!(
        again.stdout.contains("1 of 3 file objects uploaded"),
        "{}",
        again.stdout
    );
    assert_eq!(std::fs::read(&path).unwrap(), conf, "repaired");
    c.ctl(&["deploy", "web", "2.0.0", "--env", "preprod", "--wait"])
        .ok();
    agent.wait_serving("2.0.0");
    let cache = agent.app_dir().join("cache");
    assert_eq!(
        std::fs::read_dir(cache).unwrap().count(),
        0,
        "no bad bytes kept"
    );
}

#[test]
fn an_interrupted_download_resumes_and_a_corrupt_partial_is_fetched_again() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    let cache = agent.app_dir().join("cache");
    std::fs::create_dir_all(&cache).unwrap();

    // As if an earlier download was cut halfway.
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    let (hex, path) = blob_of(&c, "1.0.0");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(
        cache.join(format!("{hex}.partial")),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod", "--wait"])
        .ok();
    agent.wait_serving("1.0.0");
    assert!(
        agent.log_text().contains("resuming blob download"),
        "the download resumed"
    );

    // A partial file with garbage in it: detected, discarded, fetched again.
    // On a host of another environment that has none of the files.
    c.ctl(&[
        "envs",
        "set",
        "staging",
        "--create",
        "--production",
        "false",
    ])
    .ok();
    let agent = Agent::start(t.path(), &c, "stage-1", "staging", DB_ENV);
    let cache = agent.app_dir().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut half = bytes;
    half.truncate(half.len() / 2);
    half[10] ^= 0xff;
    std::fs::write(cache.join(format!("{hex}.partial")), &half).unwrap();
    c.ctl(&["deploy", "web", "1.0.0", "--env", "staging", "--wait"])
        .ok();
    agent.wait_serving("1.0.0");
    assert!(agent.log_text().contains("resumed download did not verify"));
    assert!(!cache.join(format!("{hex}.partial")).exists());
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "the cache is emptied after each install"
    );
}
