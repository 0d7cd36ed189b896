//! One room's recent messages: the in-memory ring that welcomes, `entered`
//! replies and `history` pages are served from.
//!
//! This is the whole history API a room uses (append a message with its id;
//! read newest-first with a `since` or `before` bound). With storage on, the
//! room writes each message through to the store, and the ring remembers
//! whether the store holds messages older than its own
//! ([`older_than_ring`](History::older_than_ring)): a page reaching past
//! the ring then continues from the store's reader thread.

use std::collections::VecDeque;
use std::sync::Arc;

/// A room message as the JSON object text that was broadcast.
pub type Stored = (u64, Arc<str>);

/// The newest `cap` messages of one room, oldest first; ids increase.
#[derive(Debug, Default)]
pub struct History {
    ring: VecDeque<Stored>,
    cap: usize,
    /// Messages ever appended (a room that had messages is kept when its
    /// last member leaves, even when `cap` is 0).
    appended: u64,
    /// The store holds messages of this room older than the ring's oldest.
    older_in_store: bool,
}

/// Which messages a read wants.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// Everything.
    All,
    /// Ids greater than this (a resume: `join`/`enter` with `since`).
    Since(u64),
    /// Ids less than this (`history` with `before`).
    Before(u64),
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self {
            ring: VecDeque::new(),
            cap,
            appended: 0,
            older_in_store: false,
        }
    }

    /// Starts from the newest stored messages (`ring`, oldest first, at
    /// most `cap`) and whether the store holds older ones.
    pub fn load(&mut self, mut ring: Vec<Stored>, older: bool) {
        let excess = ring.len().saturating_sub(self.cap);
        self.older_in_store = older || excess > 0;
        ring.drain(..excess);
        self.appended = ring.len() as u64 + u64::from(self.older_in_store);
        self.ring = ring.into();
    }

    /// Appends the message `id` (greater than every id before it);
    /// `stored`: the message was written through to the store, so one
    /// that leaves the ring can still be read from there.
    pub fn append(&mut self, id: u64, json: Arc<str>, stored: bool) {
        self.appended += 1;
        if self.cap == 0 {
            self.older_in_store |= stored;
            return;
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
            self.older_in_store |= stored;
        }
        self.ring.push_back((id, json));
    }

    /// True once any message was appended (or loaded from the store).
    pub fn is_used(&self) -> bool {
        self.appended > 0
    }

    /// Whether the store may hold messages newer than `since` (all, for
    /// `None`) that the ring no longer has. Ids are shared by every room,
    /// so this may say yes when none exist; paging then finds nothing.
    pub fn older_than_ring(&self, since: Option<u64>) -> bool {
        let oldest = self.ring.front().map_or(u64::MAX, |(id, _)| *id);
        self.older_in_store && since.map_or(true, |s| s.saturating_add(1) < oldest)
    }

    /// When the store holds messages older than the ring's: the id below
    /// which they are (the ring's oldest, or every id for an empty ring).
    pub fn oldest_on_disk_before(&self) -> Option<u64> {
        self.older_in_store
            .then(|| self.ring.front().map_or(u64::MAX, |(id, _)| *id))
    }

    /// The messages within `bound`, newest first.
    pub fn newest_first(&self, bound: Bound) -> impl Iterator<Item = &Stored> {
        self.ring.iter().rev().filter(move |(id, _)| match bound {
            Bound::All => true,
            Bound::Since(s) => *id > s,
            Bound::Before(b) => *id < b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_and_bounds_filter() {
        let mut h = History::new(3);
        assert!(!h.is_used());
        for id in [2, 5, 7, 9] {
            h.append(id, format!("{id}").into(), false);
        }
        let ids = |b| h.newest_first(b).map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(ids(Bound::All), [9, 7, 5]);
        assert_eq!(ids(Bound::Since(5)), [9, 7]);
        assert_eq!(ids(Bound::Before(9)), [7, 5]);
        let mut none = History::new(0);
        none.append(1, "x".into(), false);
        assert!(none.is_used());
        assert_eq!(none.newest_first(Bound::All).count(), 0);
        assert!(!h.older_than_ring(None));
    }

    #[test]
    fn a_stored_ring_knows_what_left_it() {
        let mut h = History::new(2);
        h.append(4, "4".into(), true);
        h.append(6, "6".into(), true);
        assert_eq!(h.oldest_on_disk_before(), None);
        h.append(8, "8".into(), true);
        assert_eq!(h.oldest_on_disk_before(), Some(6));
        assert!(h.older_than_ring(None));
        assert!(h.older_than_ring(Some(3)));
        // Everything after 5 is in the ring.
        assert!(!h.older_than_ring(Some(5)));
        let mut loaded = History::new(2);
        loaded.load(
            vec![(1, "1".into()), (2, "2".into()), (3, "3".into())],
            false,
        );
        assert!(loaded.is_used());
        assert_eq!(loaded.oldest_on_disk_before(), Some(2));
        let mut empty = History::new(0);
        empty.load(Vec::new(), true);
        assert_eq!(empty.oldest_on_disk_before(), Some(u64::MAX));
        assert!(empty.is_used());
    }
}
