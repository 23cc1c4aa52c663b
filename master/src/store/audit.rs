//! The audit log: security events, queryable by admins.

use super::{now_ms, Result, Store};
use sqlx::Row;

/// One security event to record.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub event: &'static str,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    /// What the event is about: a username, a session or token id, a route.
    pub subject: Option<String>,
    pub address: Option<String>,
    pub detail: Option<String>,
}

/// A stored event.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub event: String,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    pub subject: Option<String>,
    pub address: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// An actor's id or name, or a subject.
    pub user: Option<String>,
    pub event: Option<String>,
    /// Only events at or after this time (ms since the epoch).
    pub since: Option<i64>,
    pub limit: i64,
}

impl Store {
    pub async fn insert_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.count(1);
        sqlx::query(
            "INSERT INTO audit_log (at, event, actor_id, actor_name, subject, address, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(entry.event)
        .bind(entry.actor_id.clone())
        .bind(entry.actor_name.clone())
        .bind(entry.subject.clone())
        .bind(entry.address.clone())
        .bind(entry.detail.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events matching `filter`, newest first.
    pub async fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.count(1);
        let rows = sqlx::query(
            "SELECT id, at, event, actor_id, actor_name, subject, address, detail FROM audit_log \
             WHERE (CAST($1 AS TEXT) IS NULL OR actor_id = $1 OR lower(actor_name) = lower($1) \
                    OR subject = $1) \
               AND (CAST($2 AS TEXT) IS NULL OR event = $2) \
               AND (CAST($3 AS BIGINT) IS NULL OR at >= $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(filter.user.clone())
        .bind(filter.event.clone())
        .bind(filter.since)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    event: row.try_get(2)?,
                    actor_id: row.try_get(3)?,
                    actor_name: row.try_get(4)?,
                    subject: row.try_get(5)?,
                    address: row.try_get(6)?,
                    detail: row.try_get(7)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;

    #[tokio::test]
    async fn filters_select_events() {
        let (store, _dir) = sqlite_store().await;
        for (event, name) in [
            ("login_failed", "dave"),
            ("login", "Dave"),
            ("login", "erin"),
        ] {
            store
                .insert_audit(&AuditEntry {
                    event,
                    actor_name: Some(name.to_string()),
                    ..Default::default()
                })
                .await
                .expect("insert");
        }
        let all = AuditFilter {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(store.query_audit(&all).await.expect("query").len(), 3);
        let dave = AuditFilter {
            user: Some("dave".into()),
            ..all.clone()
        };
        assert_eq!(store.query_audit(&dave).await.expect("query").len(), 2);
        let dave_logins = AuditFilter {
            event: Some("login".into()),
            ..dave.clone()
        };
        let found = store.query_audit(&dave_logins).await.expect("query");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].actor_name.as_deref(), Some("Dave"));
        let future = AuditFilter {
            since: Some(now_ms() + 60_000),
            ..all
        };
        assert!(store.query_audit(&future).await.expect("query").is_empty());
    }
}
