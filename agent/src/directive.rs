//! Checks every directive the controller sends before anything acts on it:
//! signed by the controller's directive key, for this host, tenant and
//! environment, not expired, and with a sequence number above every one
//! accepted before (persisted, so a replay is refused across restarts too).

use std::path::{Path, PathBuf};

use proto::v1::DesiredApp;

use crate::identity::Identity;

pub struct DirectiveGuard {
    path: PathBuf,
    highest: u64,
}

impl DirectiveGuard {
    pub fn load(state_dir: &Path) -> Self {
        let path = crate::identity::dir(state_dir).join("directive.seq");
        let highest = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        DirectiveGuard { path, highest }
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Accepts `d` (and remembers its sequence) or says why not.
    pub fn check(&mut self, id: &Identity, d: &DesiredApp, now: i64) -> Result<(), String> {
        if d.host != id.host {
            return Err(format!(
                "directive is for host {:?}, this is {:?}",
                d.host, id.host
            ));
        }
        if d.tenant != id.tenant || d.environment != id.environment {
            return Err(format!(
                "directive is for {}/{}, this host is {}/{}",
                d.tenant, d.environment, id.tenant, id.environment
            ));
        }
        if d.expires_at <= now {
            return Err(format!("directive expired {}s ago", now - d.expires_at));
        }
        if d.sequence <= self.highest {
            return Err(format!(
                "replayed directive: sequence {} is not above {}",
                d.sequence, self.highest
            ));
        }
        let manifest_digest = trust::sha256(&d.manifest);
        if manifest_digest != d.manifest_digest {
            return Err("directive names another manifest than it carries".into());
        }
        let statement = trust::sign::Directive {
            tenant: &d.tenant,
            host: &d.host,
            environment: &d.environment,
            app: &d.app,
            version: &d.version,
            manifest_digest: &d.manifest_digest,
            counter: d.counter,
            generation: d.generation,
            sequence: d.sequence,
            expires_at: d.expires_at,
            rollback_authorized: !d.rollback_authorization.is_empty(),
        };
        let key = trust::sign::parse_public(&id.directive_key).map_err(|e| e.to_string())?;
        if !trust::sign::verify(&key, &statement.bytes(), &d.directive_signature) {
            return Err("directive signature does not verify against the controller's key".into());
        }
        trust::write_private(&self.path, format!("{}\n", d.sequence).as_bytes())
            .map_err(|e| format!("persist directive sequence: {e}"))?;
        self.highest = d.sequence;
        Ok(())
    }
}
