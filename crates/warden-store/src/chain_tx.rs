//! The transactions that chain audit events, begun and ended with plain SQL on a
//! pooled connection of their own.
//!
//! Why not sqlx's `Transaction`: when SQLite rolls a transaction back by itself (an
//! I/O error, a full disk or memory running out inside a statement that keeps no
//! statement journal, as the chain's INSERTs do not: see `audit::insert_rows`),
//! sqlx's own ROLLBACK then fails, its count of open transactions stays at one, and
//! the pooled connection would later open `SAVEPOINT`s where it means `BEGIN`. Here
//! nothing counts: a transaction left open (an error, an early return, a cancelled
//! future) is rolled back before its connection goes back to the pool, and a
//! ROLLBACK that finds no transaction (the database ended it) leaves the connection
//! as clean as one that did. Any other failure closes the connection instead.
//!
//! On SQLite the transaction is `BEGIN IMMEDIATE`: it will write (the chain head),
//! and taking the write lock first means a read inside it can never be overtaken by
//! another connection's commit (`SQLITE_BUSY_SNAPSHOT`, which no wait resolves).

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};

use crate::Result;

pub(crate) struct ChainTx {
    /// Always present until the transaction is dropped.
    conn: Option<PoolConnection<Any>>,
    /// Begun and not yet committed or rolled back.
    open: bool,
}

impl ChainTx {
    pub(crate) async fn begin(pool: &AnyPool) -> Result<Self> {
        let conn = pool.acquire().await?;
        let begin = if conn.backend_name() == "SQLite" {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        };
        let mut tx = Self {
            conn: Some(conn),
            open: false,
        };
        tx.conn().execute(begin).await?;
        tx.open = true;
        Ok(tx)
    }

    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        match &mut self.conn {
            Some(conn) => conn,
            // Taken only by `drop`, after which nothing can call this.
            None => unreachable!("a chain transaction's connection is used after its drop"),
        }
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        self.conn().execute("COMMIT").await?;
        self.open = false;
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        self.conn().execute("ROLLBACK").await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for ChainTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.open {
            return; // Back to the pool as it is: no transaction.
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.close_on_drop();
            return;
        };
        runtime.spawn(async move {
            match conn.execute("ROLLBACK").await {
                Ok(_) => {}
                // SQLite's answer when it ended the transaction itself.
                Err(e) if e.to_string().contains("no transaction is active") => {}
                Err(e) => {
                    tracing::warn!(error = %e, "a store connection whose transaction could not be rolled back is closed");
                    conn.close_on_drop();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    /// A pool of one connection, so that the one after a failure is the only one.
    async fn pool(dir: &std::path::Path) -> Result<AnyPool> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        pool.execute("CREATE TABLE t (v BIGINT NOT NULL)").await?;
        Ok(pool)
    }

    async fn count(pool: &AnyPool) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM t")
            .fetch_one(pool)
            .await?
            .try_get("n")?)
    }

    #[tokio::test]
    async fn a_transaction_left_open_or_ended_by_the_database_comes_back_clean() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        let pool = pool(dir.path()).await?;
        // Lives as long as the pool's one connection: it shows the connection is
        // given back, not closed and replaced.
        pool.execute("CREATE TEMP TABLE same_connection (x BIGINT)")
            .await?;
        // SQLite ends the transaction on its own (as after a full disk inside a
        // statement): the commit fails, and the connection is usable as it is.
        let mut tx = ChainTx::begin(&pool).await?;
        tx.conn().execute("INSERT INTO t (v) VALUES (1)").await?;
        tx.conn().execute("ROLLBACK").await?;
        assert!(tx.commit().await.is_err());
        // Dropped without ending it (an error, a cancelled future): rolled back
        // before the pool's one connection is handed out again.
        let mut tx = ChainTx::begin(&pool).await?;
        tx.conn().execute("INSERT INTO t (v) VALUES (2)").await?;
        drop(tx);
        assert_eq!(count(&pool).await?, 0);
        // The next transactions are real ones: a rollback undoes, a commit keeps.
        let mut tx = ChainTx::begin(&pool).await?;
        tx.conn().execute("INSERT INTO t (v) VALUES (3)").await?;
        tx.rollback().await?;
        let mut tx = ChainTx::begin(&pool).await?;
        tx.conn().execute("INSERT INTO t (v) VALUES (4)").await?;
        tx.commit().await?;
        assert_eq!(count(&pool).await?, 1);
        pool.execute("SELECT x FROM same_connection").await?;
        Ok(())
    }
}
