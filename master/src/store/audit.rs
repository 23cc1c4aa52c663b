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
    /// Only events older than this one (by id): the next page after it.
    pub before: Option<i64>,
    pub limit: i64,
}

/// The most bytes a stored text field of an event holds; longer values are
/// cut (on a character boundary) and end with [`CUT_MARKER`].
pub const FIELD_CAP: usize = 256;
/// What ends a value that was cut to [`FIELD_CAP`].
pub const CUT_MARKER: char = '…';

/// `text`, cut to at most [`FIELD_CAP`] bytes (marker included).
pub fn cap_field(mut text: String) -> String {
    if text.len() <= FIELD_CAP {
        return text;
    }
    let mut end = FIELD_CAP - CUT_MARKER.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(CUT_MARKER);
    text
}

impl AuditEntry {
    /// The entry with every text field cut to [`FIELD_CAP`] bytes: a
    /// request path or a name sent by a stranger must not bloat the log.
    pub fn capped(self) -> AuditEntry {
        AuditEntry {
            event: self.event,
            actor_id: self.actor_id.map(cap_field),
            actor_name: self.actor_name.map(cap_field),
            subject: self.subject.map(cap_field),
            address: self.address.map(cap_field),
            detail: self.detail.map(cap_field),
        }
    }
}

/// Rows one pruning statement deletes, so a large backlog never holds the
/// database's write lock for long.
const PRUNE_BATCH: i64 = 5000;

impl Store {
    /// Stores an event (its fields capped, see [`AuditEntry::capped`]).
    pub async fn insert_audit(&self, entry: &AuditEntry) -> Result<()> {
        let entry = &entry.clone().capped();
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

    /// Retention: deletes events older than `before` (ms since the epoch),
    /// in batches so a large backlog never holds the write lock for long;
    /// returns how many went.
    pub async fn prune_audit(&self, before: i64, max_rows: i64) -> Result<u64> {
        // The oldest event that the row cap keeps, if the log is over it.
        self.count(1);
        let keep_from: Option<i64> =
            sqlx::query_scalar("SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET $1")
                .bind(max_rows.max(1) - 1)
                .fetch_optional(&self.pool)
                .await?;
        let mut total = 0;
        loop {
            self.count(1);
            let done = sqlx::query(
                "DELETE FROM audit_log WHERE id IN \
                 (SELECT id FROM audit_log WHERE at < $1 OR id < $2 ORDER BY id LIMIT $3)",
            )
            .bind(before)
            .bind(keep_from.unwrap_or(i64::MIN))
            .bind(PRUNE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += done;
            if done < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
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
               AND (CAST($5 AS BIGINT) IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(filter.user.clone())
        .bind(filter.event.clone())
        .bind(filter.since)
        .bind(filter.limit)
        .bind(filter.before)
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
        // Paging by id: a page of two, then what is older than its last.
        let first = AuditFilter {
            limit: 2,
            ..all.clone()
        };
        let page = store.query_audit(&first).await.expect("query");
        assert_eq!(page.len(), 2);
        let next = AuditFilter {
            before: Some(page[1].id),
            ..first
        };
        let rest = store.query_audit(&next).await.expect("query");
        assert_eq!(rest.len(), 1);
        assert!(rest[0].id < page[1].id);
        let future = AuditFilter {
            since: Some(now_ms() + 60_000),
            ..all
        };
        assert!(store.query_audit(&future).await.expect("query").is_empty());
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        assert_eq!(cap_field("short".into()), "short");
        let exact = "a".repeat(FIELD_CAP);
        assert_eq!(cap_field(exact.clone()), exact);
        for long in [
            "/x".repeat(30_000),
            "é".repeat(300),
            format!("a{}", "€".repeat(200)),
        ] {
            let cut = cap_field(long.clone());
            assert!(cut.len() <= FIELD_CAP, "{}", cut.len());
            assert!(cut.len() > FIELD_CAP - 8, "{}", cut.len());
            assert!(cut.ends_with(CUT_MARKER));
            assert!(long.starts_with(cut.trim_end_matches(CUT_MARKER)));
        }
    }

    #[tokio::test]
    async fn stored_fields_are_capped_and_old_events_pruned() {
        let (store, _dir) = sqlite_store().await;
        store
            .insert_audit(&AuditEntry {
                event: "access_denied",
                subject: Some(format!("GET /{}", "a".repeat(60_000))),
                ..Default::default()
            })
            .await
            .expect("insert");
        let all = AuditFilter {
            limit: 100,
            ..Default::default()
        };
        let rows = store.query_audit(&all).await.expect("query");
        let subject = rows[0].subject.as_deref().unwrap_or_default();
        assert!(subject.len() <= FIELD_CAP && subject.ends_with(CUT_MARKER));
        sqlx::query("UPDATE audit_log SET at = 1")
            .execute(&store.pool)
            .await
            .expect("age the row");
        store
            .insert_audit(&AuditEntry {
                event: "login",
                ..Default::default()
            })
            .await
            .expect("insert");
        assert_eq!(
            store
                .prune_audit(now_ms() - 1000, 1000)
                .await
                .expect("prune"),
            1
        );
        let rows = store.query_audit(&all).await.expect("query");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event, "login");
        // The row cap keeps the newest events, whatever their age.
        for n in 0..12 {
            store
                .insert_audit(&AuditEntry {
                    event: "login",
                    subject: Some(format!("event {n}")),
                    ..Default::default()
                })
                .await
                .expect("insert");
        }
        assert_eq!(store.prune_audit(0, 5).await.expect("prune"), 8);
        let rows = store.query_audit(&all).await.expect("query");
        let subjects: Vec<_> = rows.iter().filter_map(|r| r.subject.clone()).collect();
        assert_eq!(
            subjects,
            ["event 11", "event 10", "event 9", "event 8", "event 7"]
        );
        assert_eq!(store.prune_audit(0, 5).await.expect("prune"), 0);
    }
}
