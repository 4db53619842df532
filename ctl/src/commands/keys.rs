//! `slipctl keys`: publisher signing keys, and the signed authorizations that
//! let an older release go back onto hosts that enforce signatures.

use std::path::Path;

use proto::v1::{FleetStatusRequest, ListReleasesRequest, RollbackTerms, Signature};
use serde::Serialize;

use crate::cli::KeysCommand;
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};
use crate::output::{Format, print_json};

#[derive(Serialize)]
struct KeyJson {
    public_key: String,
    secret_key_file: String,
}

pub fn run(cmd: KeysCommand, fmt: Format) -> Result<()> {
    let KeysCommand::Generate { out } = cmd;
    if out.exists() {
        return Err(CtlError::Failed(format!(
            "{} exists; refusing to overwrite a key",
            out.display()
        )));
    }
    let key = trust::sign::KeyPair::generate();
    trust::write_private(&out, key.encode_secret().as_bytes())
        .map_err(|e| CtlError::Failed(format!("write {}: {e}", out.display())))?;
    if fmt.is_json() {
        return print_json(&KeyJson {
            public_key: key.public().to_string(),
            secret_key_file: out.display().to_string(),
        });
    }
    eprintln!(
        "secret key written to {} (keep it offline; mode 0600)",
        out.display()
    );
    eprintln!("public key (add it to agents' publisher_keys):");
    say!("{}", key.public());
    Ok(())
}

/// Signs "go back from what `env` desires or runs now (the highest counter
/// of either) to `version` of `app`, once, within the hour" (a `slipway.rollback.v2` statement) with the publisher
/// key at `key`: the signatures and the terms they cover.
pub async fn rollback_authorization(
    c: &mut Clients,
    app: &str,
    env: &str,
    version: &str,
    key: &Path,
) -> Result<(Vec<Signature>, Option<RollbackTerms>)> {
    let key = trust::sign::KeyPair::load(key).map_err(|e| CtlError::Usage(e.to_string()))?;
    let tenant = &c.resolved_tenant().await?;
    let listed = c
        .releases
        .list_releases(ListReleasesRequest {
            tenant: tenant.into(),
            app: app.into(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let find = |v: &str| listed.releases.iter().find(|r| r.version == v);
    let release = find(version)
        .ok_or_else(|| CtlError::NotFound(format!("unknown version {version:?} of app {app:?}")))?;
    let desired = listed
        .desired
        .iter()
        .find(|d| d.environment == env)
        .and_then(|d| find(&d.version))
        .ok_or_else(|| {
            CtlError::Failed(format!(
                "{app} has no release in {env} to roll back from; deploy without --sign"
            ))
        })?;
    // Hosts may still run a newer release than the one desired (an unsigned
    // downgrade they refused): the authorization goes back from that one.
    let rows = c
        .deployments
        .fleet_status(FleetStatusRequest {
            tenant: tenant.into(),
            app: app.into(),
            environment: env.into(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .rows;
    let from_counter = rows
        .iter()
        .filter(|r| r.app == app && r.environment == env)
        .filter_map(|r| find(&r.running_version))
        .map(|r| r.counter)
        .fold(desired.counter, u64::max);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let terms = trust::sign::RollbackTerms::new(
        from_counter,
        now,
        trust::sign::ROLLBACK_DEFAULT_LIFETIME_SECS,
    );
    let statement = terms.statement(tenant, app, env, version, &release.manifest_digest);
    let s = key.sign(&statement.bytes());
    let sigs = vec![Signature {
        key: s.key,
        sig: s.sig,
    }];
    Ok((
        sigs,
        Some(RollbackTerms {
            from_counter: terms.from_counter,
            expires_at: terms.expires_at,
            nonce: terms.nonce,
        }),
    ))
}
