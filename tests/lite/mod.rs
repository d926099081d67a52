//! A SQLite outbox for the broker tests: one temporary database file per
//! test, plus the events they record and plain-SQL views of the table.

#![allow(dead_code)] // Reason: each broker test uses a different subset.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod lite`.

use std::collections::BTreeMap;

use outbox::{Backoff, Metadata, Outbox, OutboxBuilder};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row as _, Sqlite, SqlitePool};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
pub struct InvoicePaid {
    pub invoice_id: i64,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "shipping.parcel_sent")]
pub struct ParcelSent {
    pub parcel: String,
    pub note: String,
}

/// What one recorded event should look like on the other side.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub event_id: Uuid,
    pub name: String,
    /// The payload exactly as stored in the table.
    pub payload: String,
    pub stream_key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub correlation_id: Option<Uuid>,
}

/// One outbox row's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub event_id: Uuid,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

pub struct Lite {
    pub pool: SqlitePool,
    pub table: String,
}

impl Lite {
    pub async fn new() -> Self {
        let dir = std::env::temp_dir().join("outbox-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.db", Uuid::new_v4()));
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        let table = format!("outbox_{}", &Uuid::new_v4().simple().to_string()[..12]);
        Self { pool, table }
    }

    pub fn builder(&self) -> OutboxBuilder<Sqlite> {
        Outbox::builder(self.pool.clone())
            .table(self.table.clone())
            .backoff(Backoff::none())
    }

    pub async fn outbox(&self) -> Outbox<Sqlite> {
        self.builder().build().await.unwrap()
    }

    /// Records `n` events in one transaction, alternating the two types,
    /// spread over `streams` stream keys, each with a few headers (one of
    /// them non-ASCII) and a correlation id on every third. Returns what the
    /// broker should receive, in record order.
    pub async fn record_mixed(
        &self,
        outbox: &Outbox<Sqlite>,
        n: i64,
        streams: i64,
    ) -> Vec<Expected> {
        let mut tx = self.pool.begin().await.unwrap();
        for i in 0..n {
            let mut meta = Metadata::new()
                .stream_key(format!("agg-{}", i % streams))
                .header("tenant", format!("t{}", i % 3))
                .header("seq", i.to_string());
            if i % 7 == 0 {
                meta = meta.header("note", "grüße \"quoted\" ✓");
            }
            if i % 3 == 0 {
                meta = meta.correlation_id(Uuid::now_v7());
            }
            let recording = if i % 2 == 0 {
                outbox
                    .record_with(
                        &mut *tx,
                        &InvoicePaid {
                            invoice_id: i,
                            amount_cents: i * 100,
                        },
                        meta,
                    )
                    .await
                    .unwrap()
            } else {
                outbox
                    .record_with(
                        &mut *tx,
                        &ParcelSent {
                            parcel: format!("p-{i}"),
                            note: "fragile: ünïcödé, \"quotes\", \\ backslash".to_owned(),
                        },
                        meta,
                    )
                    .await
                    .unwrap()
            };
            assert!(!recording.is_filtered());
        }
        tx.commit().await.unwrap();
        self.expected().await
    }

    /// Records `n` `InvoicePaid` events (one name: the relay hands them to
    /// the publisher as one batch) over `streams` stream keys.
    pub async fn record_paid(
        &self,
        outbox: &Outbox<Sqlite>,
        n: i64,
        streams: i64,
    ) -> Vec<Expected> {
        let mut tx = self.pool.begin().await.unwrap();
        let mut batch = outbox.batch();
        for i in 0..n {
            let event = InvoicePaid {
                invoice_id: i,
                amount_cents: i * 100,
            };
            let meta = Metadata::new()
                .stream_key(format!("agg-{}", i % streams))
                .header("seq", i.to_string());
            assert!(!batch.push_with(&event, meta).unwrap().is_filtered());
        }
        batch.record(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        self.expected().await
    }

    /// Every pending row as the broker should receive it, in record order.
    pub async fn expected(&self) -> Vec<Expected> {
        let sql = format!(
            "SELECT event_id, name, payload, stream_key, headers, correlation_id FROM \"{}\" ORDER BY id",
            self.table
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Expected {
                event_id: r.get::<String, _>("event_id").parse().unwrap(),
                name: r.get("name"),
                payload: r.get("payload"),
                stream_key: r.get("stream_key"),
                headers: serde_json::from_str(&r.get::<String, _>("headers")).unwrap(),
                correlation_id: r
                    .get::<Option<String>, _>("correlation_id")
                    .map(|s| s.parse().unwrap()),
            })
            .collect()
    }

    pub async fn rows(&self) -> Vec<Row> {
        let sql = format!(
            "SELECT event_id, status, attempts, last_error FROM \"{}\" ORDER BY id",
            self.table
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Row {
                event_id: r.get::<String, _>("event_id").parse().unwrap(),
                status: r.get("status"),
                attempts: r.get("attempts"),
                last_error: r.get("last_error"),
            })
            .collect()
    }

    pub async fn done(self) {
        self.pool.close().await;
    }
}
