//! One room's recent messages: the in-memory ring that welcomes, `entered`
//! replies and `history` pages are served from.
//!
//! This is the whole history API a room uses (append a message with its id;
//! read newest-first with a `since` or `before` bound), kept in one place so
//! a persistent store can sit behind the same calls: `append` is where a
//! message is written through, and `newest_first` is where a page that
//! reaches past the ring would continue from the store (`// store hook`).

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
        }
    }

    /// Appends the message `id` (greater than every id before it).
    pub fn append(&mut self, id: u64, json: Arc<str>) {
        // store hook: write-through of a room message (id, JSON) goes here.
        self.appended += 1;
        if self.cap == 0 {
            return;
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back((id, json));
    }

    /// True once any message was appended.
    pub fn is_used(&self) -> bool {
        self.appended > 0
    }

    /// The messages within `bound`, newest first.
    pub fn newest_first(&self, bound: Bound) -> impl Iterator<Item = &Stored> {
        // store hook: a page that reaches past the ring's oldest id would
        // continue from the store here.
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
            h.append(id, format!("{id}").into());
        }
        let ids = |b| h.newest_first(b).map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(ids(Bound::All), [9, 7, 5]);
        assert_eq!(ids(Bound::Since(5)), [9, 7]);
        assert_eq!(ids(Bound::Before(9)), [7, 5]);
        let mut none = History::new(0);
        none.append(1, "x".into());
        assert!(none.is_used());
        assert_eq!(none.newest_first(Bound::All).count(), 0);
    }
}
