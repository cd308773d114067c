//! Live subscriptions and the in-memory tail of each server's log. Loop side.
//!
//! A [`Feed`] exists for a server while anyone is subscribed to it or a SUBSCRIBE for it
//! is being read. From its creation it records every delta published for the server in
//! its tail (the last `tail_len`, remembering the highest id it has dropped). That gives
//! the hand-over from catch-up to live delivery without a gap or a duplicate:
//!
//! - a catch-up page read from storage saw every delta committed before it was read, so
//!   when it is the last page (`has_more` false) every newer delta is either already
//!   published — and then in the tail, unless dropped — or not yet published, and then it
//!   will arrive live;
//! - each subscription keeps a cursor, and nothing at or below it is ever sent again.
//!
//! So a subscription goes live once its last page is in and the tail still holds
//! everything after its cursor; otherwise it reads another page. Pages are read only while
//! the connection's output is below a low-water mark, so a client far behind costs one
//! page of memory at a time.
//!
//! A live subscriber whose output is over the limit stops receiving (lagged); when its
//! output has drained it gets a `SYNC` notice and the subscription ends.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::json;
use slab::Slab;

use super::delta::{Ends, Published};
use super::log::Page;
use crate::conn::Conn;
use crate::protocol::encode_push;

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Reading pages from storage; `fetching` while a page read is in flight.
    CatchingUp {
        fetching: bool,
    },
    Live,
    /// Dropped from live delivery for reading too slowly; gets a SYNC notice once drained.
    Lagged,
}

/// One connection's subscription to one server.
#[derive(Debug, Clone)]
pub struct Sub {
    pub server_id: i64,
    /// The last delta id sent (or the starting cursor): nothing at or below it is sent.
    pub cursor: i64,
    pub state: SubState,
    /// The log's head when membership was checked: a `member_left` for this user at or
    /// below it is history (the user has since rejoined), one above it ends the subscription.
    pub member_since: i64,
    pub user_id: i64,
}

#[derive(Debug, Default)]
pub struct Feed {
    subscribers: Vec<usize>,
    pending: usize,
    tail: VecDeque<Published>,
    evicted_max: i64,
    last_published: i64,
}

/// A catch-up page to read for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub key: usize,
    pub server_id: i64,
    pub after: i64,
}

#[derive(Debug)]
pub struct Feeds {
    map: HashMap<i64, Feed>,
    tail_len: usize,
}

fn sync_notice(server_id: i64, head: i64) -> Vec<u8> {
    encode_push(
        "SYNC",
        &json!({"server_id": server_id.to_string(), "server_delta_id": head}),
    )
}

/// Whether this delta, once delivered, ends `sub`.
fn ends(p: &Published, sub: &Sub) -> bool {
    match p.ends {
        Ends::Nobody => false,
        Ends::Everyone => true,
        Ends::User(u) => u == sub.user_id && p.delta_id > sub.member_since,
    }
}

impl Feeds {
    pub fn new(tail_len: usize) -> Feeds {
        Feeds {
            map: HashMap::new(),
            tail_len: tail_len.max(1),
        }
    }

    /// Number of servers with a feed (for metrics).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A SUBSCRIBE read is about to be queued: the feed must record from now on.
    pub fn begin_subscribe(&mut self, server_id: i64) {
        self.map.entry(server_id).or_default().pending += 1;
    }

    /// The SUBSCRIBE read failed or its connection is gone.
    pub fn abort_subscribe(&mut self, server_id: i64) {
        if let Some(f) = self.map.get_mut(&server_id) {
            f.pending = f.pending.saturating_sub(1);
        }
        self.drop_if_unused(server_id);
    }

    fn drop_if_unused(&mut self, server_id: i64) {
        if self
            .map
            .get(&server_id)
            .is_some_and(|f| f.subscribers.is_empty() && f.pending == 0)
        {
            self.map.remove(&server_id);
        }
    }

    /// Starts a subscription. Returns the `server_delta_id` to answer and, for a
    /// subscription with a cursor, the first page to [`Feeds::deliver`] after the answer.
    pub fn subscribed(&mut self, conns: &mut Slab<Conn>, key: usize, user_id: i64, page: Page) -> (i64, Option<Page>) {
        let server_id = page.server_id;
        let head = page.head;
        self.end(conns, key, server_id);
        let Some(feed) = self.map.get_mut(&server_id) else {
            return (head, None);
        };
        feed.pending = feed.pending.saturating_sub(1);
        let Some(conn) = conns.get_mut(key) else {
            self.drop_if_unused(server_id);
            return (head, None);
        };
        let (cursor, state) = match page.after {
            None => (page.head.max(feed.last_published), SubState::Live),
            Some(c) => (c, SubState::CatchingUp { fetching: false }),
        };
        feed.subscribers.push(key);
        conn.subs.push(Sub {
            server_id,
            cursor,
            state,
            member_since: page.head,
            user_id,
        });
        match page.after {
            Some(_) => (head, Some(page)),
            None => (cursor, None),
        }
    }

    /// The next catch-up page arrived.
    pub fn caught_up(&mut self, conns: &mut Slab<Conn>, key: usize, page: Page, touched: &mut Vec<usize>) {
        let Some(conn) = conns.get_mut(key) else { return };
        let Some(sub) = conn.subs.iter_mut().find(|s| s.server_id == page.server_id) else {
            return;
        };
        if sub.state != (SubState::CatchingUp { fetching: true }) {
            return;
        }
        sub.state = SubState::CatchingUp { fetching: false };
        self.deliver(conns, key, page, touched);
    }

    /// Sends a page's deltas past the cursor, then goes live if the tail now covers the rest.
    pub fn deliver(&mut self, conns: &mut Slab<Conn>, key: usize, page: Page, touched: &mut Vec<usize>) {
        let server_id = page.server_id;
        let Some(conn) = conns.get_mut(key) else { return };
        let Some(idx) = conn.subs.iter().position(|s| s.server_id == server_id) else {
            return;
        };
        let mut ended = false;
        for p in &page.deltas {
            let sub = &mut conn.subs[idx];
            if p.delta_id <= sub.cursor {
                continue;
            }
            sub.cursor = p.delta_id;
            let last = ends(p, sub);
            conn.push_shared(p.frame.clone());
            if last {
                ended = true;
                break;
            }
        }
        touched.push(key);
        if ended {
            return self.end(conns, key, server_id);
        }
        let Some(feed) = self.map.get(&server_id) else { return };
        let cursor = conn.subs[idx].cursor;
        if page.has_more || feed.evicted_max > cursor {
            return; // more to read from storage; the pump asks when output has room
        }
        for p in feed.tail.iter().filter(|p| p.delta_id > cursor) {
            let sub = &mut conn.subs[idx];
            sub.cursor = p.delta_id;
            let last = ends(p, sub);
            conn.push_shared(p.frame.clone());
            if last {
                ended = true;
                break;
            }
        }
        if ended {
            return self.end(conns, key, server_id);
        }
        conn.subs[idx].state = SubState::Live;
    }

    /// A committed delta: into the tail, and to every live subscriber past its cursor.
    /// Returns whether some receiver's output is now past half its limit: the loop then
    /// flushes before publishing more, so a burst (a whole group-commit batch) does not cut
    /// off a reader that is only one burst behind.
    pub fn publish(
        &mut self,
        conns: &mut Slab<Conn>,
        p: &Published,
        max_output: usize,
        now: Instant,
        touched: &mut Vec<usize>,
    ) -> bool {
        let Some(feed) = self.map.get_mut(&p.server_id) else {
            return false;
        };
        let mut filling = false;
        feed.tail.push_back(p.clone());
        if feed.tail.len() > self.tail_len {
            if let Some(old) = feed.tail.pop_front() {
                feed.evicted_max = old.delta_id;
            }
        }
        feed.last_published = feed.last_published.max(p.delta_id);
        let mut ended = Vec::new();
        for &key in &feed.subscribers {
            let Some(conn) = conns.get_mut(key) else { continue };
            let Some(sub) = conn.subs.iter_mut().find(|s| s.server_id == p.server_id) else {
                continue;
            };
            if sub.state != SubState::Live || p.delta_id <= sub.cursor {
                continue;
            }
            if conn.out.len() >= max_output {
                sub.state = SubState::Lagged;
                conn.lagged_since.get_or_insert(now);
                continue;
            }
            sub.cursor = p.delta_id;
            let last = ends(p, sub);
            conn.push_shared(p.frame.clone());
            filling |= conn.out.len() >= max_output / 2;
            touched.push(key);
            if last {
                ended.push(key);
            }
        }
        for key in ended {
            self.end(conns, key, p.server_id);
        }
        filling
    }

    /// Ends a connection's subscription to a server, if any.
    pub fn end(&mut self, conns: &mut Slab<Conn>, key: usize, server_id: i64) {
        if let Some(conn) = conns.get_mut(key) {
            conn.subs.retain(|s| s.server_id != server_id);
        }
        if let Some(feed) = self.map.get_mut(&server_id) {
            if let Some(i) = feed.subscribers.iter().position(|k| *k == key) {
                feed.subscribers.swap_remove(i);
            }
        }
        self.drop_if_unused(server_id);
    }

    /// Ends every subscription of a connection (it closed, or its session ended).
    pub fn end_all(&mut self, conns: &mut Slab<Conn>, key: usize) {
        let servers: Vec<i64> = conns
            .get(key)
            .map(|c| c.subs.iter().map(|s| s.server_id).collect())
            .unwrap_or_default();
        for server_id in servers {
            self.end(conns, key, server_id);
        }
    }

    /// After a flush: lagged subscriptions of a drained connection get their SYNC notice
    /// and end (returns true: there is new output to flush); catching-up ones with room for
    /// a page return a page to read.
    pub fn after_flush(
        &mut self,
        conns: &mut Slab<Conn>,
        key: usize,
        low_water: usize,
        fetch: &mut Vec<Fetch>,
    ) -> bool {
        let mut notified = false;
        let Some(conn) = conns.get_mut(key) else { return false };
        if conn.out.is_empty() && conn.lagged_since.is_some() {
            conn.lagged_since = None;
            let lagged: Vec<(i64, i64)> = conn
                .subs
                .iter()
                .filter(|s| s.state == SubState::Lagged)
                .map(|s| (s.server_id, s.cursor))
                .collect();
            for (server_id, cursor) in lagged {
                let head = self
                    .map
                    .get(&server_id)
                    .map_or(cursor, |f| f.last_published.max(cursor));
                if let Some(c) = conns.get_mut(key) {
                    c.push_frame(sync_notice(server_id, head));
                    notified = true;
                }
                self.end(conns, key, server_id);
            }
        }
        let Some(conn) = conns.get_mut(key) else {
            return notified;
        };
        if conn.out.len() >= low_water {
            return notified;
        }
        for sub in conn.subs.iter_mut() {
            if sub.state == (SubState::CatchingUp { fetching: false }) {
                sub.state = SubState::CatchingUp { fetching: true };
                fetch.push(Fetch {
                    key,
                    server_id: sub.server_id,
                    after: sub.cursor,
                });
            }
        }
        notified
    }

    /// A catch-up read could not be done: tell the client to SYNC, end the subscription.
    pub fn catch_up_failed(&mut self, conns: &mut Slab<Conn>, key: usize, server_id: i64, touched: &mut Vec<usize>) {
        let Some(conn) = conns.get_mut(key) else { return };
        let Some(sub) = conn.subs.iter().find(|s| s.server_id == server_id) else {
            return;
        };
        let head = self
            .map
            .get(&server_id)
            .map_or(sub.cursor, |f| f.last_published.max(sub.cursor));
        conn.push_frame(sync_notice(server_id, head));
        touched.push(key);
        self.end(conns, key, server_id);
    }

    /// Live subscribers of a server (for TYPING and VOICE_STATE pushes).
    pub fn live_subscribers(&self, conns: &Slab<Conn>, server_id: i64) -> Vec<usize> {
        let Some(feed) = self.map.get(&server_id) else {
            return Vec::new();
        };
        feed.subscribers
            .iter()
            .copied()
            .filter(|k| {
                conns.get(*k).is_some_and(|c| {
                    c.subs
                        .iter()
                        .any(|s| s.server_id == server_id && s.state == SubState::Live)
                })
            })
            .collect()
    }
}
