//! Store side of trust: tenants, API tokens, join tokens, host certificates
//! and revocation, directive sequence numbers, per-tenant blob links.

use std::collections::{BTreeMap, HashMap};

use sqlx::FromRow;

use super::{Result, Store, json_list, now};
use crate::sanitize;

#[derive(Debug, Clone, FromRow)]
pub struct ApiTokenRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// A JSON array in the database.
    #[sqlx(try_from = "super::JsonText<Vec<String>>")]
    pub roles: Vec<String>,
    pub secret_hash: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    /// None: never expires.
    pub expires_at: Option<i64>,
    /// Last authentication, to the minute (None: never used).
    pub last_used_at: Option<i64>,
}

/// Who a client certificate belongs to.
#[derive(Debug, Clone, FromRow)]
pub struct CertOwner {
    pub tenant: String,
    pub host: String,
    pub environment: String,
    #[sqlx(try_from = "super::Flag")]
    pub revoked: bool,
    pub not_after: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub name: String,
    pub environment: String,
    pub agent_version: String,
    pub last_seen: i64,
    pub cert_fingerprint: String,
    pub cert_not_after: i64,
    pub revoked_at: Option<i64>,
    pub purpose: String,
    pub criticality: String,
    #[sqlx(try_from = "super::JsonText<BTreeMap<String, String>>")]
    pub labels: BTreeMap<String, String>,
    pub os: String,
}

/// Why a join token was refused (the same words for every caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("join token unknown")]
    Unknown,
    #[error("join token already used")]
    Used,
    #[error("join token expired")]
    Expired,
    #[error("join token was issued for host {0:?}, not this one")]
    WrongHost(String),
    #[error("host was revoked")]
    Revoked,
}

/// A join token with its host, as `consume_join_token` checks it.
#[derive(FromRow)]
struct JoinTokenRow {
    id: String,
    tenant: String,
    host: String,
    secret_hash: String,
    expires_at: i64,
    used_at: Option<i64>,
    used_csr: String,
    environment: String,
    revoked_at: Option<i64>,
}

const TOKEN_COLUMNS: &str = "id, tenant, name, roles, secret_hash, created_at, created_by, revoked_at, expires_at, last_used_at";

/// How stale `last_used_at` may get: authentication writes it at most this
/// often per token, not once per call.
pub const LAST_USED_RESOLUTION_SECS: i64 = 60;

impl Store {
    pub async fn tenant_exists(&self, tenant: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(self.db())
            .await?;
        Ok(found.is_some())
    }

    /// Every tenant's name, in order.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM tenants ORDER BY name")
            .fetch_all(self.db())
            .await?)
    }

    /// Bytes of every blob stored (all tenants).
    pub async fn blob_bytes(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs")
                .fetch_one(self.db())
                .await?,
        )
    }

    pub async fn api_token_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(self.db())
            .await?)
    }

    /// A new tenant with the usual preprod and prod; false if it exists.
    pub async fn create_tenant(&self, name: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created {
            for (env, production) in [("preprod", 0), ("prod", 1)] {
                sqlx::query(
                    "INSERT INTO environments (tenant, name, production) VALUES ($1, $2, $3)",
                )
                .bind(name)
                .bind(env)
                .bind(production)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(created)
    }

    pub async fn insert_api_token(&self, t: &ApiTokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant, name, roles, secret_hash, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.tenant)
        .bind(&t.name)
        .bind(json_list(&t.roles))
        .bind(&t.secret_hash)
        .bind(t.created_at)
        .bind(&t.created_by)
        .bind(t.expires_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Records a use of the token at `at`, unless one within
    /// `LAST_USED_RESOLUTION_SECS` is recorded already (no write per call).
    pub async fn touch_api_token(&self, id: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $1
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(at)
        .bind(id)
        .bind(at - LAST_USED_RESOLUTION_SECS)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db())
        .await?)
    }

    pub async fn api_tokens(&self, tenant: &str) -> Result<Vec<ApiTokenRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant = $1 ORDER BY created_at, id"
        )))
        .bind(tenant)
        .fetch_all(self.db())
        .await?)
    }

    /// Revokes the tenant's token with this id or name; how many were revoked.
    pub async fn revoke_api_token(&self, tenant: &str, id_or_name: &str) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE tenant = $2 AND (id = $3 OR name = $4) AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(tenant)
        .bind(id_or_name)
        .bind(id_or_name)
        .execute(self.writer())
        .await?
        .rows_affected())
    }

    /// Registers (or re-admits) a host in an environment and stores its join token.
    #[expect(clippy::too_many_arguments, reason = "one column per argument")]
    pub async fn add_host(
        &self,
        tenant: &str,
        host: &str,
        env: &str,
        token_id: &str,
        secret_hash: &str,
        expires_at: i64,
        created_by: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO hosts (tenant, name, environment, agent_version, last_seen) VALUES ($1, $2, $3, '', 0)
             ON CONFLICT (tenant, name) DO UPDATE SET environment = excluded.environment, revoked_at = NULL",
        )
        .bind(tenant)
        .bind(host)
        .bind(env)
        .execute(&mut *tx)
        .await?;
        // The host's spent tokens stop answering their CSR again (a revoked
        // machine retrying must not take the re-added host's place).
        sqlx::query(
            "UPDATE join_tokens SET used_csr = '' WHERE tenant = $1 AND host = $2 AND used_at IS NOT NULL",
        )
        .bind(tenant)
        .bind(host)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO join_tokens (id, tenant, host, secret_hash, expires_at, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token_id)
        .bind(tenant)
        .bind(host)
        .bind(secret_hash)
        .bind(expires_at)
        .bind(now())
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whom a join token was made for, `(tenant, host)`, if its secret is
    /// `secret_hash`; read without the write lock: enrollment signs the
    /// certificate for them first, then `consume_join_token` checks the
    /// token again and records it, in one write.
    pub async fn join_token_host(
        &self,
        id: &str,
        secret_hash: &str,
    ) -> Result<Option<(String, String)>> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT tenant, host, secret_hash FROM join_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(self.db())
                .await?;
        Ok(row
            .filter(|(_, _, hash)| trust::ct_eq(hash.as_bytes(), secret_hash.as_bytes()))
            .map(|(tenant, host, _)| (tenant, host)))
    }

    /// Checks and burns a join token: `(tenant, host, environment)` of its
    /// host, or why not. `host` None: whichever host it was made for. With
    /// `cert` (signed for the token's host), records it as the host's only
    /// certificate in the same transaction (`record_cert`); a token that
    /// turns out to be for another host records nothing. (`enroll`, for one;
    /// what the store's tests check one join at a time with.)
    #[cfg(test)]
    pub async fn consume_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        host: Option<&str>,
        csr_digest: &str,
        cert: Option<&NewCert>,
    ) -> Result<Joined> {
        let join = Join {
            token_id: id.to_string(),
            secret_hash: secret_hash.to_string(),
            host: host.map(str::to_string),
            csr_digest: csr_digest.to_string(),
            cert: cert.cloned(),
            peer: String::new(),
        };
        let mut out = self.enroll(std::slice::from_ref(&join)).await?;
        Ok(out.pop().unwrap_or(Err(JoinRefused::Unknown)))
    }

    /// Enrollments, in one write transaction and a handful of statements
    /// whatever their number (a fleet joining at once queues on the write
    /// lock once per batch, not once per host): each join's token checked as
    /// `consume_join_token` checks it, in order (the same token twice: the
    /// second sees it spent by the first), the accepted ones' tokens spent,
    /// their certificates recorded (`record_cert`: each host's only one) and
    /// an audit row written for each accepted join with a certificate.
    pub async fn enroll(&self, joins: &[Join]) -> Result<Vec<Joined>> {
        let ids: Vec<String> = joins.iter().map(|j| j.token_id.clone()).collect();
        let mut tx = self.begin_write().await?;
        let rows: Vec<JoinTokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT j.id, j.tenant, j.host, j.secret_hash, j.expires_at, j.used_at, j.used_csr, h.environment, h.revoked_at
             FROM join_tokens j JOIN hosts h ON h.tenant = j.tenant AND h.name = j.host
             WHERE j.id IN (SELECT value FROM {})",
            self.json_array_elements_text("$1")
        )))
        .bind(json_list(&ids))
        .fetch_all(&mut *tx)
        .await?;
        let mut rows: HashMap<String, JoinTokenRow> =
            rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        let at = now();
        let mut spent: Vec<(String, String)> = Vec::new();
        // The last certificate of each host wins, as one after another would;
        // written in host order (row locks taken in one order everywhere).
        let mut certs: BTreeMap<(String, String), &NewCert> = BTreeMap::new();
        let mut audits: Vec<(String, String, String, String)> = Vec::new();
        let mut results = Vec::with_capacity(joins.len());
        for j in joins {
            let Some(row) = rows.get_mut(&j.token_id) else {
                results.push(Err(JoinRefused::Unknown));
                continue;
            };
            let again = match judge(row, j, at) {
                Ok(again) => again,
                Err(refused) => {
                    results.push(Err(refused));
                    continue;
                }
            };
            if !again {
                row.used_at = Some(at);
                row.used_csr = j.csr_digest.clone();
                spent.push((j.token_id.clone(), j.csr_digest.clone()));
            }
            if let Some(c) = &j.cert {
                certs.insert((c.tenant.clone(), c.host.clone()), c);
                audits.push((
                    c.tenant.clone(),
                    sanitize::text(&format!("host:{}", c.host), super::audit::MAX_ACTOR),
                    format!("ok (certificate valid until {})", c.not_after),
                    sanitize::text(&j.peer, super::audit::MAX_PEER),
                ));
            }
            results.push(Ok((
                row.tenant.clone(),
                row.host.clone(),
                row.environment.clone(),
            )));
        }
        if !spent.is_empty() {
            let json = serde_json::to_string(&spent).unwrap_or_else(|_| "[]".into());
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE join_tokens SET used_at = $1, used_csr = j.csr
                 FROM (SELECT value ->> 0 AS id, value ->> 1 AS csr FROM {}) AS j
                 WHERE join_tokens.id = j.id",
                self.json_rows("$2")
            )))
            .bind(at)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        if !certs.is_empty() {
            let certs: Vec<(&str, &str, &str, i64)> = certs
                .values()
                .map(|c| {
                    (
                        c.fingerprint.as_str(),
                        c.tenant.as_str(),
                        c.host.as_str(),
                        c.not_after,
                    )
                })
                .collect();
            write_certs(&mut tx, self, &certs).await?;
        }
        if !audits.is_empty() {
            let json = serde_json::to_string(&audits).unwrap_or_else(|_| "[]".into());
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO audit (at, tenant, actor, action, app, environment, detail, outcome, peer)
                 SELECT $1, value ->> 0, value ->> 1, 'enroll', '', '', '', value ->> 2, value ->> 3 FROM {}",
                self.json_rows("$2")
            )))
            .bind(at)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Remembers a certificate issued to a host; it is the host's current
    /// one and the only one that works: every certificate issued to the host
    /// before (the one a renewal was made with, one from an earlier
    /// enrollment) is forgotten, so a copy of it is refused from now on.
    pub async fn record_cert(
        &self,
        tenant: &str,
        host: &str,
        fingerprint: &str,
        not_after: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        write_certs(&mut tx, self, &[(fingerprint, tenant, host, not_after)]).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn cert_owner(&self, fingerprint: &str) -> Result<Option<CertOwner>> {
        Ok(sqlx::query_as(
            "SELECT c.tenant, c.host, h.environment, h.revoked_at IS NOT NULL AS revoked, c.not_after
             FROM host_certs c JOIN hosts h ON h.tenant = c.tenant AND h.name = c.host WHERE c.fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(self.db())
        .await?)
    }

    /// Revokes a host: its certificates and unused join tokens stop working.
    pub async fn revoke_host(&self, tenant: &str, host: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("UPDATE hosts SET revoked_at = $1 WHERE tenant = $2 AND name = $3")
            .bind(now())
            .bind(tenant)
            .bind(host)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM host_certs WHERE tenant = $1 AND host = $2")
            .bind(tenant)
            .bind(host)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE join_tokens SET used_at = COALESCE(used_at, $1), used_csr = '' WHERE tenant = $2 AND host = $3",
        )
        .bind(now())
        .bind(tenant)
        .bind(host)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn hosts(&self, tenant: &str, env: &str) -> Result<Vec<HostRow>> {
        Ok(sqlx::query_as(
            "SELECT name, environment, agent_version, last_seen, cert_fingerprint, cert_not_after, revoked_at,
                    purpose, criticality, labels, os
             FROM hosts WHERE tenant = $1 AND ($2 = '' OR environment = $3) ORDER BY environment, name",
        )
        .bind(tenant)
        .bind(env)
        .bind(env)
        .fetch_all(self.db())
        .await?)
    }

    /// Gives a tenant access to a blob it uploaded (or proved it has).
    pub async fn link_blob(&self, tenant: &str, digest: &str) -> Result<()> {
        sqlx::query("INSERT INTO blob_links (tenant, digest, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(tenant)
            .bind(digest)
            .bind(now())
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Size of a blob the tenant may read; None exactly as for a missing blob.
    pub async fn tenant_blob_size(&self, tenant: &str, digest: &str) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest WHERE l.tenant = $1 AND l.digest = $2",
        )
        .bind(tenant)
        .bind(digest)
        .fetch_optional(self.db())
        .await?;
        Ok(size.map(|s| s as u64))
    }
}

/// A certificate just signed for a host, to record as its only one.
#[derive(Debug, Clone)]
pub struct NewCert {
    pub tenant: String,
    pub host: String,
    pub fingerprint: String,
    pub not_after: i64,
}

/// One enrollment for `Store::enroll`: the join token presented (its id
/// and the hash of its secret), the host asked for (None: the token's), the
/// CSR's digest, the certificate signed for the token's host, and the
/// caller's address (for the audit row).
#[derive(Debug, Clone)]
pub struct Join {
    pub token_id: String,
    pub secret_hash: String,
    pub host: Option<String>,
    pub csr_digest: String,
    pub cert: Option<NewCert>,
    pub peer: String,
}

/// A join's outcome: `(tenant, host, environment)`, or why it was refused.
pub type Joined = std::result::Result<(String, String, String), JoinRefused>;

/// Whether `j` may spend the token `row` now (`Ok(true)`: it already did,
/// with this very CSR, and is answered again), or why not.
fn judge(row: &JoinTokenRow, j: &Join, at: i64) -> std::result::Result<bool, JoinRefused> {
    if !trust::ct_eq(row.secret_hash.as_bytes(), j.secret_hash.as_bytes()) {
        return Err(JoinRefused::Unknown);
    }
    if row.expires_at <= at {
        return Err(JoinRefused::Expired);
    }
    // Used already: by this same CSR, the host asking again because the
    // answer never reached it (its private key never left it, so a
    // certificate for it is worth nothing to anyone else).
    let again = row.used_at.is_some()
        && !row.used_csr.is_empty()
        && trust::ct_eq(row.used_csr.as_bytes(), j.csr_digest.as_bytes());
    if row.used_at.is_some() && !again {
        return Err(JoinRefused::Used);
    }
    if j.host.as_ref().is_some_and(|h| *h != row.host) {
        return Err(JoinRefused::WrongHost(row.host.clone()));
    }
    if row.revoked_at.is_some() {
        return Err(JoinRefused::Revoked);
    }
    if j.cert
        .as_ref()
        .is_some_and(|c| c.tenant != row.tenant || c.host != row.host)
    {
        return Err(JoinRefused::Unknown);
    }
    Ok(again)
}

/// Records certificates `(fingerprint, tenant, host, not_after)`, at most
/// one per host, inside a write transaction: each becomes its host's only
/// one (`record_cert`), and expired ones are dropped.
async fn write_certs(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    store: &Store,
    certs: &[(&str, &str, &str, i64)],
) -> Result<()> {
    let json = serde_json::to_string(certs).unwrap_or_else(|_| "[]".into());
    let rows = store.json_rows("$1");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO host_certs (fingerprint, tenant, host, not_after, issued_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, CAST(value ->> 3 AS BIGINT), $2 FROM {rows}"
    )))
    .bind(&json)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM host_certs
         WHERE (tenant, host) IN (SELECT value ->> 1, value ->> 2 FROM {rows})
           AND fingerprint NOT IN (SELECT value ->> 0 FROM {rows})"
    )))
    .bind(&json)
    .execute(&mut **tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE hosts SET cert_fingerprint = j.fingerprint, cert_not_after = j.not_after
         FROM (SELECT value ->> 0 AS fingerprint, value ->> 1 AS tenant, value ->> 2 AS host,
                      CAST(value ->> 3 AS BIGINT) AS not_after FROM {rows}) AS j
         WHERE hosts.tenant = j.tenant AND hosts.name = j.host"
    )))
    .bind(&json)
    .execute(&mut **tx)
    .await?;
    // Expired certificates can never be presented again (TLS checks validity).
    sqlx::query("DELETE FROM host_certs WHERE not_after < $1")
        .bind(now() - 3600)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    async fn a_new_certificate_replaces_the_hosts_older_ones(s: Store) {
        s.add_host("default", "h1", "preprod", "j1", "x", now() + 60, "test")
            .await
            .unwrap();
        s.add_host("default", "h2", "preprod", "j2", "x", now() + 60, "test")
            .await
            .unwrap();
        let later = now() + 3600;
        s.record_cert("default", "h1", "old", later).await.unwrap();
        s.record_cert("default", "h2", "other", later)
            .await
            .unwrap();
        s.record_cert("default", "h1", "new", later).await.unwrap();
        assert!(s.cert_owner("old").await.unwrap().is_none(), "renewed away");
        assert_eq!(s.cert_owner("new").await.unwrap().unwrap().host, "h1");
        assert_eq!(s.cert_owner("other").await.unwrap().unwrap().host, "h2");
    }

    async fn last_use_is_written_at_most_once_a_minute(s: Store) {
        let (_, row) = crate::auth::new_token("default", "ci", vec!["viewer".into()], "t", None);
        s.insert_api_token(&row).await.unwrap();
        let used = |s: &Store| {
            let s = s.clone();
            let id = row.id.clone();
            async move { s.api_token(&id).await.unwrap().unwrap().last_used_at }
        };
        assert_eq!(used(&s).await, None);
        s.touch_api_token(&row.id, 1000).await.unwrap();
        assert_eq!(used(&s).await, Some(1000));
        s.touch_api_token(&row.id, 1059).await.unwrap();
        assert_eq!(used(&s).await, Some(1000));
        s.touch_api_token(&row.id, 1060).await.unwrap();
        assert_eq!(used(&s).await, Some(1060));
    }

    /// A host whose enrollment answer was lost asks again with the same
    /// CSR and is answered; any other CSR with the spent token is refused.
    async fn a_spent_join_token_answers_the_same_csr_again_and_no_other(s: Store) {
        let far = now() + 3600;
        s.add_host("default", "web-1", "preprod", "tok1", "hash1", far, "admin")
            .await
            .unwrap();
        let first = s
            .consume_join_token("tok1", "hash1", Some("web-1"), "csr-a", None)
            .await
            .unwrap();
        assert_eq!(
            first,
            Ok(("default".into(), "web-1".into(), "preprod".into()))
        );
        let again = s
            .consume_join_token("tok1", "hash1", Some("web-1"), "csr-a", None)
            .await
            .unwrap();
        assert_eq!(again, first, "the same CSR, its answer lost");
        for (secret, csr, refused) in [
            ("hash1", "csr-b", JoinRefused::Used),
            ("hash1", "", JoinRefused::Used),
            ("wrong", "csr-a", JoinRefused::Unknown),
        ] {
            let r = s
                .consume_join_token("tok1", secret, Some("web-1"), csr, None)
                .await
                .unwrap();
            assert_eq!(r, Err(refused), "{secret} {csr}");
        }
        // Re-admitted with a new token: the spent one answers nobody.
        s.add_host("default", "web-1", "preprod", "tok2", "hash2", far, "admin")
            .await
            .unwrap();
        let r = s
            .consume_join_token("tok1", "hash1", Some("web-1"), "csr-a", None)
            .await
            .unwrap();
        assert_eq!(
            r,
            Err(JoinRefused::Used),
            "an older token of a re-added host"
        );
    }

    /// An enrollment's one write: the token spent and the certificate
    /// recorded together, or neither.
    async fn a_join_spends_its_token_and_records_its_certificate_together(s: Store) {
        let far = now() + 3600;
        for (host, token, hash) in [("web-1", "tok1", "hash1"), ("web-2", "tok2", "hash2")] {
            s.add_host("default", host, "preprod", token, hash, far, "admin")
                .await
                .unwrap();
        }
        assert_eq!(s.join_token_host("tok1", "hash2").await.unwrap(), None);
        assert_eq!(s.join_token_host("nope", "hash1").await.unwrap(), None);
        assert_eq!(
            s.join_token_host("tok1", "hash1").await.unwrap(),
            Some(("default".into(), "web-1".into()))
        );
        let cert = |host: &str, fingerprint: &str| NewCert {
            tenant: "default".into(),
            host: host.into(),
            fingerprint: fingerprint.into(),
            not_after: far,
        };
        // Signed for another host than the token's, or with a wrong secret:
        // nothing recorded, the token not spent.
        let refused = [
            ("tok1", "hash1", cert("web-2", "fp-x")),
            ("tok2", "wrong", cert("web-2", "fp-y")),
        ];
        for (token, hash, c) in refused {
            let r = s
                .consume_join_token(token, hash, None, "csr-a", Some(&c))
                .await
                .unwrap();
            assert_eq!(r, Err(JoinRefused::Unknown), "{token}");
            assert!(s.cert_owner(&c.fingerprint).await.unwrap().is_none());
        }
        let r = s
            .consume_join_token("tok1", "hash1", None, "csr-a", Some(&cert("web-1", "fp-1")))
            .await
            .unwrap();
        assert_eq!(r, Ok(("default".into(), "web-1".into(), "preprod".into())));
        assert_eq!(s.cert_owner("fp-1").await.unwrap().unwrap().host, "web-1");
        let spent = s
            .consume_join_token("tok1", "hash1", None, "csr-b", Some(&cert("web-1", "fp-2")))
            .await
            .unwrap();
        assert_eq!(spent, Err(JoinRefused::Used));
        assert!(s.cert_owner("fp-2").await.unwrap().is_none());
        assert!(s.cert_owner("fp-1").await.unwrap().is_some(), "kept");
    }

    crate::store::testing::on_both_dialects!(
        a_new_certificate_replaces_the_hosts_older_ones,
        a_join_spends_its_token_and_records_its_certificate_together,
        last_use_is_written_at_most_once_a_minute,
        a_spent_join_token_answers_the_same_csr_again_and_no_other,
    );
}
