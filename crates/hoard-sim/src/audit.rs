//! The audit: the world's ledger of what players were told (acknowledged saves, trades, grants,
//! gifts), the event log, and the checks of the guarantees against durable state.
//!
//! Invariants:
//! - The audit only ever reads durable state straight from the inner store (never through a
//!   server's faulty link), and only records an acknowledgement after the strategy returned it,
//!   so a check can fail only if a strategy broke a promise it made.
//! - Every check holds at *any* instant for a correct engine (writes are whole profiles, trades
//!   and deposits are one commit), so the same checks run continuously and at the end.
//! - A violation is counted once per (kind, key) and carries the last events on its key
//!   (a bounded ring, `RING_EVENTS_PER_KEY`).
//! - Cross-server trades (G3 across servers): an item is in exactly one profile or one escrow
//!   document, coins are conserved counting escrows, an escrow leaves only into its receiver
//!   after `committed` or its giver after `aborted` (seen on every applied commit, checked
//!   against the observed record then, in apply order on memory, and the durable record), and
//!   once the world has settled no escrow and no pending mark is left (`check_settled`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use hoard::engine::TradeRecord;
use hoard::engine::trade::{Escrow, STATUS_ABORTED, STATUS_COMMITTED, TRADE_ESCROW_STORE, TRADE_RECORD_STORE};
use hoard::store::{Commit, CommitOutcome, Condition, DocId, LeaseOp, ValueOp, Write};
use serde::{Deserialize, Serialize};

use crate::model::{COINS, Names, SimProfile};

/// Recent events kept per key, printed with a violation on that key.
pub const RING_EVENTS_PER_KEY: usize = 24;
/// Violations kept with their details (all are counted).
pub const VIOLATION_DETAILS_MAX: usize = 64;
/// Events kept in the full log of one world (replay comparison); past it only a count grows.
pub const EVENT_LOG_LINES_MAX: usize = 1_000_000;

/// What the game was told about a gift it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiftAck {
    /// The send returned Ok: the gift must arrive exactly once.
    Sent,
    /// The outcome is unknown: at most once.
    Unknown,
    /// The send failed: it must never arrive.
    Failed,
}

/// One broken guarantee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: String,
    pub key: String,
    pub detail: String,
    pub at_ms: u64,
    /// The last events on the key, oldest first.
    pub trail: Vec<String>,
}

/// The audit's figures for one world.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFigures {
    /// Items held by more than one profile, or held without being born anywhere.
    pub dupes: u64,
    /// Items born durably but held by nobody.
    pub lost_items: u64,
    /// Acknowledged changes missing from durable state (progress, items, grants, gifts).
    pub lost_acknowledged: u64,
    pub double_grants: u64,
    pub double_gifts: u64,
    /// Gifts reported failed that arrived anyway.
    pub phantom_gifts: u64,
    /// Worlds-checks where total coins differed from coins born minus spent.
    pub currency_drift: u64,
    /// Writes to a key by a server that did not hold it (G1).
    pub exclusive_writer: u64,
    /// Escrows of cross-server trades released before the trade was decided, or to the wrong side.
    #[serde(default)]
    pub escrow_misreleased: u64,
    /// Escrows and pending marks still there once the world settled.
    #[serde(default)]
    pub unsettled_trades: u64,
    pub violations: u64,
    pub invariants_checked: u64,
    pub audits: u64,
}

/// Durable state of the world, read from the inner store.
#[derive(Clone, Debug, Default)]
pub struct WorldSnapshot {
    pub profiles: BTreeMap<usize, SimProfile>,
    /// Gift ids waiting in each player's inbox.
    pub inbox_gifts: BTreeMap<usize, Vec<String>>,
    pub bank_coins: Vec<i64>,
    /// Cross-server trades' escrow documents of this world, by key (`<trade id>/<leg>`).
    pub escrows: BTreeMap<String, Escrow>,
    /// The durable records of the trades whose escrows were released since the last audit.
    pub records: BTreeMap<String, TradeRecord>,
}

/// An escrow seen leaving the store: the commit that deleted it, and what it wrote with it.
#[derive(Clone, Debug)]
struct Release {
    trade_id: String,
    leg: usize,
    /// The profiles the same commit wrote (the one the escrow went into).
    into: Vec<DocId>,
    /// The trade's status as last observed when the release applied.
    status_then: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<String>,
    log_lines: u64,
    rings: BTreeMap<String, VecDeque<String>>,
    acked_progress: BTreeMap<usize, u64>,
    acked_items: BTreeMap<String, usize>,
    gifts: BTreeMap<String, (usize, GiftAck)>,
    purchases_acked: BTreeMap<String, usize>,
    /// Per key: fencing epoch → link that acquired it (lease-based strategies).
    epochs: BTreeMap<DocId, BTreeMap<u64, usize>>,
    /// Per key: the link that acquired it last (strategies without store leases).
    owner: BTreeMap<DocId, usize>,
    /// HTTP path: holder id (as `hoard serve` registered it) → the link of the game server
    /// incarnation that registered it, so writes through the one service are attributed to
    /// the game server whose token they carry.
    holder_links: BTreeMap<String, usize>,
    /// Value writes whose epoch's acquirer was not yet known when observed: checked at the end.
    unresolved_writes: Vec<(DocId, usize, u64)>,
    /// Cross-server trades: the status of each record as last observed written.
    observed_status: BTreeMap<String, String>,
    /// Escrow releases not yet checked against the durable record.
    releases: Vec<Release>,
    figures: AuditFigures,
    seen: BTreeSet<(String, String)>,
    violations: Vec<Violation>,
}

#[derive(Debug)]
pub struct Audit {
    names: Names,
    started: tokio::time::Instant,
    state: Mutex<State>,
    /// Commits are observed in the store's apply order (the memory store), so the order of a
    /// record's decision and an escrow's release can be checked as observed.
    observed_in_apply_order: std::sync::atomic::AtomicBool,
}

impl Audit {
    pub fn new(names: Names) -> Audit {
        Audit {
            names,
            started: tokio::time::Instant::now(),
            state: Mutex::new(State::default()),
            observed_in_apply_order: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Says that commits are observed in apply order (the memory store).
    pub fn set_observed_in_apply_order(&self, ordered: bool) {
        self.observed_in_apply_order.store(ordered, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Records an event in the world log and, when it concerns keys, in their rings.
    pub fn event(&self, keys: &[String], text: &str) {
        let line = format!("{:>9}ms {text}", self.now_ms());
        let mut state = self.lock();
        state.log_lines += 1;
        if state.log.len() < EVENT_LOG_LINES_MAX {
            state.log.push(line.clone());
        }
        for key in keys {
            let ring = state.rings.entry(key.clone()).or_default();
            if ring.len() == RING_EVENTS_PER_KEY {
                ring.pop_front();
            }
            ring.push_back(line.clone());
        }
    }

    pub fn player_event(&self, players: &[usize], text: &str) {
        let keys: Vec<String> = players.iter().map(|p| self.names.player_key(*p)).collect();
        self.event(&keys, text);
    }

    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    pub fn figures(&self) -> AuditFigures {
        self.lock().figures.clone()
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    fn violate(&self, state: &mut State, kind: &str, key: &str, detail: String) -> bool {
        if !state.seen.insert((kind.to_string(), key.to_string())) {
            return false;
        }
        state.figures.violations += 1;
        let trail = state.rings.get(key).map(|ring| ring.iter().cloned().collect()).unwrap_or_default();
        if state.violations.len() < VIOLATION_DETAILS_MAX {
            let violation =
                Violation { kind: kind.to_string(), key: key.to_string(), detail, at_ms: self.now_ms(), trail };
            state.violations.push(violation);
        }
        true
    }

    // ----- acknowledgements: what the game was told -----

    /// The strategy reported durable a state that includes `profile` (read just before the
    /// operation, so a subset of what was written: every list in it only grows).
    pub fn acknowledge(&self, player: usize, profile: &SimProfile) {
        let mut state = self.lock();
        let acked = state.acked_progress.entry(player).or_insert(0);
        *acked = (*acked).max(profile.progress);
        for item in &profile.minted {
            state.acked_items.entry(item.clone()).or_insert(player);
        }
        for purchase in &profile.purchases {
            state.purchases_acked.entry(purchase.clone()).or_insert(player);
        }
    }

    pub fn purchase_acknowledged(&self, player: usize, purchase_id: &str) {
        self.lock().purchases_acked.entry(purchase_id.to_string()).or_insert(player);
    }

    pub fn gift_sent(&self, player: usize, gift_id: &str, ack: GiftAck) {
        self.lock().gifts.insert(gift_id.to_string(), (player, ack));
    }

    // ----- G1: who writes a key -----

    /// A strategy without store leases says `link` now owns `id` (its load or lock finished).
    pub fn acquired(&self, id: &DocId, link: usize) {
        self.lock().owner.insert(id.clone(), link);
        self.event(&[id.key.to_string()], &format!("link{link} owns {id}"));
    }

    /// HTTP path: game server `link` registered `holder` with `hoard serve`.
    pub fn holder_registered(&self, holder: &str, link: usize) {
        self.lock().holder_links.insert(holder.to_string(), link);
    }

    /// The game server a write through `hoard serve` came from: the holder it acquires for, or
    /// the holder its lease condition names (a session token's fence).
    fn writer_by_holder(&self, write: &Write) -> Option<usize> {
        fn fenced_holder(condition: &Condition) -> Option<&str> {
            match condition {
                Condition::Lease { holder, .. } => Some(holder.as_str()),
                Condition::All(conditions) => conditions.iter().find_map(fenced_holder),
                _ => None,
            }
        }
        let holder = match &write.lease {
            LeaseOp::Acquire(holder) => Some(holder.as_str()),
            _ => fenced_holder(&write.condition),
        }?;
        self.lock().holder_links.get(holder).copied()
    }

    /// Called by a link for every commit the store applied, synchronously after the store
    /// answered, so on the memory store observation order is apply order.
    pub fn observe_commit(&self, link: usize, commit: &Commit, outcome: &CommitOutcome) {
        self.observe_commit_with(commit, outcome, &|_| Some(link));
    }

    /// `observe_commit` for the one link under `hoard serve`: each write is attributed to the
    /// game server whose holder it names (writes naming none are not a session's).
    pub fn observe_commit_by_holder(&self, commit: &Commit, outcome: &CommitOutcome) {
        self.observe_commit_with(commit, outcome, &|write| self.writer_by_holder(write));
    }

    fn observe_commit_with(&self, commit: &Commit, outcome: &CommitOutcome, writer: &dyn Fn(&Write) -> Option<usize>) {
        let CommitOutcome::Committed { applied, .. } = outcome else { return };
        self.observe_trade_writes(commit);
        for (write, applied) in commit.writes.iter().zip(applied) {
            if self.names.player_of(&write.id).is_none() {
                continue;
            }
            let Some(link) = writer(write) else { continue };
            let key = write.id.key.to_string();
            if let LeaseOp::Acquire(_) = &write.lease {
                self.lock().epochs.entry(write.id.clone()).or_default().insert(applied.epoch, link);
                self.lock().owner.insert(write.id.clone(), link);
                self.event(
                    std::slice::from_ref(&key),
                    &format!("link{link} acquired {} epoch {}", write.id, applied.epoch),
                );
            }
            if matches!(write.value, ValueOp::Keep) {
                continue;
            }
            self.event(
                std::slice::from_ref(&key),
                &format!("link{link} wrote {} v{} epoch {}", write.id, applied.version, applied.epoch),
            );
            self.check_writer(&write.id, link, applied.epoch);
        }
    }

    /// Cross-server trades: remembers each record's status as written, and each escrow deleted
    /// with the profiles written in the same commit.
    fn observe_trade_writes(&self, commit: &Commit) {
        let trade_prefix = format!("{}-x", self.names.namespace);
        let mut state = self.lock();
        for write in &commit.writes {
            let key = write.id.key.as_str();
            if !key.starts_with(&trade_prefix) {
                continue;
            }
            let store = write.id.store.as_str();
            if store == TRADE_RECORD_STORE {
                if let ValueOp::Put(value) = &write.value
                    && let Some(status) = value.get("status").and_then(serde_json::Value::as_str)
                {
                    state.observed_status.insert(key.to_string(), status.to_string());
                }
            } else if store == TRADE_ESCROW_STORE && matches!(write.value, ValueOp::Delete) {
                let Some((trade_id, leg)) = key.rsplit_once('/') else { continue };
                let Ok(leg) = leg.parse() else { continue };
                let into: Vec<DocId> = commit
                    .writes
                    .iter()
                    .filter(|w| self.names.player_of(&w.id).is_some() && matches!(w.value, ValueOp::Put(_)))
                    .map(|w| w.id.clone())
                    .collect();
                let status_then = state.observed_status.get(trade_id).cloned();
                state.releases.push(Release { trade_id: trade_id.to_string(), leg, into, status_then });
            }
        }
    }

    /// The trades whose released escrows wait to be checked against their durable records.
    pub fn released_trades(&self) -> Vec<String> {
        let state = self.lock();
        let ids: BTreeSet<String> = state.releases.iter().map(|r| r.trade_id.clone()).collect();
        ids.into_iter().collect()
    }

    fn check_releases(&self, state: &mut State, snapshot: &WorldSnapshot) {
        let ordered = self.observed_in_apply_order.load(std::sync::atomic::Ordering::Relaxed);
        for release in std::mem::take(&mut state.releases) {
            state.figures.invariants_checked += 1;
            let record = snapshot.records.get(&release.trade_id);
            let leg = record.and_then(|record| record.legs.get(release.leg));
            let key = release
                .into
                .first()
                .or(leg.map(|leg| &leg.from))
                .map_or_else(|| release.trade_id.clone(), |id| id.key.to_string());
            let status = record.map(|record| record.status.as_str());
            let then = release.status_then.as_deref();
            let decided = |status: Option<&str>| matches!(status, Some(STATUS_COMMITTED | STATUS_ABORTED));
            let problem = if ordered && !decided(then) {
                Some(format!("released while the trade was {}", then.unwrap_or("unrecorded")))
            } else if !decided(status) {
                Some(format!("released, and the durable record is {}", status.unwrap_or("absent")))
            } else {
                let leg = leg.map(|leg| (leg.from.clone(), leg.to.clone()));
                let rightful = match (status, leg) {
                    (Some(STATUS_COMMITTED), Some((_, to))) => Some(to),
                    (_, Some((from, _))) => Some(from),
                    (_, None) => None,
                };
                match rightful {
                    Some(rightful) if release.into == [rightful.clone()] => None,
                    Some(rightful) => Some(format!(
                        "the trade is {}: it belongs to {rightful}, it went into {:?}",
                        status.unwrap_or(""),
                        release.into.iter().map(ToString::to_string).collect::<Vec<_>>()
                    )),
                    None => Some(format!("the record has no leg {}", release.leg)),
                }
            };
            if let Some(problem) = problem {
                let detail = format!("escrow {}/{} of a cross-server trade: {problem}", release.trade_id, release.leg);
                if self.violate(state, "escrow_misreleased", &key, detail) {
                    state.figures.escrow_misreleased += 1;
                }
            }
        }
    }

    /// At the end of a world, once everything settled: no escrow and no pending mark is left.
    pub fn check_settled(&self, snapshot: &WorldSnapshot) {
        let mut state = self.lock();
        for (player, profile) in &snapshot.profiles {
            state.figures.invariants_checked += 1;
            if !profile.holdings.pending_trades.is_empty() {
                let key = self.names.player_key(*player);
                let trades: Vec<&String> = profile.holdings.pending_trades.keys().collect();
                let detail = format!("player {player} still holds cross-server trades {trades:?} pending at the end");
                if self.violate(&mut state, "unsettled_trade", &key, detail) {
                    state.figures.unsettled_trades += 1;
                }
            }
        }
        for (escrow_key, escrow) in &snapshot.escrows {
            state.figures.invariants_checked += 1;
            let detail = format!("escrow {escrow_key} ({escrow:?}) is still there at the end");
            if self.violate(&mut state, "unsettled_trade", &escrow.from.key.to_string(), detail) {
                state.figures.unsettled_trades += 1;
            }
        }
    }

    fn check_writer(&self, id: &DocId, link: usize, epoch: u64) {
        let mut state = self.lock();
        state.figures.invariants_checked += 1;
        let leased = state.epochs.get(id).is_some_and(|epochs| !epochs.is_empty());
        let holder = if leased {
            match state.epochs.get(id).and_then(|epochs| epochs.get(&epoch)) {
                Some(holder) => Some(*holder),
                None => {
                    state.unresolved_writes.push((id.clone(), link, epoch));
                    None
                }
            }
        } else {
            state.owner.get(id).copied()
        };
        if let Some(holder) = holder
            && holder != link
        {
            let detail = format!("link{link} wrote {id} at epoch {epoch} while link{holder} held it");
            if self.violate(&mut state, "exclusive_writer", id.key.as_str(), detail) {
                state.figures.exclusive_writer += 1;
            }
        }
    }

    /// Checks writes observed before their epoch's acquisition (real databases only).
    pub fn check_unresolved_writers(&self) {
        let writes = std::mem::take(&mut self.lock().unresolved_writes);
        for (id, link, epoch) in writes {
            let known = self.lock().epochs.get(&id).and_then(|epochs| epochs.get(&epoch)).copied();
            if let Some(holder) = known
                && holder != link
            {
                let mut state = self.lock();
                let detail = format!("link{link} wrote {id} at epoch {epoch} while link{holder} held it");
                if self.violate(&mut state, "exclusive_writer", id.key.as_str(), detail) {
                    state.figures.exclusive_writer += 1;
                }
            }
        }
    }

    // ----- conservation and acknowledged data, against durable state -----

    /// Checks every guarantee that holds at any instant against a durable snapshot.
    pub fn check_snapshot(&self, snapshot: &WorldSnapshot) {
        let mut state = self.lock();
        state.figures.audits += 1;
        self.check_items(&mut state, snapshot);
        self.check_currency(&mut state, snapshot);
        self.check_progress(&mut state, snapshot);
        self.check_purchases(&mut state, snapshot);
        self.check_gifts(&mut state, snapshot);
        self.check_releases(&mut state, snapshot);
    }

    fn check_items(&self, state: &mut State, snapshot: &WorldSnapshot) {
        // Holders: players by index (`p3`), escrows by key (`escrow <trade>/<leg>`).
        let mut holders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut births: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (player, profile) in &snapshot.profiles {
            for item in profile.holdings.items.keys() {
                holders.entry(item).or_default().push(format!("p{player}"));
            }
            for item in &profile.minted {
                births.entry(item).or_default().push(*player);
            }
        }
        for (key, escrow) in &snapshot.escrows {
            for item in escrow.items.keys() {
                holders.entry(item).or_default().push(format!("escrow {key}"));
            }
        }
        for (item, born_in) in &births {
            state.figures.invariants_checked += 1;
            let held_by: &[String] = holders.get(item).map(Vec::as_slice).unwrap_or(&[]);
            let key = self.names.player_key(born_in[0]);
            if born_in.len() > 1 || held_by.len() > 1 {
                let detail = format!("item {item} born in {born_in:?}, held by {held_by:?}");
                if self.violate(state, "dupe", &key, detail) {
                    state.figures.dupes += 1;
                }
            } else if held_by.is_empty() {
                let detail = format!("item {item} born in player {} is held by nobody", born_in[0]);
                if self.violate(state, "lost_item", &key, detail) {
                    state.figures.lost_items += 1;
                }
            }
        }
        for (item, held_by) in &holders {
            state.figures.invariants_checked += 1;
            if !births.contains_key(item) {
                let key = held_by[0]
                    .strip_prefix('p')
                    .and_then(|p| p.parse().ok())
                    .map_or_else(|| held_by[0].clone(), |player: usize| self.names.player_key(player));
                let detail = format!("item {item} held by {held_by:?} was never born in any durable profile");
                if self.violate(state, "dupe", &key, detail) {
                    state.figures.dupes += 1;
                }
            }
        }
        let acked: Vec<(String, usize)> = state.acked_items.iter().map(|(i, p)| (i.clone(), *p)).collect();
        for (item, player) in acked {
            state.figures.invariants_checked += 1;
            if !births.contains_key(item.as_str()) {
                let key = self.names.player_key(player);
                let detail = format!("item {item} acknowledged durable for player {player} is in no durable profile");
                if self.violate(state, "lost_acknowledged", &key, detail) {
                    state.figures.lost_acknowledged += 1;
                }
            }
        }
    }

    fn check_currency(&self, state: &mut State, snapshot: &WorldSnapshot) {
        state.figures.invariants_checked += 1;
        let escrowed: i64 = snapshot.escrows.values().map(|e| e.currencies.get(COINS).copied().unwrap_or(0)).sum();
        let held: i64 = snapshot.profiles.values().map(SimProfile::coins).sum::<i64>()
            + snapshot.bank_coins.iter().sum::<i64>()
            + escrowed;
        let born: i64 = snapshot.profiles.values().map(SimProfile::coins_born_minus_spent).sum();
        if held != born {
            let detail =
                format!("coins held (profiles + guild banks + escrows) {held} != coins born minus spent {born}");
            if self.violate(state, "currency_drift", "world", detail) {
                state.figures.currency_drift += 1;
            }
        }
    }

    fn check_progress(&self, state: &mut State, snapshot: &WorldSnapshot) {
        let acked: Vec<(usize, u64)> = state.acked_progress.iter().map(|(p, v)| (*p, *v)).collect();
        for (player, acked) in acked {
            state.figures.invariants_checked += 1;
            let durable = snapshot.profiles.get(&player).map_or(0, |p| p.progress);
            if durable < acked {
                let key = self.names.player_key(player);
                let detail = format!("progress {acked} was acknowledged durable; the store holds {durable}");
                if self.violate(state, "lost_acknowledged", &key, detail) {
                    state.figures.lost_acknowledged += 1;
                }
            }
        }
    }

    fn check_purchases(&self, state: &mut State, snapshot: &WorldSnapshot) {
        let mut granted: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (player, profile) in &snapshot.profiles {
            for purchase in &profile.purchases {
                granted.entry(purchase).or_default().push(*player);
            }
        }
        for (purchase, players) in &granted {
            state.figures.invariants_checked += 1;
            if players.len() > 1 {
                let key = self.names.player_key(players[0]);
                let detail = format!("purchase {purchase} granted {} times (players {players:?})", players.len());
                if self.violate(state, "double_grant", &key, detail) {
                    state.figures.double_grants += 1;
                }
            }
        }
        let acked: Vec<(String, usize)> = state.purchases_acked.iter().map(|(i, p)| (i.clone(), *p)).collect();
        for (purchase, player) in acked {
            state.figures.invariants_checked += 1;
            if !granted.contains_key(purchase.as_str()) {
                let key = self.names.player_key(player);
                let detail = format!("purchase {purchase} was acknowledged granted but is in no durable profile");
                if self.violate(state, "lost_acknowledged", &key, detail) {
                    state.figures.lost_acknowledged += 1;
                }
            }
        }
    }

    fn check_gifts(&self, state: &mut State, snapshot: &WorldSnapshot) {
        let mut seen: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (player, profile) in &snapshot.profiles {
            for gift in &profile.gifts {
                seen.entry(gift).or_default().push(*player);
            }
        }
        for (player, gifts) in &snapshot.inbox_gifts {
            for gift in gifts {
                seen.entry(gift).or_default().push(*player);
            }
        }
        let sent: Vec<(String, usize, GiftAck)> = state.gifts.iter().map(|(g, (p, a))| (g.clone(), *p, *a)).collect();
        for (gift, player, ack) in sent {
            state.figures.invariants_checked += 1;
            let count = seen.get(gift.as_str()).map_or(0, Vec::len);
            let key = self.names.player_key(player);
            if count > 1 {
                let detail = format!("gift {gift} applied or waiting {count} times");
                if self.violate(state, "double_gift", &key, detail) {
                    state.figures.double_gifts += 1;
                }
            } else if count == 0 && ack == GiftAck::Sent {
                let detail = format!("gift {gift} was sent (acknowledged) and is neither applied nor waiting");
                if self.violate(state, "lost_acknowledged", &key, detail) {
                    state.figures.lost_acknowledged += 1;
                }
            } else if count == 1 && ack == GiftAck::Failed {
                let detail = format!("gift {gift} was reported failed but arrived");
                if self.violate(state, "phantom_gift", &key, detail) {
                    state.figures.phantom_gifts += 1;
                }
            }
        }
    }
}
