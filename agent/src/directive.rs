//! Checks every directive the controller sends before anything acts on it:
//! signed by the controller's directive key, for this host, tenant and
//! environment, not expired, and with a sequence number above every one
//! accepted before (persisted, so a replay is refused across restarts too).

use std::path::{Path, PathBuf};

use proto::v1::DesiredApp;

use crate::identity::Identity;

/// The statement the controller signed, rebuilt from what the directive says.
pub fn statement(d: &DesiredApp) -> trust::sign::Directive<'_> {
    trust::sign::Directive {
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
    }
}

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
        // The signature covers the manifest digest; the deploy checks the
        // manifest bytes hash to it before using them.
        let key = trust::sign::parse_public(&id.directive_key).map_err(|e| e.to_string())?;
        if !trust::sign::verify(&key, &statement(d).bytes(), &d.directive_signature) {
            return Err("directive signature does not verify against the controller's key".into());
        }
        trust::write_private(&self.path, format!("{}\n", d.sequence).as_bytes())
            .map_err(|e| format!("persist directive sequence: {e}"))?;
        self.highest = d.sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(key: &trust::sign::KeyPair) -> Identity {
        Identity {
            tenant: "default".into(),
            host: "web-1".into(),
            environment: "prod".into(),
            directive_key: key.public(),
            issued_at: 0,
            not_after: 0,
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_pem: String::new(),
        }
    }

    fn directive(
        key: &trust::sign::KeyPair,
        host: &str,
        sequence: u64,
        expires_at: i64,
    ) -> DesiredApp {
        let manifest = b"{}".to_vec();
        let mut d = DesiredApp {
            app: "web".into(),
            version: "1".into(),
            manifest_digest: trust::sha256(&manifest),
            manifest,
            generation: 1,
            counter: 1,
            tenant: "default".into(),
            host: host.into(),
            environment: "prod".into(),
            sequence,
            expires_at,
            ..Default::default()
        };
        d.directive_signature = key.sign(&statement(&d).bytes()).sig;
        d
    }

    #[test]
    fn replayed_foreign_expired_and_forged_directives_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = trust::sign::KeyPair::generate();
        let id = identity(&key);
        let mut guard = DirectiveGuard::load(dir.path());
        std::fs::create_dir_all(crate::identity::dir(dir.path())).unwrap();
        let now = 1_000;

        let first = directive(&key, "web-1", 5, now + 60);
        guard.check(&id, &first, now).unwrap();
        let seq_file = crate::identity::dir(dir.path()).join("directive.seq");
        assert_eq!(std::fs::read_to_string(&seq_file).unwrap().trim(), "5");

        // Replay of the same directive, and an older one.
        let e = guard.check(&id, &first, now).unwrap_err();
        assert!(e.contains("replayed"), "{e}");
        assert!(
            guard
                .check(&id, &directive(&key, "web-1", 4, now + 60), now)
                .is_err()
        );
        // For another host (mix-and-match).
        let e = guard
            .check(&id, &directive(&key, "web-2", 9, now + 60), now)
            .unwrap_err();
        assert!(e.contains("for host \"web-2\""), "{e}");
        // Expired.
        let e = guard
            .check(&id, &directive(&key, "web-1", 9, now - 1), now)
            .unwrap_err();
        assert!(e.contains("expired"), "{e}");
        // Signed by someone else.
        let other = trust::sign::KeyPair::generate();
        let e = guard
            .check(&id, &directive(&other, "web-1", 9, now + 60), now)
            .unwrap_err();
        assert!(e.contains("signature"), "{e}");
        // A field changed after signing.
        let mut tampered = directive(&key, "web-1", 9, now + 60);
        tampered.version = "2".into();
        assert!(guard.check(&id, &tampered, now).is_err());

        // Nothing above moved the high-water mark, on disk or after a restart.
        assert_eq!(std::fs::read_to_string(&seq_file).unwrap().trim(), "5");
        let mut reloaded = DirectiveGuard::load(dir.path());
        assert_eq!(reloaded.highest(), 5);
        assert!(
            reloaded.check(&id, &first, now).is_err(),
            "replay refused across restarts"
        );
        reloaded
            .check(&id, &directive(&key, "web-1", 6, now + 60), now)
            .unwrap();
    }
}
