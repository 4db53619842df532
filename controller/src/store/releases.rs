//! Apps, blobs, releases and the desired release of every app in every
//! environment (with its history): what agents are told to run.

use std::sync::Arc;
use std::time::Duration;

use sqlx::FromRow;

use super::{Result, Store, now};
use crate::lifecycle::RolloutState;

/// A release's app, canonical manifest bytes, and blob (format 2: its full
/// pack, empty until built) with its size.
pub type ReleaseManifest = (String, Vec<u8>, String, i64);

/// Release manifests as `release_manifest` read them, kept once the blob is
/// known: from then on nothing in the row changes (a manifest digest names
/// its bytes, and `set_release_pack` fills an empty blob only). Bounded by
/// bytes; an entry unused for 10 minutes goes.
#[derive(Clone)]
pub(super) struct ManifestCache(moka::future::Cache<(String, String), Arc<ReleaseManifest>>);

/// At most this many bytes of manifests kept per replica.
const MANIFEST_CACHE_BYTES: u64 = 64 << 20;

impl ManifestCache {
    pub(super) fn new() -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(MANIFEST_CACHE_BYTES)
                .weigher(
                    |(tenant, digest): &(String, String), row: &Arc<ReleaseManifest>| {
                        let bytes =
                            tenant.len() + digest.len() + row.0.len() + row.1.len() + row.2.len();
                        u32::try_from(bytes + 64).unwrap_or(u32::MAX)
                    },
                )
                .time_to_idle(Duration::from_secs(600))
                .build(),
        )
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct ReleaseRow {
    pub app: String,
    pub version: String,
    pub manifest_digest: String,
    pub blob_digest: String,
    #[sqlx(try_from = "i64")]
    pub blob_size: u64,
    pub git_commit: Option<String>,
    #[sqlx(try_from = "i64")]
    pub entries: u32,
    pub created_at: i64,
    #[sqlx(try_from = "i64")]
    pub counter: u64,
    /// Publisher signatures, JSON (`[{"key","sig"}]`).
    pub signatures: String,
    /// When it was yanked (`slipctl releases yank`), and why.
    #[sqlx(default)]
    pub yanked_at: Option<i64>,
    #[sqlx(default)]
    pub yank_reason: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct DesiredRow {
    pub app: String,
    pub version: String,
    /// The desired generation (`release_as_desired`: the one given).
    #[sqlx(default)]
    #[sqlx(try_from = "i64")]
    pub generation: u64,
    pub manifest_digest: String,
    pub blob_digest: String,
    #[sqlx(try_from = "i64")]
    pub blob_size: u64,
    /// The manifest's size in bytes: a directive names it, the agent fetches
    /// the manifest itself by digest (sessions never read it whole).
    #[sqlx(try_from = "i64")]
    pub manifest_size: u64,
    #[sqlx(try_from = "i64")]
    pub counter: u64,
    pub signatures: String,
    /// Operator rollback authorization, JSON signatures (`release_as_desired`: none).
    #[sqlx(default)]
    pub authorization: String,
    /// The release has a `[migrations]` table (its publisher said so).
    #[sqlx(default)]
    #[sqlx(try_from = "super::Flag")]
    pub has_migrations: bool,
}

/// Why a release was not yanked.
#[derive(Debug, thiserror::Error)]
pub enum YankRefused {
    /// Environments desire it (sorted).
    #[error("desired in {}", .0.join(", "))]
    Desired(Vec<String>),
    #[error(transparent)]
    Store(#[from] super::StoreError),
}

impl From<sqlx::Error> for YankRefused {
    fn from(e: sqlx::Error) -> Self {
        YankRefused::Store(e.into())
    }
}

/// A desired release of app@env: which version, at which generation.
#[derive(FromRow)]
struct Desired {
    version: String,
    #[sqlx(try_from = "i64")]
    generation: u64,
}

/// An app's generation in an environment.
#[derive(FromRow)]
struct DesiredGenerationRow {
    app: String,
    #[sqlx(try_from = "i64")]
    generation: u64,
    selector: Option<super::JsonText<std::collections::BTreeMap<String, String>>>,
}

/// An app's desired generation in one environment, with where it is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGeneration {
    pub app: String,
    pub generation: u64,
    /// The placement's label selector; None: every host of the environment.
    pub selector: Option<std::collections::BTreeMap<String, String>>,
}

const RELEASE_COLUMNS: &str = "app, version, manifest_digest, blob_digest, blob_size, git_commit, entries, created_at, counter, signatures, yanked_at, yank_reason";

impl Store {
    pub async fn app_exists(&self, tenant: &str, app: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM apps WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(app)
                .fetch_optional(self.db())
                .await?;
        Ok(found.is_some())
    }

    /// Names of the tenant's apps (published at least once).
    pub async fn apps(&self, tenant: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM apps WHERE tenant = $1 ORDER BY name")
                .bind(tenant)
                .fetch_all(self.db())
                .await?,
        )
    }

    pub async fn insert_blob(&self, digest: &str, size: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(now())
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Marks the blob `digest` as the object pack holding exactly the
    /// objects `key` names, in its order.
    pub async fn set_objects_key(&self, digest: &str, key: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET objects_key = $1 WHERE digest = $2")
            .bind(key)
            .bind(digest)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Records that the tenant's release `manifest_digest` was published
    /// with object pack `pack` (some of its objects, not its full pack).
    pub async fn record_release_pack(
        &self,
        tenant: &str,
        manifest_digest: &str,
        pack: &str,
        size: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO release_packs (tenant, manifest_digest, pack_digest, pack_size)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(manifest_digest)
        .bind(pack)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The object packs (not full packs) the tenant's `limit` newest
    /// releases were published with: each with its release's manifest,
    /// newest first.
    pub async fn releases_object_packs(
        &self,
        tenant: &str,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT r.manifest, p.pack_digest, p.pack_size
             FROM (SELECT manifest_digest, manifest, created_at, counter FROM releases
                   WHERE tenant = $1 ORDER BY created_at DESC, counter DESC LIMIT $2) r
             JOIN release_packs p ON p.tenant = $1 AND p.manifest_digest = r.manifest_digest
             ORDER BY r.created_at DESC, r.counter DESC",
        )
        .bind(tenant)
        .bind(i64::from(limit))
        .fetch_all(self.db())
        .await?)
    }

    /// A pack of the tenant's holding exactly the objects `key` names.
    pub async fn pack_with_objects(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, u64)>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT b.digest, b.size FROM blobs b JOIN blob_links l ON l.digest = b.digest
             WHERE l.tenant = $1 AND b.objects_key = $2 LIMIT 1",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(self.db())
        .await?;
        Ok(row.map(|(d, s)| (d, s as u64)))
    }

    /// Names `pack` as the full pack of the tenant's release `manifest_digest`
    /// if it has none yet (a release published as a delta gets its full pack
    /// built later).
    pub async fn set_release_pack(
        &self,
        tenant: &str,
        manifest_digest: &str,
        pack: &str,
        size: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE releases SET blob_digest = $1, blob_size = $2
             WHERE tenant = $3 AND manifest_digest = $4 AND blob_digest = ''",
        )
        .bind(pack)
        .bind(size as i64)
        .bind(tenant)
        .bind(manifest_digest)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The manifest digest of the tenant's newest release of `app` (yanked
    /// ones left out).
    pub async fn newest_release(&self, tenant: &str, app: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT manifest_digest FROM releases
             WHERE tenant = $1 AND app = $2 AND yanked_at IS NULL
             ORDER BY created_at DESC, counter DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(app)
        .fetch_optional(self.db())
        .await?)
    }

    /// The newest `limit` releases of the tenant that have a full pack:
    /// canonical manifest bytes, pack digest and size.
    pub async fn releases_with_packs(
        &self,
        tenant: &str,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT manifest, blob_digest, blob_size FROM releases
             WHERE tenant = $1 AND blob_digest != ''
             ORDER BY created_at DESC, counter DESC LIMIT $2",
        )
        .bind(tenant)
        .bind(i64::from(limit))
        .fetch_all(self.db())
        .await?)
    }

    /// The tenant's release named by its manifest digest: its app, canonical
    /// manifest bytes, and its blob (for format 2, its full pack) with size.
    /// Read once per replica while it is used (`ManifestCache`): every host
    /// of a deploy asks for it at about the same time, twice.
    pub async fn release_manifest(
        &self,
        tenant: &str,
        manifest_digest: &str,
    ) -> Result<Option<ReleaseManifest>> {
        let key = (tenant.to_string(), manifest_digest.to_string());
        // Concurrent misses wait for one read. What is not kept (no such
        // release, a full pack not built yet, an error) comes back as `Err`.
        let loaded = self
            .manifests
            .0
            .try_get_with(key, async {
                match self.read_release_manifest(tenant, manifest_digest).await {
                    Ok(Some(row)) if !row.2.is_empty() => Ok(Arc::new(row)),
                    other => Err(other),
                }
            })
            .await;
        match loaded {
            Ok(row) => Ok(Some((*row).clone())),
            Err(read) => match Arc::try_unwrap(read) {
                Ok(read) => read,
                // Shared with other callers: a row is cloned, an error
                // (which cannot be) is met by reading again.
                Err(shared) => match &*shared {
                    Ok(row) => Ok(row.clone()),
                    Err(_) => self.read_release_manifest(tenant, manifest_digest).await,
                },
            },
        }
    }

    async fn read_release_manifest(
        &self,
        tenant: &str,
        manifest_digest: &str,
    ) -> Result<Option<ReleaseManifest>> {
        Ok(sqlx::query_as(
            "SELECT app, manifest, blob_digest, blob_size FROM releases
             WHERE tenant = $1 AND manifest_digest = $2 LIMIT 1",
        )
        .bind(tenant)
        .bind(manifest_digest)
        .fetch_optional(self.db())
        .await?)
    }

    /// Notes that the release has a `[migrations]` table (its publisher said so).
    pub async fn mark_migrations(&self, tenant: &str, app: &str, version: &str) -> Result<()> {
        sqlx::query(
            "UPDATE releases SET has_migrations = 1 WHERE tenant = $1 AND app = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(app)
        .bind(version)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Inserts the release unless (tenant, app, version) exists; returns the stored
    /// release and whether it was already there.
    pub async fn insert_release(
        &self,
        tenant: &str,
        r: &ReleaseRow,
        manifest: &[u8],
    ) -> Result<(ReleaseRow, bool)> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO apps (tenant, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&r.app)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO releases (tenant, app, version, manifest_digest, blob_digest, blob_size, git_commit, entries, manifest, created_at, counter, signatures)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&r.app)
        .bind(&r.version)
        .bind(&r.manifest_digest)
        .bind(&r.blob_digest)
        .bind(r.blob_size as i64)
        .bind(&r.git_commit)
        .bind(r.entries as i64)
        .bind(manifest)
        .bind(r.created_at)
        .bind(r.counter as i64)
        .bind(&r.signatures)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        let stored = self
            .release(tenant, &r.app, &r.version)
            .await?
            .expect("release row exists after insert");
        Ok((stored, !inserted))
    }

    pub async fn release(
        &self,
        tenant: &str,
        app: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE tenant = $1 AND app = $2 AND version = $3"
        )))
        .bind(tenant)
        .bind(app)
        .bind(version)
        .fetch_optional(self.db())
        .await?)
    }

    pub async fn releases(&self, tenant: &str, app: &str) -> Result<Vec<ReleaseRow>> {
        // Newest first; rowid breaks ties between releases of the same second.
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE tenant = $1 AND app = $2 ORDER BY created_at DESC, rowid DESC"
        )))
        .bind(tenant)
        .bind(app)
        .fetch_all(self.db())
        .await?)
    }

    /// The highest release counter of an app (0 when none); yanked releases
    /// do not count.
    pub async fn max_counter(&self, tenant: &str, app: &str) -> Result<u64> {
        let max: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(counter), 0) FROM releases
             WHERE tenant = $1 AND app = $2 AND yanked_at IS NULL AND counter > 0",
        )
        .bind(tenant)
        .bind(app)
        .fetch_one(self.db())
        .await?;
        Ok(max.max(0) as u64)
    }

    /// Yanks a release: it stays listed, but is never desired again and does
    /// not count for the next counter. Refused while an environment desires
    /// it (their names in the error); yanking twice keeps the first record.
    pub async fn yank_release(
        &self,
        tenant: &str,
        app: &str,
        version: &str,
        reason: &str,
    ) -> std::result::Result<Option<ReleaseRow>, YankRefused> {
        let mut tx = self.begin_write().await?;
        let desired: Vec<String> = sqlx::query_scalar(
            "SELECT environment FROM desired WHERE tenant = $1 AND app = $2 AND version = $3 ORDER BY environment",
        )
        .bind(tenant)
        .bind(app)
        .bind(version)
        .fetch_all(&mut *tx)
        .await?;
        if !desired.is_empty() {
            return Err(YankRefused::Desired(desired));
        }
        sqlx::query(
            "UPDATE releases SET yanked_at = $1, yank_reason = $2
             WHERE tenant = $3 AND app = $4 AND version = $5 AND yanked_at IS NULL",
        )
        .bind(now())
        .bind(reason)
        .bind(tenant)
        .bind(app)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(self.release(tenant, app, version).await?)
    }

    /// Records a rollback authorization's nonce as used; false when it was
    /// used before. Prunes nonces of expired authorizations on the way.
    /// Whether a rollback authorization's nonce was used already.
    pub async fn rollback_nonce_spent(&self, tenant: &str, nonce: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM rollback_nonces WHERE tenant = $1 AND nonce = $2")
                .bind(tenant)
                .bind(nonce)
                .fetch_optional(self.db())
                .await?;
        Ok(found.is_some())
    }

    pub async fn spend_rollback_nonce(
        &self,
        tenant: &str,
        nonce: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM rollback_nonces WHERE expires_at < $1")
            .bind(now())
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO rollback_nonces (tenant, nonce, expires_at, used_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(nonce)
        .bind(expires_at)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Current desired (version, generation) of app@env.
    pub async fn desired(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
    ) -> Result<Option<(String, u64)>> {
        let row: Option<Desired> = sqlx::query_as(
            "SELECT version, generation FROM desired WHERE tenant = $1 AND app = $2 AND environment = $3",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .fetch_optional(self.db())
        .await?;
        Ok(row.map(|d| (d.version, d.generation)))
    }

    /// Where a rollback without a named version goes: the newest release
    /// desired here before, other than `current`, that ran healthy in the
    /// environment (a host there reported its digest healthy) and whose
    /// latest rollout here did not fail (halted, reverted, aborted). A
    /// release whose rollout was superseded before any host proved it, or
    /// that every host refused, is never a target; nor one just reverted.
    pub async fn rollback_target(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        current: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT d.version FROM desired_history d
             JOIN releases r ON r.tenant = d.tenant AND r.app = d.app AND r.version = d.version
             WHERE d.tenant = $1 AND d.app = $2 AND d.environment = $3 AND d.version != $4
               AND r.yanked_at IS NULL
               AND EXISTS (SELECT 1 FROM healthy_releases h WHERE h.tenant = d.tenant AND h.app = d.app
                   AND h.environment = d.environment AND h.manifest_digest = r.manifest_digest)
               AND COALESCE((SELECT o.state FROM rollouts o WHERE o.tenant = d.tenant AND o.app = d.app
                   AND o.environment = d.environment AND o.to_version = d.version ORDER BY o.id DESC LIMIT 1), '')
                   NOT IN ($5, $6, $7)
             ORDER BY d.id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .bind(current)
        .bind(RolloutState::Halted)
        .bind(RolloutState::Reverted)
        .bind(RolloutState::Aborted)
        .fetch_optional(self.db())
        .await?)
    }

    /// (app, generation, label selector) of every desired release in an
    /// environment: cheap, read on every desired-state change by every
    /// session. The selector is the app's placement there (`slipctl apps
    /// place`), None when every host of the environment takes it.
    pub async fn desired_generations(
        &self,
        tenant: &str,
        env: &str,
    ) -> Result<Vec<DesiredGeneration>> {
        let rows: Vec<DesiredGenerationRow> = sqlx::query_as(
            "SELECT d.app, d.generation, p.selector FROM desired d
             LEFT JOIN placements p ON p.tenant = d.tenant AND p.app = d.app AND p.environment = d.environment
             WHERE d.tenant = $1 AND d.environment = $2 ORDER BY d.app",
        )
        .bind(tenant)
        .bind(env)
        .fetch_all(self.db())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DesiredGeneration {
                app: r.app,
                generation: r.generation,
                selector: r.selector.map(|s| s.0),
            })
            .collect())
    }

    /// The desired release of app@env with its manifest.
    pub async fn desired_app(
        &self,
        tenant: &str,
        env: &str,
        app: &str,
    ) -> Result<Option<DesiredRow>> {
        Ok(sqlx::query_as(
            "SELECT r.app, r.version, d.generation, r.manifest_digest, r.blob_digest, r.blob_size,
                    CAST(length(r.manifest) AS BIGINT) AS manifest_size, r.counter, r.signatures, d.\"authorization\", r.has_migrations
             FROM desired d
             JOIN releases r ON r.tenant = d.tenant AND r.app = d.app AND r.version = d.version
             WHERE d.tenant = $1 AND d.environment = $2 AND d.app = $3",
        )
        .bind(tenant)
        .bind(env)
        .bind(app)
        .fetch_optional(self.db())
        .await?)
    }

    /// A release as a directive row (no rollback authorization): what a host
    /// held back by a rollout keeps.
    pub async fn release_as_desired(
        &self,
        tenant: &str,
        app: &str,
        version: &str,
        generation: u64,
    ) -> Result<Option<DesiredRow>> {
        let row: Option<DesiredRow> = sqlx::query_as(
            "SELECT app, version, manifest_digest, blob_digest, blob_size,
                    CAST(length(manifest) AS BIGINT) AS manifest_size, counter, signatures, has_migrations
             FROM releases WHERE tenant = $1 AND app = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(app)
        .bind(version)
        .fetch_optional(self.db())
        .await?;
        Ok(row.map(|d| DesiredRow {
            generation,
            authorization: "[]".into(),
            ..d
        }))
    }
}

/// Points app@env at `version` (new generation, history row) inside a transaction.
pub(super) async fn upsert_desired(
    tx: &mut sqlx::AnyConnection,
    tenant: &str,
    app: &str,
    env: &str,
    version: &str,
    authorization: &str,
) -> Result<u64> {
    let generation: i64 = sqlx::query_scalar(
        "INSERT INTO desired (tenant, app, environment, version, generation, updated_at, \"authorization\") VALUES ($1, $2, $3, $4, 1, $5, $6)
         ON CONFLICT (tenant, app, environment) DO UPDATE
           SET version = excluded.version, generation = desired.generation + 1, updated_at = excluded.updated_at,
               \"authorization\" = excluded.\"authorization\"
         RETURNING generation",
    )
    .bind(tenant)
    .bind(app)
    .bind(env)
    .bind(version)
    .bind(now())
    .bind(authorization)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO desired_history (tenant, app, environment, version, generation, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(app)
    .bind(env)
    .bind(version)
    .bind(generation)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(generation as u64)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::rollouts::tests::start;
    use crate::store::tests::release;

    async fn versions_are_immutable_and_generations_grow(s: Store) {
        s.insert_blob("sha256:b", 1).await.unwrap();
        let (_, existed) = s
            .insert_release("default", &release("1", "sha256:m1"), b"{}")
            .await
            .unwrap();
        assert!(!existed);
        let (stored, existed) = s
            .insert_release("default", &release("1", "sha256:other"), b"{}")
            .await
            .unwrap();
        assert!(existed);
        assert_eq!(
            stored.manifest_digest, "sha256:m1",
            "the first registration wins"
        );
        s.insert_release("default", &release("2", "sha256:m2"), b"{}")
            .await
            .unwrap();

        assert_eq!(start(&s, "1", &[]).await.generation, 1);
        assert_eq!(start(&s, "2", &[]).await.generation, 2);
        let d = s
            .desired_app("default", "preprod", "web")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((d.version.as_str(), d.generation), ("2", 2));
        assert_eq!(d.authorization, "[]");
        assert_eq!(d.manifest_size, 2, "the manifest's length, not its bytes");
        assert_eq!(
            s.desired_generations("default", "preprod").await.unwrap(),
            vec![DesiredGeneration {
                app: "web".into(),
                generation: 2,
                selector: None
            }]
        );
        // With its placement in this environment, not another's.
        let role = std::collections::BTreeMap::from([("role".to_string(), "web".to_string())]);
        s.set_placement("default", "web", "preprod", &role)
            .await
            .unwrap();
        s.set_placement("default", "web", "prod", &Default::default())
            .await
            .unwrap();
        assert_eq!(
            s.desired_generations("default", "preprod").await.unwrap()[0].selector,
            Some(role)
        );
        assert!(
            s.desired_app("default", "prod", "web")
                .await
                .unwrap()
                .is_none()
        );
        let held = s
            .release_as_desired("default", "web", "1", 7)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((held.version.as_str(), held.generation), ("1", 7));
        assert_eq!(held.authorization, "[]");
        assert_eq!(s.max_counter("default", "web").await.unwrap(), 0);
        assert_eq!(s.apps("default").await.unwrap(), vec!["web".to_string()]);
    }

    /// web@preprod's report from `host` running `version` (digest
    /// sha256:m<version>), healthy or not.
    async fn report(s: &Store, host: &str, version: &str, healthy: bool) {
        let health = if healthy {
            crate::lifecycle::Health::Healthy
        } else {
            crate::lifecycle::Health::Unhealthy
        };
        let r = crate::store::HostAppReport {
            app: "web".into(),
            running_version: version.into(),
            running_digest: format!("sha256:m{version}"),
            health,
            ..Default::default()
        };
        s.record_report("default", host, &r).await.unwrap();
    }

    async fn a_rollback_targets_the_newest_release_that_ran_healthy_here(s: Store) {
        s.insert_blob("sha256:b", 1).await.unwrap();
        for v in ["1", "2", "3", "4"] {
            s.insert_release("default", &release(v, &format!("sha256:m{v}")), b"{}")
                .await
                .unwrap();
        }
        s.add_host("default", "a", "preprod", "j1", "x", now() + 60, "test")
            .await
            .unwrap();
        s.add_host("default", "p", "prod", "j2", "x", now() + 60, "test")
            .await
            .unwrap();
        let target = |current: &'static str| {
            let s = s.clone();
            async move {
                s.rollback_target("default", "web", "preprod", current)
                    .await
                    .unwrap()
            }
        };

        start(&s, "1", &[("a", 0)]).await;
        report(&s, "a", "1", true).await;
        // 2 is superseded by 3 before a proves it; 3 runs healthy; 4 never does.
        start(&s, "2", &[("a", 0)]).await;
        report(&s, "a", "2", false).await;
        start(&s, "3", &[("a", 0)]).await;
        report(&s, "a", "3", true).await;
        start(&s, "4", &[("a", 0)]).await;
        report(&s, "a", "4", false).await;
        assert_eq!(target("4").await.as_deref(), Some("3"));
        assert_eq!(
            target("3").await.as_deref(),
            Some("1"),
            "2 never ran healthy here"
        );
        // Healthy in another environment does not count here.
        report(&s, "p", "2", true).await;
        assert_eq!(target("3").await.as_deref(), Some("1"));
        assert_eq!(target("1").await.as_deref(), Some("3"));
    }

    async fn a_rollback_nonce_is_spent_once(s: Store) {
        let later = now() + 600;
        assert!(!s.rollback_nonce_spent("default", "n1").await.unwrap());
        assert!(
            s.spend_rollback_nonce("default", "n1", later)
                .await
                .unwrap()
        );
        assert!(s.rollback_nonce_spent("default", "n1").await.unwrap());
        assert!(
            !s.spend_rollback_nonce("default", "n1", later)
                .await
                .unwrap()
        );
        assert!(
            !s.rollback_nonce_spent("other", "n1").await.unwrap(),
            "per tenant"
        );
    }

    /// Manifests are kept per replica, but only once nothing in the row can
    /// change: a release whose full pack is not built yet, or one not
    /// published yet, is read again.
    async fn a_manifest_is_read_again_until_its_pack_is_known(s: Store) {
        s.insert_blob("sha256:b", 1).await.unwrap();
        assert!(
            s.release_manifest("default", "sha256:m1")
                .await
                .unwrap()
                .is_none()
        );
        let mut delta = release("1", "sha256:m1");
        delta.blob_digest = String::new();
        delta.blob_size = 0;
        s.insert_release("default", &delta, b"{\"m\":1}")
            .await
            .unwrap();
        let read = s.release_manifest("default", "sha256:m1").await.unwrap();
        let (app, bytes, blob, _) = read.expect("published since the miss");
        assert_eq!((app.as_str(), bytes.as_slice()), ("web", &b"{\"m\":1}"[..]));
        assert_eq!(blob, "", "no full pack yet");
        s.set_release_pack("default", "sha256:m1", "sha256:b", 1)
            .await
            .unwrap();
        let reads = futures_util::future::join_all(
            (0..8).map(|_| s.release_manifest("default", "sha256:m1")),
        )
        .await;
        for read in reads {
            let (_, bytes, blob, size) = read.unwrap().unwrap();
            assert_eq!(
                (blob.as_str(), size),
                ("sha256:b", 1),
                "the pack built since"
            );
            assert_eq!(bytes, b"{\"m\":1}");
        }
        assert!(
            s.release_manifest("other", "sha256:m1")
                .await
                .unwrap()
                .is_none(),
            "another tenant's release is not found through the cache"
        );
    }

    crate::store::testing::on_both_dialects!(
        a_rollback_nonce_is_spent_once,
        a_manifest_is_read_again_until_its_pack_is_known,
        versions_are_immutable_and_generations_grow,
        a_rollback_targets_the_newest_release_that_ran_healthy_here,
    );
}
