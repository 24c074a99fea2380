//! The transactions that chain audit events: on a pooled connection of their own,
//! which goes back to the pool only when the transaction ended cleanly (committed or
//! rolled back) and is closed otherwise.
//!
//! Why not sqlx's `Transaction`: when SQLite rolls a transaction back by itself (an
//! I/O error, a full disk or memory running out inside a statement that keeps no
//! statement journal, as the chain's INSERTs do not: see `audit::insert_rows`),
//! sqlx's own ROLLBACK then fails, its count of open transactions stays at one, and
//! the pooled connection would later open `SAVEPOINT`s where it means `BEGIN`.
//! Closing the connection costs a reconnect after a failure, and nothing otherwise.
//!
//! On SQLite the transaction is `BEGIN IMMEDIATE`: it will write (the chain head),
//! and taking the write lock first means a read inside it can never be overtaken by
//! another connection's commit (`SQLITE_BUSY_SNAPSHOT`, which no wait resolves).

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};

use crate::Result;

pub(crate) struct ChainTx {
    conn: PoolConnection<Any>,
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
        // Open from here: a failed BEGIN closes the connection too.
        let mut tx = Self { conn, open: true };
        tx.conn().execute(begin).await?;
        Ok(tx)
    }

    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
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
        if self.open {
            self.conn.close_on_drop();
        }
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
    async fn a_transaction_the_database_ended_by_itself_never_comes_back_to_the_pool() -> Result<()>
    {
        let dir = tempfile::tempdir().map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        let pool = pool(dir.path()).await?;
        // SQLite ends the transaction on its own (as after a full disk inside a
        // statement): the commit fails, and the connection must not be reused as if
        // a transaction were still open.
        let mut tx = ChainTx::begin(&pool).await?;
        tx.conn().execute("INSERT INTO t (v) VALUES (1)").await?;
        tx.conn().execute("ROLLBACK").await?;
        assert!(tx.commit().await.is_err());
        // Dropped without ending it: its connection is closed too.
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
        Ok(())
    }
}
