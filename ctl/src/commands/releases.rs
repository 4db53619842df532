//! `slipctl releases APP`: the published releases of an app, newest first, and
//! the environments that want each.

use proto::v1::ListReleasesRequest;
use serde::Serialize;

use crate::cli::ReleasesArgs;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, ago, as_rfc3339, human_bytes, list, print_json, short};

#[derive(Serialize)]
struct ReleaseJson {
    app: String,
    version: String,
    release_digest: String,
    blob_digest: String,
    blob_size: u64,
    entries: u32,
    git_commit: String,
    #[serde(serialize_with = "as_rfc3339")]
    created_at: i64,
    counter: u64,
    signed_by: Vec<String>,
    desired_in: Vec<String>,
}

pub async fn run(a: ReleasesArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = ListReleasesRequest {
        tenant: c.tenant.clone(),
        app: a.app,
    };
    let r = c.releases.list_releases(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    let rows: Vec<ReleaseJson> = r
        .releases
        .into_iter()
        .map(|rel| ReleaseJson {
            desired_in: r
                .desired
                .iter()
                .filter(|d| d.version == rel.version)
                .map(|d| d.environment.clone())
                .collect(),
            app: rel.app,
            version: rel.version,
            release_digest: rel.manifest_digest,
            blob_digest: rel.blob_digest,
            blob_size: rel.blob_size,
            entries: rel.entries,
            git_commit: rel.git_commit,
            created_at: rel.created_at,
            counter: rel.counter,
            signed_by: rel.signed_by,
        })
        .collect();
    if fmt.is_json() {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "VERSION",
        "RELEASE",
        "SIZE",
        "COMMIT",
        "PUBLISHED",
        "DESIRED IN",
    ]);
    for r in rows {
        t.row([
            r.version,
            short(&r.release_digest),
            human_bytes(r.blob_size),
            r.git_commit.chars().take(12).collect(),
            ago(r.created_at),
            list(&r.desired_in),
        ]);
    }
    t.print();
    Ok(())
}
