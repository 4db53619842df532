//! `slipctl keys`: publisher signing keys, and the signed authorizations that
//! let an older release go back onto hosts that enforce signatures.

use std::path::Path;

use proto::v1::{ListReleasesRequest, Signature};
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

/// Signs "run `version` of `app` in `env`" with the publisher key at `key`.
pub async fn rollback_authorization(
    c: &mut Clients,
    app: &str,
    env: &str,
    version: &str,
    key: &Path,
) -> Result<Vec<Signature>> {
    let key = trust::sign::KeyPair::load(key).map_err(|e| CtlError::Usage(e.to_string()))?;
    let tenant = &c.resolved_tenant().await?;
    let releases = c
        .releases
        .list_releases(ListReleasesRequest {
            tenant: tenant.into(),
            app: app.into(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .releases;
    let release = releases
        .iter()
        .find(|r| r.version == version)
        .ok_or_else(|| CtlError::NotFound(format!("unknown version {version:?} of app {app:?}")))?;
    let statement = trust::sign::RollbackStatement {
        tenant,
        app,
        environment: env,
        version,
        manifest_digest: &release.manifest_digest,
    };
    let s = key.sign(&statement.bytes());
    Ok(vec![Signature {
        key: s.key,
        sig: s.sig,
    }])
}
