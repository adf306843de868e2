//! [`Snapshot`]: the read API. A snapshot sees the database exactly as it was when taken, for as
//! long as it is held, whatever writers and compactions do meanwhile.

use std::sync::Arc;

use crate::cache::DecodedCache;
use crate::catalog::{query_vec, ItemRef};
use crate::error::{Error, Result};
use crate::prefix::PrefixLayout;
use crate::retrieve::{self, HardHit, SoftHit};
use crate::state::State;
use crate::types::{Event, Item, Options, ReadRange, SemId};
use crate::view::{Retention, UserView, ViewConfig};

/// Settings every read needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadConfig {
    pub retention: Retention,
    pub layout: PrefixLayout,
    pub dim: usize,
    pub codebook_size: u32,
}

impl ReadConfig {
    /// The read settings of `opts`, which must already be valid; fails if the SemID layout does
    /// not fit the prefix key.
    pub fn new(opts: &Options) -> Result<ReadConfig> {
        let layout = PrefixLayout::new(opts.semid_levels, opts.semid_codebook_size);
        if !layout.fits() {
            return Err(Error::invalid(format!(
                "{} SemID levels of {} codes do not fit the 56-bit prefix key",
                opts.semid_levels, opts.semid_codebook_size
            )));
        }
        Ok(ReadConfig {
            retention: Retention {
                max_events: opts.max_events_per_user as usize,
                max_age_ms: opts.max_event_age_ms,
            },
            layout,
            dim: opts.embedding_dim as usize,
            codebook_size: opts.semid_codebook_size,
        })
    }

    /// Whether an upsert may store `it`: a SemID of the database's levels and codebook, an
    /// embedding of its dimension with finite values.
    pub fn check_item(&self, it: &Item) -> Result<()> {
        if let Some(s) = &it.semid {
            self.check_semid(s)?;
        }
        if let Some(e) = &it.embedding {
            query_vec(e, self.dim)
                .map_err(|err| Error::invalid(format!("item {}: {err}", it.id)))?;
        }
        Ok(())
    }

    pub fn check_semid(&self, s: &SemId) -> Result<()> {
        if s.levels() != usize::from(self.layout.levels) {
            return Err(Error::invalid(format!(
                "SemID {s:?} has {} levels, the database uses {}",
                s.levels(),
                self.layout.levels
            )));
        }
        if let Some(c) = s
            .codes()
            .iter()
            .find(|&&c| u32::from(c) >= self.codebook_size)
        {
            return Err(Error::invalid(format!(
                "SemID code {c} is outside the codebook of {}",
                self.codebook_size
            )));
        }
        Ok(())
    }
}

impl Options {
    /// Whether a database with these options accepts `item` in an upsert (SemID levels and
    /// codebook, embedding dimension, finite values): the check [`crate::Db::upsert_items`]
    /// makes, for writers that queue items for a database elsewhere.
    pub fn check_item(&self, item: &Item) -> Result<()> {
        ReadConfig::new(self)?.check_item(item)
    }
}

fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid("k must be at least 1"));
    }
    Ok(())
}

/// What a user's visible history as of some time is made of, in a few numbers: equal stamps
/// (from snapshots of one open database) mean the same events in the same order, whose items
/// have the same catalog rows, so anything computed from those events and rows can be reused
/// under its stamp. Unequal stamps may still mean equal histories (a compaction, an upsert of
/// an unrelated item): reuse is then only missed, never wrong.
///
/// Why the numbers suffice: a user's events change only by an append (which adds pending
/// events), a compaction (which writes the user's entry under a segment number never reused
/// while the database is open), or a deletion (after which the user is born again, at a new
/// sequence number); the events visible as of a time are positions `[s0, s1)` of the entry
/// and `[p0, p1)` of the pending events; every upsert that rewrites an existing catalog row
/// bumps the catalog's rewrite count, and every other adds a row (which an item that pending
/// events named before the catalog had it then has); and the database's instance number tells
/// two opens of one directory apart. So any upsert of a new item changes every stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryStamp {
    instance: u64,
    user: u64,
    /// `None` for a user without events.
    events: Option<UserStamp>,
    /// `[s0, s1, p0, p1]`: the visible positions of the entry and of the pending events.
    window: [usize; 4],
    catalog_rewrites: u64,
    /// A pending event may name an item the catalog has no row for; upserting that item adds
    /// a row (and rewrites none), which the events then refer to.
    catalog_rows: u32,
}

/// Which events a user holds: its birth, its compacted entry and how many are pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UserStamp {
    born: u64,
    /// The entry's segment and record.
    entry: Option<(u64, usize)>,
    pending: usize,
}

#[derive(Clone)]
pub struct Snapshot {
    /// The open database's number ([`crate::inner::next_instance`]).
    instance: u64,
    state: Arc<State>,
    cfg: ReadConfig,
    cache: Arc<DecodedCache>,
}

impl Snapshot {
    pub(crate) fn new(
        instance: u64,
        state: Arc<State>,
        cfg: ReadConfig,
        cache: Arc<DecodedCache>,
    ) -> Self {
        Snapshot {
            instance,
            state,
            cfg,
            cache,
        }
    }

    fn view_config(&self) -> ViewConfig<'_> {
        ViewConfig {
            catalog: &self.state.catalog,
            layout: self.cfg.layout,
            retention: self.cfg.retention,
            // A disabled cache is no cache: readers then take the paths that decode least.
            cache: self.cache.enabled().then_some(&*self.cache),
        }
    }

    fn view(&self, user: u64, as_of: Option<i64>) -> Result<Option<UserView<'_>>> {
        UserView::open(&self.state, user, self.view_config(), as_of)
    }

    /// A user's events within `range`, oldest first. An unknown user has no events.
    pub fn read(&self, user: u64, range: ReadRange) -> Result<Vec<Event>> {
        let Some(mut v) = self.view(user, range.as_of)? else {
            return Ok(Vec::new());
        };
        v.read_map(range.since, range.last, |e| Event {
            user,
            ts: e.ts,
            item: e.item,
            action: e.action,
            domain: e.domain,
        })
    }

    /// Number of events of `user` visible before `as_of` (all retained events without it).
    pub fn user_len(&self, user: u64, as_of: Option<i64>) -> Result<usize> {
        Ok(self.view(user, as_of)?.map_or(0, |v| v.len()))
    }

    /// What `user`'s events before `as_of` are made of, as a value that compares in constant
    /// time: see [`HistoryStamp`].
    pub fn history_stamp(&self, user: u64, as_of: Option<i64>) -> Result<HistoryStamp> {
        let us = self.state.users.get(&user);
        let view = match us {
            Some(us) => Some(UserView::of(us, user, self.view_config(), as_of)?),
            None => None,
        };
        Ok(HistoryStamp {
            instance: self.instance,
            user,
            events: us.map(|us| UserStamp {
                born: us.born,
                entry: us.entry.as_ref().map(|e| (e.segment.id, e.record)),
                pending: us.pending.len(),
            }),
            window: view.map_or([0; 4], |v| [v.s0, v.s1, v.p0, v.p1]),
            catalog_rewrites: self.state.catalog.emb_gen(),
            catalog_rows: self.state.catalog.len(),
        })
    }

    /// The `k` behaviours (before `as_of`) whose item SemID shares the longest prefix with
    /// `target`: longer prefixes first, most recent first within a prefix length. Behaviours
    /// sharing no prefix are not returned.
    pub fn retrieve_hard(
        &self,
        user: u64,
        target: &SemId,
        k: usize,
        as_of: Option<i64>,
    ) -> Result<Vec<HardHit>> {
        Ok(self
            .retrieve_hard_batch(user, std::slice::from_ref(target), k, as_of)?
            .pop()
            .unwrap_or_default())
    }

    /// [`Snapshot::retrieve_hard`] for many targets against one user; the user's data is read
    /// once.
    pub fn retrieve_hard_batch(
        &self,
        user: u64,
        targets: &[SemId],
        k: usize,
        as_of: Option<i64>,
    ) -> Result<Vec<Vec<HardHit>>> {
        check_k(k)?;
        for t in targets {
            self.cfg.check_semid(t)?;
        }
        match self.view(user, as_of)? {
            Some(mut v) if !v.is_empty() => retrieve::hard(&mut v, self.cfg.layout, targets, k),
            _ => Ok(vec![Vec::new(); targets.len()]),
        }
    }

    /// The `k` behaviours (before `as_of`) whose item embedding has the highest cosine with
    /// `target`, most recent first on equal similarity. Behaviours whose item has no embedding
    /// are not returned.
    pub fn retrieve_soft(
        &self,
        user: u64,
        target: &[f32],
        k: usize,
        as_of: Option<i64>,
    ) -> Result<Vec<SoftHit>> {
        Ok(self
            .retrieve_soft_batch(user, &[target], k, as_of)?
            .pop()
            .unwrap_or_default())
    }

    /// [`Snapshot::retrieve_soft`] for many targets against one user; the user's data is read
    /// once and each embedding is loaded once for all targets.
    pub fn retrieve_soft_batch<T: AsRef<[f32]>>(
        &self,
        user: u64,
        targets: &[T],
        k: usize,
        as_of: Option<i64>,
    ) -> Result<Vec<Vec<SoftHit>>> {
        check_k(k)?;
        let qs = targets
            .iter()
            .map(|t| query_vec(t.as_ref(), self.cfg.dim))
            .collect::<Result<Vec<_>>>()?;
        match self.view(user, as_of)? {
            Some(mut v) if !v.is_empty() => retrieve::soft(&mut v, &qs, k),
            _ => Ok(vec![Vec::new(); targets.len()]),
        }
    }

    /// A catalog item (its embedding dequantised), if the catalog holds it. Items known only
    /// from events (stubs) are not returned.
    pub fn item(&self, id: u64) -> Option<Item> {
        self.item_ref(id).map(|r| r.to_item())
    }

    /// [`Self::item`] as stored, borrowed from the snapshot: no copy, no dequantisation.
    pub fn item_ref(&self, id: u64) -> Option<ItemRef<'_>> {
        let c = &self.state.catalog;
        c.lookup(id)
            .filter(|&r| !c.is_stub(r))
            .map(|r| c.item_ref(r))
    }

    /// [`Self::items`] as stored, borrowed.
    pub fn item_refs(&self) -> impl Iterator<Item = ItemRef<'_>> + '_ {
        let c = &self.state.catalog;
        (0..c.len())
            .filter(|&r| !c.is_stub(r))
            .map(|r| c.item_ref(r))
    }

    /// Every catalog item (stubs excluded), in the order they were first stored.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        self.item_refs().map(|r| r.to_item())
    }

    /// All users with events, ascending.
    pub fn users(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.state.users.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn user_count(&self) -> usize {
        self.state.users.len()
    }
}
