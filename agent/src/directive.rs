//! Checks every directive the controller sends before anything acts on it:
//! signed by the controller's directive key, for this host, tenant and
//! environment, not expired, and with a sequence number above every one
//! accepted before (persisted, so a replay is refused across restarts too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use artifact::{Digest, Manifest};
use proto::v1::{DeclaredApps, DesiredApp};

use crate::identity::Identity;
use crate::state::Target;

/// A directive that passed every check at the session's edge: signed for this
/// host, fresh, and carrying a manifest that hashes to the digest it names and
/// describes this app, version and blob. The app's runner acts on this and
/// never sees the wire type.
#[derive(Debug, Clone)]
pub struct Directive {
    pub tenant: String,
    pub environment: String,
    pub app: String,
    pub version: String,
    /// The release's name: sha256 of its canonical manifest.
    pub digest: String,
    pub generation: u64,
    pub counter: u64,
    pub manifest: Arc<Manifest>,
    /// The blob (format 1) or the release's full pack (format 2); None for a
    /// format-2 release whose full pack the controller has not built yet (a
    /// host with none of its files then asks for all of its objects).
    pub blob: Option<Digest>,
    pub blob_size: u64,
    /// `(key, signature)` pairs over the release statement.
    pub release_signatures: Vec<(String, String)>,
    /// `(key, signature)` pairs over the rollback statement, for a downgrade.
    pub rollback_authorization: Vec<(String, String)>,
    /// What those signatures cover beyond the release (none: a v1 statement).
    pub rollback_terms: Option<trust::sign::RollbackTerms>,
    /// The host may apply the release's pending migrations before the flip.
    pub apply_migrations: bool,
}

/// Why a signed directive's manifest is refused (reported as the host's
/// refusal of that release).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest bytes hash to {got}, not {named}")]
    Digest { got: Digest, named: String },
    #[error("manifest: {0}")]
    Parse(String),
    #[error("manifest does not describe the desired release")]
    Mismatch,
}

/// What the session hands an app's runner: a release to run, or one whose
/// directive verified but whose manifest did not (refused and reported).
#[derive(Debug, Clone)]
pub enum Desired {
    Release(Directive),
    Invalid { target: Target, reason: String },
}

impl Desired {
    pub fn target(&self) -> Target {
        match self {
            Desired::Release(d) => d.target(),
            Desired::Invalid { target, .. } => target.clone(),
        }
    }
}

impl Directive {
    pub fn target(&self) -> Target {
        Target {
            version: self.version.clone(),
            digest: self.digest.clone(),
            generation: self.generation,
            counter: self.counter,
        }
    }

    /// Checks the manifest a checked directive carries; parsed once, here.
    pub fn parse(d: DesiredApp) -> Desired {
        match Self::verified(&d) {
            Ok((manifest, blob)) => Desired::Release(Directive {
                manifest: Arc::new(manifest),
                blob,
                blob_size: d.blob_size,
                release_signatures: pairs(&d.release_signatures),
                rollback_authorization: pairs(&d.rollback_authorization),
                rollback_terms: d
                    .rollback_terms
                    .as_ref()
                    .map(|t| trust::sign::RollbackTerms {
                        from_counter: t.from_counter,
                        expires_at: t.expires_at,
                        nonce: t.nonce.clone(),
                    }),
                tenant: d.tenant,
                environment: d.environment,
                app: d.app,
                version: d.version,
                digest: d.manifest_digest,
                generation: d.generation,
                counter: d.counter,
                apply_migrations: d.apply_migrations,
            }),
            Err(e) => Desired::Invalid {
                target: Target {
                    version: d.version,
                    digest: d.manifest_digest,
                    generation: d.generation,
                    counter: d.counter,
                },
                reason: e.to_string(),
            },
        }
    }

    fn verified(d: &DesiredApp) -> Result<(Manifest, Option<Digest>), ManifestError> {
        let got = Digest::of(&d.manifest);
        if got.to_string() != d.manifest_digest {
            return Err(ManifestError::Digest {
                got,
                named: d.manifest_digest.clone(),
            });
        }
        let limits = artifact::Limits::default();
        let m =
            Manifest::from_canonical_bytes(&d.manifest, limits.max_entries, limits.max_total_bytes)
                .map_err(|e| ManifestError::Parse(e.to_string()))?;
        // A format-1 manifest names its blob; a format-2 release's full pack
        // is transport only (every object is checked against the manifest).
        let blob_differs = m
            .blob
            .as_ref()
            .is_some_and(|b| b.digest != d.blob_digest || b.size != d.blob_size);
        if m.app != d.app || m.version != d.version || blob_differs {
            return Err(ManifestError::Mismatch);
        }
        let blob = match d.blob_digest.as_str() {
            "" if m.blob.is_none() => None,
            named => Some(Digest::parse(named).map_err(|e| ManifestError::Parse(e.to_string()))?),
        };
        Ok((m, blob))
    }
}

/// `(key, signature)` pairs of wire signatures.
fn pairs(list: &[proto::v1::Signature]) -> Vec<(String, String)> {
    list.iter()
        .map(|s| (s.key.clone(), s.sig.clone()))
        .collect()
}

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
        apply_migrations: d.apply_migrations,
    }
}

/// Why a directive was refused at the session's edge (nothing changes).
#[derive(Debug, thiserror::Error)]
pub enum DirectiveError {
    #[error("directive is for host {got:?}, this is {this:?}")]
    OtherHost { got: String, this: String },
    #[error("directive is for {got}, this host is {this}")]
    OtherScope { got: String, this: String },
    #[error("directive expired {0}s ago")]
    Expired(i64),
    #[error("replayed directive: sequence {got} is not above {highest}")]
    Replayed { got: u64, highest: u64 },
    #[error("controller directive key: {0}")]
    Key(String),
    #[error("directive signature does not verify against the controller's key")]
    Signature,
    #[error("persist directive sequence: {0}")]
    Persist(#[source] trust::TrustError),
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
    pub fn check(&mut self, id: &Identity, d: &DesiredApp, now: i64) -> Result<(), DirectiveError> {
        // The signature covers the manifest digest; `Directive::parse` checks
        // the manifest bytes hash to it before anything uses them.
        self.admit(
            id,
            Signed {
                host: &d.host,
                tenant: &d.tenant,
                environment: &d.environment,
                expires_at: d.expires_at,
                sequence: d.sequence,
                statement: statement(d).bytes(),
                signature: &d.directive_signature,
            },
            now,
        )
    }

    /// Accepts the apps the controller declares for this host (signed over
    /// the sha256 of the settings bytes it carries) or says why not.
    pub fn check_declaration(
        &mut self,
        id: &Identity,
        d: &DeclaredApps,
        now: i64,
    ) -> Result<(), DirectiveError> {
        let digest = trust::sha256(&d.settings);
        self.admit(
            id,
            Signed {
                host: &d.host,
                tenant: &d.tenant,
                environment: &d.environment,
                expires_at: d.expires_at,
                sequence: d.sequence,
                statement: trust::sign::AppsDeclaration {
                    tenant: &d.tenant,
                    host: &d.host,
                    environment: &d.environment,
                    revision: d.revision,
                    sequence: d.sequence,
                    expires_at: d.expires_at,
                    settings_digest: &digest,
                }
                .bytes(),
                signature: &d.signature,
            },
            now,
        )
    }

    fn admit(&mut self, id: &Identity, d: Signed<'_>, now: i64) -> Result<(), DirectiveError> {
        if d.host != id.host {
            return Err(DirectiveError::OtherHost {
                got: d.host.to_string(),
                this: id.host.clone(),
            });
        }
        if d.tenant != id.tenant || d.environment != id.environment {
            return Err(DirectiveError::OtherScope {
                got: format!("{}/{}", d.tenant, d.environment),
                this: format!("{}/{}", id.tenant, id.environment),
            });
        }
        if d.expires_at <= now {
            return Err(DirectiveError::Expired(now - d.expires_at));
        }
        if d.sequence <= self.highest {
            return Err(DirectiveError::Replayed {
                got: d.sequence,
                highest: self.highest,
            });
        }
        let key = trust::sign::parse_public(&id.directive_key)
            .map_err(|e| DirectiveError::Key(e.to_string()))?;
        if !trust::sign::verify(&key, &d.statement, d.signature) {
            return Err(DirectiveError::Signature);
        }
        trust::write_private(&self.path, format!("{}\n", d.sequence).as_bytes())
            .map_err(DirectiveError::Persist)?;
        self.highest = d.sequence;
        Ok(())
    }
}

/// What every signed message from the controller is checked for.
struct Signed<'a> {
    host: &'a str,
    tenant: &'a str,
    environment: &'a str,
    expires_at: i64,
    sequence: u64,
    statement: Vec<u8>,
    signature: &'a str,
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
        let e = guard.check(&id, &first, now).unwrap_err().to_string();
        assert!(e.contains("replayed"), "{e}");
        assert!(
            guard
                .check(&id, &directive(&key, "web-1", 4, now + 60), now)
                .is_err()
        );
        // For another host (mix-and-match).
        let e = guard
            .check(&id, &directive(&key, "web-2", 9, now + 60), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("for host \"web-2\""), "{e}");
        // Expired.
        let e = guard
            .check(&id, &directive(&key, "web-1", 9, now - 1), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        // Signed by someone else.
        let other = trust::sign::KeyPair::generate();
        let e = guard
            .check(&id, &directive(&other, "web-1", 9, now + 60), now)
            .unwrap_err()
            .to_string();
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
