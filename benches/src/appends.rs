//! Appends to a user with many pending (not yet compacted) events against appends to a user with
//! none: an append must not cost O(the user's pending events). Shared by the `append` bench and
//! the comparison command.

use std::hint::black_box;
use std::path::Path;

use siren_engine::{AppendOptions, Db, Durability, Event, Options};

/// Pending events of the hot user.
pub const HOT_PENDING: usize = 100_000;
/// Events appended one by one per measurement.
pub const APPENDED: usize = 1_000;
/// The hot user of [`hot_user_db`].
pub const HOT_USER: u64 = 1;

fn event(user: u64, ts: i64) -> Event {
    Event {
        user,
        ts,
        item: (ts as u64).wrapping_mul(2_654_435_761) % 50_000,
        action: 0,
        domain: 0,
    }
}

/// A database at `dir` without background compaction whose [`HOT_USER`] has [`HOT_PENDING`]
/// pending events at times `0..HOT_PENDING`.
pub fn hot_user_db(dir: &Path) -> siren_engine::Result<Db> {
    let db = Db::open(
        dir,
        Options {
            embedding_dim: 0,
            auto_compact: None,
            ..Options::default()
        },
    )?;
    let history: Vec<Event> = (0..HOT_PENDING as i64)
        .map(|t| event(HOT_USER, t))
        .collect();
    let opts = AppendOptions {
        durability: Durability::Unlogged,
        source: None,
    };
    for chunk in history.chunks(10_000) {
        db.append(chunk, &opts)?;
    }
    Ok(db)
}

/// [`APPENDED`] appends of one event each to `user`, from time `t0` on.
pub fn append_one_by_one(db: &Db, user: u64, t0: i64) {
    let opts = AppendOptions {
        durability: Durability::Buffered,
        source: None,
    };
    for i in 0..APPENDED as i64 {
        black_box(db.append(&[event(user, t0 + i)], &opts).expect("append"));
    }
}
