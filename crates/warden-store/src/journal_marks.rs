//! How far each journal run has been shipped: `journal.shipped/<run>` in the
//! gateway state, written in the transaction that chains the run's lines. Reading a
//! journal back (after a crash, or after a failed shipment) skips what its run's mark
//! covers, so events archived out of the store since are never chained a second time
//! (looking them up by id would not find them).

use crate::audit::append_in;
use crate::chain_tx::ChainTx;
use crate::fold::fold_outcomes;
use crate::{Result, Store};
use std::collections::HashMap;
use warden_core::Event;

const PREFIX: &str = "journal.shipped/";

impl Store {
    /// Chains `events` (each outcome folded into its statement where it can be, see
    /// [`fold_outcomes`]) and moves each `(run, seq)` mark up to `seq` (never down),
    /// in one transaction.
    pub(crate) async fn append_journal_batch(
        &self,
        events: Vec<Event>,
        marks: &[(String, u64)],
    ) -> Result<()> {
        let events = fold_outcomes(events);
        let _serial = self.audit_lock.lock().await;
        let mut db = ChainTx::begin(&self.pool).await?;
        append_in(db.conn(), events.iter()).await?;
        for (run, seq) in marks {
            sqlx::query(
                "INSERT INTO gateway_state (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = CASE \
                 WHEN CAST(excluded.value AS BIGINT) > CAST(gateway_state.value AS BIGINT) \
                 THEN excluded.value ELSE gateway_state.value END",
            )
            .bind(format!("{PREFIX}{run}"))
            .bind(seq.to_string())
            .execute(db.conn())
            .await?;
        }
        db.commit().await?;
        self.chained();
        Ok(())
    }

    /// The marks of `runs` that exist.
    pub(crate) async fn journal_marks(&self, runs: &[&str]) -> Result<HashMap<String, u64>> {
        let mut marks = HashMap::new();
        for run in runs {
            if let Some(value) = self.state(&format!("{PREFIX}{run}")).await?
                && let Ok(seq) = value.parse()
            {
                marks.insert((*run).to_string(), seq);
            }
        }
        Ok(marks)
    }

    /// Drops the marks of runs whose segments are gone.
    pub(crate) async fn forget_journal_marks(&self, runs: &[&str]) -> Result<()> {
        for run in runs {
            sqlx::query("DELETE FROM gateway_state WHERE key = $1")
                .bind(format!("{PREFIX}{run}"))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}
