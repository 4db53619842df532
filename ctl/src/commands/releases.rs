//! `slipctl releases [list] APP`: the published releases of an app, newest
//! first, and the environments that want each; `slipctl releases yank`.

use proto::v1::{ListReleasesRequest, YankReleaseRequest};
use serde::Serialize;

use crate::cli::{ReleasesArgs, ReleasesCommand};
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, ago, as_rfc3339, human_bytes, list, print_json, short};

#[derive(Serialize)]
struct ReleaseJson {
    app: String,
    version: String,
    release_digest: String,
    /// The release's full pack; null until the controller has built it.
    blob_digest: Option<String>,
    blob_size: Option<u64>,
    entries: u32,
    git_commit: String,
    #[serde(serialize_with = "as_rfc3339")]
    created_at: i64,
    counter: u64,
    signed_by: Vec<String>,
    desired_in: Vec<String>,
    /// When it was yanked (null: it is not), and why.
    #[serde(serialize_with = "as_optional_rfc3339")]
    yanked_at: Option<i64>,
    yank_reason: String,
}

fn as_optional_rfc3339<S: serde::Serializer>(
    at: &Option<i64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match at {
        Some(at) => as_rfc3339(at, s),
        None => s.serialize_none(),
    }
}

pub async fn run(a: ReleasesArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let app = match a.command {
        Some(ReleasesCommand::Yank {
            app,
            version,
            reason,
        }) => return yank(c, app, version, reason, fmt).await,
        Some(ReleasesCommand::List { app }) => app,
        None => a.app.unwrap_or_default(),
    };
    list_releases(c, app, fmt).await
}

async fn yank(
    c: &mut Clients,
    app: String,
    version: String,
    reason: Option<String>,
    fmt: Format,
) -> Result<()> {
    let req = YankReleaseRequest {
        tenant: c.tenant.clone(),
        app,
        version,
        reason: reason.unwrap_or_default(),
    };
    let r = c.releases.yank_release(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    if fmt.is_json() {
        return print_json(&serde_json::json!({
            "app": r.app,
            "version": r.version,
            "counter": r.counter,
            "yank_reason": r.yank_reason,
        }));
    }
    say!(
        "yanked {} {} (counter {}): it cannot be deployed again and does not count for the next counter",
        crate::output::escape(&r.app),
        crate::output::escape(&r.version),
        r.counter
    );
    Ok(())
}

async fn list_releases(c: &mut Clients, app: String, fmt: Format) -> Result<()> {
    let req = ListReleasesRequest {
        tenant: c.tenant.clone(),
        app,
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
            blob_size: Some(rel.blob_size).filter(|_| !rel.blob_digest.is_empty()),
            blob_digest: Some(rel.blob_digest).filter(|d| !d.is_empty()),
            entries: rel.entries,
            git_commit: rel.git_commit,
            created_at: rel.created_at,
            counter: rel.counter,
            signed_by: rel.signed_by,
            yanked_at: Some(rel.yanked_at).filter(|at| *at != 0),
            yank_reason: rel.yank_reason,
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
        let version = match r.yanked_at {
            Some(_) => format!("{} (yanked)", r.version),
            None => r.version,
        };
        t.row([
            version,
            short(&r.release_digest),
            r.blob_size.map_or_else(|| "-".into(), human_bytes),
            r.git_commit.chars().take(12).collect(),
            ago(r.created_at),
            list(&r.desired_in),
        ]);
    }
    t.print();
    Ok(())
}
