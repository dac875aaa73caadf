//! Hard deletes of an outbox, through a delete log: a table the application's `AFTER DELETE` trigger
//! fills with the deleted row's key and a version above its last one (`delete_log_table`). Each pass
//! publishes a tombstone per log row, then removes the log rows with the same compare-and-clear as
//! the dirty flags: only the (key, version) published, in one transaction, after the publish
//! resolved. A crash in between publishes the tombstones again, which land once.
//!
//! ```sql
//! CREATE TABLE contacts_deleted (id TEXT, version INTEGER);
//! CREATE TRIGGER contacts_hard_delete AFTER DELETE ON contacts
//! BEGIN INSERT INTO contacts_deleted (id, version) VALUES (old.id, old.version + 1); END;
//! ```

use super::{clear_params, key_conditions, ClearKey, OutboxEngine, OutboxSource};
use crate::bus::{OutboundMessage, Publisher};
use crate::sources::rows::{now_rfc3339, poison, row_event, SqlValue};
use crate::sources::sqlite::{quote, read_rows, ReadRows};
use crate::sources::SourceError;

/// The SQL of a delete log.
pub(super) struct LogStatements {
    select_page: String,
    delete_row: String,
}

impl LogStatements {
    pub(super) fn new(log_table: &str, key_columns: &[String], version: &str) -> LogStatements {
        let table = quote(log_table);
        LogStatements {
            select_page: format!(
                "SELECT rowid AS __bqsync_rowid, * FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ),
            delete_row: format!("DELETE FROM {table} WHERE {}", key_conditions(key_columns, version)),
        }
    }
}

impl OutboxSource {
    /// Publishes the delete log's tombstones and clears what was published; returns events published.
    pub(super) async fn publish_deletes(&mut self, publisher: &dyn Publisher) -> Result<u64, SourceError> {
        let Some(statements) = self.log_statements.take() else { return Ok(0) };
        let result = self.drain_log(&statements, publisher).await;
        self.log_statements = Some(statements);
        result
    }

    async fn drain_log(&mut self, statements: &LogStatements, publisher: &dyn Publisher) -> Result<u64, SourceError> {
        let mut published = 0;
        let mut after = i64::MIN;
        while !self.shutdown.is_stopping() {
            let page = self.read_log_page(statements, after).await?;
            let Some(last) = page.rows.last() else { break };
            after = match last[0] {
                SqlValue::Integer(i) => i,
                _ => i64::MAX,
            };
            let (messages, keys) = self.tombstones(&page);
            let count = messages.len() as u64;
            publisher
                .publish(messages)
                .await
                .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
            // Only now, with the tombstones durable on the bus, may the log rows go.
            self.clear_log(statements, &keys).await?;
            published += count;
            if page.rows.len() < self.batch_rows {
                break;
            }
        }
        if published > 0 {
            tracing::info!(source = %self.config.name, deleted = published, "rows deleted at the source: tombstones published");
        }
        Ok(published)
    }

    async fn read_log_page(&mut self, statements: &LogStatements, after: i64) -> Result<ReadRows, SourceError> {
        let limit = self.batch_rows as i64;
        match self.engine {
            OutboxEngine::Sqlite => {
                let result = read_rows(self.sqlite()?, &statements.select_page, &[&after, &limit], limit as usize);
                result.map_err(|e| self.db_error(e))
            }
            OutboxEngine::Duckdb => {
                let file = self.duckdb();
                let page = file.read_page(&statements.select_page, after, limit).await;
                page.map_err(|e| self.db_error(e))
            }
        }
    }

    fn tombstones(&self, page: &ReadRows) -> (Vec<OutboundMessage>, Vec<ClearKey>) {
        let produced_at = now_rfc3339();
        let source_label =
            format!("outbox:{}/{}", self.config.name, self.config.delete_log_table.as_deref().unwrap_or("?"));
        let mut messages = Vec::with_capacity(page.rows.len());
        let mut keys = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            let columns = page.names.iter().skip(1).map(String::as_str).zip(row.iter().skip(1));
            let (payload, _ignored) = self.mapping.payload(columns);
            let fallback: [&[u8]; 1] = [self.config.name.as_bytes()];
            match row_event(&self.mapping, &payload, true, &fallback, &source_label, &produced_at) {
                Ok(event) => messages.push(event.message),
                Err((reason, detail)) => {
                    let text = serde_json::Value::Object(payload).to_string();
                    messages.push(poison(&self.mapping.table, text.as_bytes(), reason, detail, &source_label));
                }
            }
            keys.push(self.clear_key(&page.names, row));
        }
        (messages, keys)
    }

    async fn clear_log(&mut self, statements: &LogStatements, keys: &[ClearKey]) -> Result<(), SourceError> {
        match self.engine {
            OutboxEngine::Sqlite => {
                let connection = self.sqlite()?;
                let result = (|| -> rusqlite::Result<()> {
                    let tx = connection.unchecked_transaction()?;
                    {
                        let mut statement = tx.prepare_cached(&statements.delete_row)?;
                        for key in keys {
                            statement.execute(clear_params(key).as_slice())?;
                        }
                    }
                    tx.commit()
                })();
                result.map_err(|e| self.db_error(e))
            }
            OutboxEngine::Duckdb => {
                let file = self.duckdb();
                let result = file.delete_each(&statements.delete_row, keys).await;
                result.map_err(|e| self.db_error(e))
            }
        }
    }
}
