//! Applying a stream to the database: exactly once, in order, never skipping.
//!
//! Each write carries `(source, seq)` with the stream's source name and the number of the last
//! message it contains, so the engine stores the position in the same atomic batch as the data:
//! after any crash the database holds a prefix of the stream and the position of that prefix.
//! Consecutive event messages are merged into one append (one RocksDB batch), which is what makes
//! applying fast; a delete is applied on its own, in its place.

use siren_engine::{AppendOptions, AppendOutcome, Db, Durability, Event, Item};

use crate::codec::LogRecord;
use crate::error::{Error, Result};
use crate::log::{LogEntry, StreamId};
use crate::partition::partition_of;

/// One database write made from one or more consecutive messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Append { events: Vec<Event>, seq: u64 },
    Delete { users: Vec<u64>, seq: u64 },
    Upsert { items: Vec<Item>, seq: u64 },
}

impl Op {
    pub fn seq(&self) -> u64 {
        match self {
            Op::Append { seq, .. } | Op::Delete { seq, .. } | Op::Upsert { seq, .. } => *seq,
        }
    }
}

/// Turns messages read from `stream` into writes, checking that they follow `applied` without a
/// hole and belong to the stream. `partitions` is the cluster's partition count; `max_events`
/// bounds one append.
pub fn plan(
    stream: StreamId,
    partitions: u32,
    applied: u64,
    entries: &[LogEntry],
    max_events: usize,
) -> Result<Vec<Op>> {
    let mut ops: Vec<Op> = Vec::new();
    let mut expect = applied + 1;
    for entry in entries {
        if entry.seq < expect {
            // Delivered again (a consumer re-created after a failure): already applied.
            continue;
        }
        if entry.seq > expect {
            return Err(match stream {
                StreamId::Partition(partition) => Error::Gap {
                    partition,
                    stored: expect - 1,
                    first: entry.seq,
                },
                StreamId::Catalog => Error::corrupt(
                    "catalog stream",
                    format!(
                        "message {} follows {}: messages are missing",
                        entry.seq,
                        expect - 1
                    ),
                ),
            });
        }
        expect += 1;
        let what = format!("{stream} message {}", entry.seq);
        let record = LogRecord::decode(&entry.payload, &what)?;
        check_belongs(stream, partitions, &record, &what)?;
        let seq = entry.seq;
        match (ops.last_mut(), record) {
            (Some(Op::Append { events, seq: last }), LogRecord::Events(more))
                if events.len() + more.len() <= max_events =>
            {
                events.extend(more);
                *last = seq;
            }
            (Some(Op::Upsert { items, seq: last }), LogRecord::Items(more)) => {
                items.extend(more);
                *last = seq;
            }
            (_, LogRecord::Events(events)) => ops.push(Op::Append { events, seq }),
            (_, LogRecord::DeleteUsers(users)) => ops.push(Op::Delete { users, seq }),
            (_, LogRecord::Items(items)) => ops.push(Op::Upsert { items, seq }),
        }
    }
    Ok(ops)
}

/// A record on the wrong stream, or a user on the wrong partition's stream, would be stored
/// where no read looks for it: it is refused, like a corrupt message.
fn check_belongs(stream: StreamId, partitions: u32, record: &LogRecord, what: &str) -> Result<()> {
    let wrong = |detail: String| Err(Error::corrupt(what, detail));
    match (stream, record) {
        (StreamId::Catalog, LogRecord::Items(_)) => Ok(()),
        (StreamId::Catalog, _) => wrong("only items belong on the catalog stream".into()),
        (StreamId::Partition(_), LogRecord::Items(_)) => {
            wrong("items belong on the catalog stream".into())
        }
        (StreamId::Partition(p), LogRecord::Events(events)) => {
            match events
                .iter()
                .find(|e| partition_of(e.user, partitions) != p)
            {
                Some(e) => wrong(format!("user {} is not in partition {p}", e.user)),
                None => Ok(()),
            }
        }
        (StreamId::Partition(p), LogRecord::DeleteUsers(users)) => {
            match users.iter().find(|u| partition_of(**u, partitions) != p) {
                Some(u) => wrong(format!("user {u} is not in partition {p}")),
                None => Ok(()),
            }
        }
    }
}

/// Applies one write; returns the stream position the database holds afterwards.
pub fn apply(db: &Db, stream: StreamId, op: &Op, durability: Durability) -> Result<u64> {
    let opts = AppendOptions {
        durability,
        source: Some((stream.source_name(), op.seq())),
    };
    let outcome = match op {
        Op::Append { events, .. } => db.append(events, &opts)?,
        Op::Delete { users, .. } => db.delete_users(users, &opts)?,
        Op::Upsert { items, .. } => db.upsert_items_from(items, &opts)?,
    };
    Ok(match outcome {
        AppendOutcome::Applied { .. } => op.seq(),
        AppendOutcome::Duplicate { last_applied } => last_applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(seq: u64, r: LogRecord) -> LogEntry {
        LogEntry {
            seq,
            payload: Bytes::from(r.encode()),
        }
    }

    fn user_in(p: u32, n: u32) -> u64 {
        (0..).find(|u| partition_of(*u, n) == p).unwrap()
    }

    fn ev(user: u64, ts: i64) -> Event {
        Event {
            user,
            ts,
            item: 1,
            action: 0,
            domain: 0,
        }
    }

    #[test]
    fn consecutive_appends_merge_and_deletes_keep_their_place() {
        let u = user_in(2, 4);
        let s = StreamId::Partition(2);
        let entries = [
            entry(5, LogRecord::Events(vec![ev(u, 1)])),
            entry(6, LogRecord::Events(vec![ev(u, 2)])),
            entry(7, LogRecord::DeleteUsers(vec![u])),
            entry(8, LogRecord::Events(vec![ev(u, 3)])),
        ];
        let ops = plan(s, 4, 4, &entries, 100).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Append {
                    events: vec![ev(u, 1), ev(u, 2)],
                    seq: 6
                },
                Op::Delete {
                    users: vec![u],
                    seq: 7
                },
                Op::Append {
                    events: vec![ev(u, 3)],
                    seq: 8
                },
            ]
        );
        // Already applied messages are skipped, a bounded append splits.
        let ops = plan(s, 4, 5, &entries[..2], 100).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(plan(s, 4, 4, &entries[..2], 1).unwrap().len(), 2);
    }

    #[test]
    fn holes_strangers_and_damage_are_refused() {
        let u = user_in(1, 4);
        let s = StreamId::Partition(1);
        let gap = plan(s, 4, 3, &[entry(5, LogRecord::Events(vec![ev(u, 1)]))], 10);
        assert!(matches!(
            gap,
            Err(Error::Gap {
                partition: 1,
                stored: 3,
                first: 5
            })
        ));
        let stranger = user_in(0, 4);
        let wrong = plan(
            s,
            4,
            0,
            &[entry(1, LogRecord::Events(vec![ev(stranger, 1)]))],
            10,
        );
        assert!(matches!(wrong, Err(Error::Corrupt { .. })));
        let items = plan(s, 4, 0, &[entry(1, LogRecord::Items(vec![]))], 10);
        assert!(matches!(items, Err(Error::Corrupt { .. })));
        let mut bad = entry(1, LogRecord::Events(vec![ev(u, 1)]));
        let mut bytes = bad.payload.to_vec();
        bytes[12] ^= 1;
        bad.payload = Bytes::from(bytes);
        assert!(matches!(
            plan(s, 4, 0, &[bad], 10),
            Err(Error::Corrupt { .. })
        ));
    }
}
