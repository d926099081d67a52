//! [`Follow`]: a cursor that watches entries arrive (what `outbox tail`
//! shows).

use std::fmt;

use crate::error::Result;
use crate::handle::Outbox;
use crate::store::{Backend, FollowCursor, Followed};

/// Watches entries arrive in an outbox table: each
/// [`next`](Follow::next) hands over the entries that arrived since the
/// previous one, and the pending count, read from one snapshot. Made by
/// [`Outbox::follow`]. It only reads.
///
/// What "arrived" means differs by database:
///
/// - **PostgreSQL** follows commits: an entry arrives when its transaction
///   commits (the row's `xid`, compared with the previous read's
///   snapshot), whatever its position. An entry whose transaction commits
///   after a later-numbered one is still seen, at the next read after its
///   commit, once. Each read looks only at pending and dead entries (through
///   their partial indexes) and at entries published since the previous
///   read (through the published index), never at older published ones.
/// - **SQLite** follows positions: writers take turns, so positions are
///   handed out in commit order and reading past the last position seen
///   misses nothing.
/// - **MySQL/MariaDB** follows positions (`id >` the last one seen, an index
///   range). An auto-increment id is taken at insert, not at commit, so an
///   entry whose transaction commits after a later-numbered entry was seen
///   is missed.
///
/// Everywhere, an entry is seen only if it is still in the table when the
/// next read after its commit runs: one published and deleted in between
/// (the default without [`keep_published`](crate::OutboxBuilder::keep_published))
/// is never seen. If a read fails after it handed over some entries, they
/// may be handed over again by the next one.
pub struct Follow<DB: Backend> {
    outbox: Outbox<DB>,
    cursor: FollowCursor,
    started_after: i64,
    pending_at_start: u64,
}

impl<DB: Backend> fmt::Debug for Follow<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follow")
            .field("table", self.outbox.table())
            .field("started_after", &self.started_after)
            .finish_non_exhaustive()
    }
}

/// What one [`Follow::next`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowTick {
    /// Entries handed over.
    pub arrived: u64,
    /// Pending entries in the same snapshot.
    pub pending: u64,
}

impl<DB: Backend> Outbox<DB> {
    /// Starts following the table: everything committed now counts as
    /// seen; see [`Follow`].
    pub async fn follow(&self) -> Result<Follow<DB>> {
        let (cursor, pending) = DB::follow_start(&self.inner.pool, &self.inner.sql).await?;
        Ok(Follow {
            outbox: self.clone(),
            started_after: cursor.after,
            pending_at_start: pending,
            cursor,
        })
    }
}

impl<DB: Backend> Follow<DB> {
    /// The highest position committed when following started.
    #[must_use]
    pub fn started_after(&self) -> i64 {
        self.started_after
    }

    /// The pending count when following started.
    #[must_use]
    pub fn pending_at_start(&self) -> u64 {
        self.pending_at_start
    }

    /// Hands `each` every entry that arrived since the previous read (or
    /// the start), in position order, reading them in pages from one
    /// snapshot, and returns how many there were and the pending count in
    /// that snapshot.
    pub async fn next(&mut self, mut each: impl FnMut(Followed) + Send) -> Result<FollowTick> {
        let mut arrived = 0;
        let inner = &self.outbox.inner;
        let pending = DB::follow_next(&inner.pool, &inner.sql, &mut self.cursor, |entry| {
            arrived += 1;
            each(entry);
        })
        .await?;
        Ok(FollowTick { arrived, pending })
    }
}
