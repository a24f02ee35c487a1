//! Player actions: join (sometimes twice at once, mid-load), play, leave, hop to another server,
//! trade with one or several players, trade with a player on another server (each server takes
//! its party's part, at different moments, sometimes only one so the deadline aborts it), buy
//! (receipt delivered twice, and to two servers), receive gifts, deposit into a guild bank.
//!
//! Invariant: each action picks its players and ids synchronously (deterministic draw order),
//! then runs as a task; it records an acknowledgement in the audit only after the strategy
//! returned success, with the profile as read *before* the operation (a subset of what became
//! durable: every list the audit checks only grows).

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{CrossTrade, TradeLeg};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::audit::GiftAck;
use crate::model::{Gift, Purchase, SimProfile, SimTrade, coins_map};
use crate::strategies::{BuyAck, CrossAck, GameServer, OpError, TradeAck};
use crate::world::{World, joined};

/// Chance a join is sent twice at once to the same server (a rejoin mid-load).
pub const REJOIN_MID_LOAD_PROBABILITY: f64 = 0.15;
/// Chance a play action ends with an explicit save (the engine also autosaves).
pub const SAVE_AFTER_PLAY_PROBABILITY: f64 = 0.35;
pub const FIND_ITEM_PROBABILITY: f64 = 0.3;
pub const SPEND_PROBABILITY: f64 = 0.2;
pub const EARN_COINS_MAX: i64 = 20;
pub const SPEND_COINS_MAX: i64 = 15;
/// Players in one trade (a ring of legs among them).
pub const TRADE_PLAYERS_MAX: usize = 3;
pub const TRADE_ITEMS_PER_LEG_MAX: usize = 2;
pub const TRADE_COINS_PER_LEG_MAX: i64 = 30;
pub const PURCHASE_COINS_MAX: i64 = 50;
/// Chance a receipt is also delivered on a second server the player hops to meanwhile.
pub const BUY_ON_TWO_SERVERS_PROBABILITY: f64 = 0.3;
pub const GIFT_COINS_MAX: i64 = 10;
pub const GIFT_ITEM_PROBABILITY: f64 = 0.5;
pub const DEPOSIT_COINS_MAX: i64 = 25;
/// Delay between leaving the old server and joining the new one in a hop (either order races).
pub const HOP_JOIN_DELAY_MS_MAX: u64 = 40;
/// Chance a hop leaves the old server as it joins the new one; otherwise it joins the new one
/// while the old one still holds the player (a handoff), and leaves the old one afterwards.
pub const HOP_LEAVE_FIRST_PROBABILITY: f64 = 0.5;
/// A cross-server trade's timeout (simulated time), uniform in this range.
pub const CROSS_TRADE_TIMEOUT_MS_MIN: u64 = 2_000;
pub const CROSS_TRADE_TIMEOUT_MS_MAX: u64 = 5_000;
/// Chance only the first party's server takes its part (the deadline then aborts the trade).
pub const CROSS_TRADE_ONE_SIDED_PROBABILITY: f64 = 0.15;
/// The second party takes its part up to this many quarters of the timeout after the first
/// (past 4 quarters: after the deadline).
pub const CROSS_TRADE_SECOND_DELAY_QUARTERS_MAX: u64 = 5;
/// Chance a party's server crashes right after its part answered `Pending`.
pub const CROSS_TRADE_CRASH_AFTER_PENDING_PROBABILITY: f64 = 0.05;

/// What one play action does to the profile, drawn before the task runs.
#[derive(Clone, Debug)]
pub(crate) struct PlayDraw {
    pub earn: i64,
    pub item: Option<String>,
    pub spend: i64,
}

impl PlayDraw {
    pub fn apply(&self, profile: &mut SimProfile) {
        profile.progress += 1;
        profile.add_coins(self.earn);
        profile.earned += self.earn;
        if let Some(item) = &self.item {
            profile.mint(item, "found");
        }
        let spend = self.spend.min(profile.coins());
        profile.add_coins(-spend);
        profile.spent += spend;
    }
}

impl World {
    fn online_idle(&self, at: Option<usize>) -> Vec<usize> {
        let up = self.servers_up();
        self.players()
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.busy && p.at.is_some_and(|s| up.contains(&s)) && (at.is_none() || p.at == at))
            .map(|(i, _)| i)
            .collect()
    }

    fn location(&self, player: usize) -> Option<usize> {
        self.players().get(player).and_then(|p| p.at)
    }

    pub(crate) fn draw_play(&self) -> PlayDraw {
        let earn = self.random().random_range(1..=EARN_COINS_MAX);
        let item = self.chance(FIND_ITEM_PROBABILITY).then(|| format!("{}-i{}", self.names.namespace, self.fresh_id()));
        let spend = if self.chance(SPEND_PROBABILITY) { self.random().random_range(1..=SPEND_COINS_MAX) } else { 0 };
        PlayDraw { earn, item, spend }
    }

    /// Handles an operation's failure: a kicked player is offline now.
    fn on_error(&self, player: usize, server: usize, error: &OpError) {
        if matches!(error, OpError::Kicked(_)) && self.location(player) == Some(server) {
            self.set_location(player, None);
        }
    }

    pub(crate) fn action_join(self: &Arc<Self>) -> bool {
        let offline: Vec<usize> =
            self.players().iter().enumerate().filter(|(_, p)| !p.busy && p.at.is_none()).map(|(i, _)| i).collect();
        let (Some(player), Some(server)) = (self.pick(&offline), self.pick(&self.servers_up())) else { return false };
        let twice = self.chance(REJOIN_MID_LOAD_PROBABILITY);
        let Some(guard) = self.busy(&[player]) else { return false };
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let Some(game) = world.server(server) else { return };
            let result = if twice {
                let (first, second) = tokio::join!(game.join(player, false), game.join(player, false));
                first.and(second)
            } else {
                game.join(player, false).await
            };
            let how = if twice { "join (twice at once)" } else { "join" };
            match result {
                Ok(()) => {
                    world.set_location(player, Some(server));
                    world.count_outcome("join.ok");
                    world.audit.player_event(&[player], &format!("p{player} {how} s{server}: ok"));
                }
                Err(error) => {
                    world.count_outcome("join.failed");
                    world.audit.player_event(&[player], &format!("p{player} {how} s{server}: {error}"));
                }
            }
        });
        true
    }

    pub(crate) fn action_play(self: &Arc<Self>) -> bool {
        let Some(player) = self.pick(&self.online_idle(None)) else { return false };
        let Some(server) = self.location(player) else { return false };
        let draw = self.draw_play();
        let save = self.chance(SAVE_AFTER_PLAY_PROBABILITY);
        let Some(guard) = self.busy(&[player]) else { return false };
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let Some(game) = world.server(server) else { return };
            if let Err(error) = game.update(player, &mut |profile| draw.apply(profile)) {
                world.audit.player_event(&[player], &format!("p{player} play s{server}: {error}"));
                world.on_error(player, server, &error);
                return;
            }
            if save {
                world.save_and_acknowledge(&*game, player, server).await;
            }
        });
        true
    }

    pub(crate) async fn save_and_acknowledge(&self, game: &dyn GameServer, player: usize, server: usize) {
        let Some(before) = game.read(player) else { return };
        match game.save(player).await {
            Ok(()) => {
                self.audit.acknowledge(player, &before);
                self.count_outcome("save.ok");
                self.audit
                    .player_event(&[player], &format!("p{player} save s{server}: ok, progress {}", before.progress));
            }
            Err(error) => {
                self.count_outcome("save.failed");
                self.audit.player_event(&[player], &format!("p{player} save s{server}: {error}"));
                self.on_error(player, server, &error);
            }
        }
    }

    pub(crate) async fn leave_and_acknowledge(&self, game: &dyn GameServer, player: usize, server: usize) {
        let before = game.read(player);
        match game.leave(player).await {
            Ok(()) => {
                if let Some(before) = before {
                    self.audit.acknowledge(player, &before);
                    self.audit.player_event(
                        &[player],
                        &format!("p{player} leave s{server}: ok, progress {}", before.progress),
                    );
                }
                self.count_outcome("leave.ok");
            }
            Err(error) => {
                self.count_outcome("leave.failed");
                self.audit.player_event(&[player], &format!("p{player} leave s{server}: {error}"));
            }
        }
    }

    pub(crate) fn action_leave(self: &Arc<Self>) -> bool {
        let Some(player) = self.pick(&self.online_idle(None)) else { return false };
        let Some(server) = self.location(player) else { return false };
        let Some(guard) = self.busy(&[player]) else { return false };
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let Some(game) = world.server(server) else { return };
            world.set_location(player, None);
            world.leave_and_acknowledge(&*game, player, server).await;
        });
        true
    }

    pub(crate) fn action_hop(self: &Arc<Self>) -> bool {
        let Some(player) = self.pick(&self.online_idle(None)) else { return false };
        let Some(from) = self.location(player) else { return false };
        let targets: Vec<usize> = self.servers_up().into_iter().filter(|s| *s != from).collect();
        let Some(to) = self.pick(&targets) else { return false };
        let delay_ms = self.random().random_range(0..=HOP_JOIN_DELAY_MS_MAX);
        let leave_first = self.chance(HOP_LEAVE_FIRST_PROBABILITY);
        let Some(guard) = self.busy(&[player]) else { return false };
        let world = self.clone();
        self.spawn_on(&[to], async move {
            let _guard = guard;
            world.hop(player, from, to, delay_ms, leave_first).await;
        });
        true
    }

    /// Moves a player from `from` to `to`, as a player who teleports: either leaving `from` as it
    /// joins `to`, or joining `to` while `from` still holds it and leaving `from` afterwards.
    pub(crate) async fn hop(
        self: &Arc<Self>,
        player: usize,
        from: usize,
        to: usize,
        delay_ms: u64,
        leave_first: bool,
    ) -> bool {
        let (Some(old), Some(new)) = (self.server(from), self.server(to)) else { return false };
        self.set_location(player, None);
        let (world, gate) = (self.clone(), Arc::new(tokio::sync::Notify::new()));
        let opened = gate.clone();
        let leave = tokio::spawn(async move {
            if !leave_first {
                opened.notified().await;
            }
            world.leave_and_acknowledge(&*old, player, from).await;
        });
        if let Some(slot) = self.servers().get_mut(from) {
            slot.tasks.push(leave.abort_handle());
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let joined_ok = match new.join(player, true).await {
            Ok(()) => {
                self.set_location(player, Some(to));
                self.count_outcome("hop.ok");
                self.audit.player_event(&[player], &format!("p{player} hop s{from} -> s{to}: ok"));
                true
            }
            Err(error) => {
                self.count_outcome("hop.failed");
                self.audit.player_event(&[player], &format!("p{player} hop s{from} -> s{to}: {error}"));
                false
            }
        };
        gate.notify_one();
        let _ = joined(leave).await;
        joined_ok
    }

    pub(crate) fn action_trade(self: &Arc<Self>) -> bool {
        let Some(server) = self.pick(&self.servers_up()) else { return false };
        let mut candidates = self.online_idle(Some(server));
        if candidates.len() < 2 {
            return false;
        }
        let count = self.random().random_range(2..=TRADE_PLAYERS_MAX.min(candidates.len()));
        candidates.shuffle(&mut *self.random());
        candidates.truncate(count);
        let Some(game) = self.server(server) else { return false };
        let profiles: Vec<SimProfile> = match candidates.iter().map(|p| game.read(*p)).collect::<Option<Vec<_>>>() {
            Some(profiles) => profiles,
            None => return false,
        };
        let mut legs = Vec::new();
        for (from, giver) in profiles.iter().enumerate() {
            let to = (from + 1) % count;
            let mut items: Vec<String> = giver.holdings.items.keys().cloned().collect();
            items.shuffle(&mut *self.random());
            let item_count = self.random().random_range(0..=TRADE_ITEMS_PER_LEG_MAX.min(items.len()));
            items.truncate(item_count);
            let coins_max = TRADE_COINS_PER_LEG_MAX.min(giver.coins());
            let coins = if coins_max > 0 { self.random().random_range(0..=coins_max) } else { 0 };
            if !items.is_empty() || coins > 0 {
                legs.push(TradeLeg { from, to, items, currencies: coins_map(coins) });
            }
        }
        if legs.is_empty() {
            return false;
        }
        let trade =
            SimTrade { trade_id: format!("{}-t{}", self.names.namespace, self.fresh_id()), players: candidates, legs };
        let Some(guard) = self.busy(&trade.players) else { return false };
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let before: Vec<Option<SimProfile>> = trade.players.iter().map(|p| game.read(*p)).collect();
            let ack = game.trade(&trade).await;
            world.audit.player_event(
                &trade.players,
                &format!("{} among {:?} on s{server}: {ack:?}", trade.trade_id, trade.players),
            );
            match ack {
                TradeAck::Committed => {
                    world.count_outcome("trade.committed");
                    for (player, profile) in trade.players.iter().zip(before) {
                        if let Some(profile) = profile {
                            world.audit.acknowledge(*player, &profile);
                        }
                    }
                }
                TradeAck::NotCommitted => world.count_outcome("trade.refused_or_failed"),
                TradeAck::Unknown => {
                    world.count_outcome("trade.unknown");
                    for player in &trade.players {
                        world.on_error(*player, server, &OpError::Kicked("outcome unknown".into()));
                    }
                }
            }
        });
        true
    }

    /// Draws what `giver` gives on one leg: up to `TRADE_ITEMS_PER_LEG_MAX` of its items and up
    /// to `TRADE_COINS_PER_LEG_MAX` coins (`None`: nothing).
    fn draw_leg(&self, giver: &SimProfile, from: usize, to: usize) -> Option<TradeLeg> {
        let mut items: Vec<String> = giver.holdings.items.keys().cloned().collect();
        items.shuffle(&mut *self.random());
        let item_count = self.random().random_range(0..=TRADE_ITEMS_PER_LEG_MAX.min(items.len()));
        items.truncate(item_count);
        let coins_max = TRADE_COINS_PER_LEG_MAX.min(giver.coins());
        let coins = if coins_max > 0 { self.random().random_range(0..=coins_max) } else { 0 };
        (!items.is_empty() || coins > 0).then(|| TradeLeg { from, to, items, currencies: coins_map(coins) })
    }

    /// A trade between two players held by different servers: the first party's server takes
    /// its part now, the second's later (sometimes past the deadline, sometimes never).
    pub(crate) fn action_cross_trade(self: &Arc<Self>) -> bool {
        if !self.config.strategy.trades_across_servers() {
            return false;
        }
        let idle = self.online_idle(None);
        let Some(first) = self.pick(&idle) else { return false };
        let Some(first_at) = self.location(first) else { return false };
        let others: Vec<usize> =
            idle.into_iter().filter(|p| self.location(*p).is_some_and(|s| s != first_at)).collect();
        let Some(second) = self.pick(&others) else { return false };
        let Some(second_at) = self.location(second) else { return false };
        let (Some(first_game), Some(second_game)) = (self.server(first_at), self.server(second_at)) else {
            return false;
        };
        let (Some(first_profile), Some(second_profile)) = (first_game.read(first), second_game.read(second)) else {
            return false;
        };
        let legs: Vec<TradeLeg> =
            [self.draw_leg(&first_profile, 0, 1), self.draw_leg(&second_profile, 1, 0)].into_iter().flatten().collect();
        if legs.is_empty() {
            return false;
        }
        let (Ok(first_id), Ok(second_id)) = (self.names.player_id(first), self.names.player_id(second)) else {
            return false;
        };
        let timeout_ms = self.random().random_range(CROSS_TRADE_TIMEOUT_MS_MIN..=CROSS_TRADE_TIMEOUT_MS_MAX);
        let one_sided = self.chance(CROSS_TRADE_ONE_SIDED_PROBABILITY);
        let second_delay_ms = self.random().random_range(0..=timeout_ms * CROSS_TRADE_SECOND_DELAY_QUARTERS_MAX / 4);
        let trade = Arc::new(CrossTrade {
            id: format!("{}-x{}", self.names.namespace, self.fresh_id()),
            parties: vec![first_id, second_id],
            legs,
            timeout_ms,
        });
        self.stats().cross_trades.insert(trade.id.clone(), Vec::new());
        self.audit.player_event(
            &[first, second],
            &format!(
                "{} between p{first} on s{first_at} and p{second} on s{second_at}, timeout {timeout_ms} ms, {}: {:?}",
                trade.id,
                if one_sided { "one-sided".to_string() } else { format!("second after {second_delay_ms} ms") },
                trade.legs
            ),
        );
        self.cross_trade_step(first, trade.clone());
        if !one_sided {
            let world = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(second_delay_ms)).await;
                world.cross_trade_step(second, trade);
            });
        }
        true
    }

    /// One party's part in a cross-server trade, on the server that holds it now.
    fn cross_trade_step(self: &Arc<Self>, player: usize, trade: Arc<CrossTrade>) {
        let server = self.location(player).filter(|s| self.servers_up().contains(s));
        let guard = server.and_then(|_| self.busy(&[player]));
        let (Some(server), Some(guard)) = (server, guard) else {
            self.cross_trade_answer(&trade.id, "skipped");
            self.audit.player_event(&[player], &format!("p{player} {}: offline or busy, takes no part", trade.id));
            return;
        };
        let crash_after_pending = self.chance(CROSS_TRADE_CRASH_AFTER_PENDING_PROBABILITY);
        self.arm_step_fault(server, &trade.id);
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let Some(game) = world.server(server) else { return };
            let before = game.read(player);
            let ack = game.trade_across(player, &trade).await;
            world.cross_trade_answer(&trade.id, ack.name());
            world.audit.player_event(&[player], &format!("p{player} {} on s{server}: {ack:?}", trade.id));
            match &ack {
                // Its prepare (or settle) committed the whole profile as it was before.
                CrossAck::Pending | CrossAck::Committed => {
                    if let Some(before) = before {
                        world.audit.acknowledge(player, &before);
                    }
                }
                CrossAck::Failed { reason, kicked: true } => {
                    world.on_error(player, server, &OpError::Kicked(reason.clone()));
                }
                _ => {}
            }
            if ack == CrossAck::Pending && crash_after_pending && !world.play_is_over() && world.servers_up().len() >= 2
            {
                world
                    .audit
                    .player_event(&[player], &format!("crash s{server} right after {} answered pending", trade.id));
                world.crash(server);
            }
        });
    }

    fn cross_trade_answer(&self, trade_id: &str, answer: &str) {
        self.count_outcome(&format!("cross_trade.call.{answer}"));
        if let Some(answers) = self.stats().cross_trades.get_mut(trade_id) {
            answers.push(answer.to_string());
        }
    }

    pub(crate) fn action_buy(self: &Arc<Self>) -> bool {
        let Some(player) = self.pick(&self.online_idle(None)) else { return false };
        let Some(server) = self.location(player) else { return false };
        let id = self.fresh_id();
        // One draw per statement: a guard of the world's generator lives to the end of its
        // statement, and a second draw in the same statement would wait for it forever.
        let coins = self.random().random_range(1..=PURCHASE_COINS_MAX);
        let purchase = Purchase {
            purchase_id: format!("{}-buy{id}", self.names.namespace),
            coins,
            item: format!("{}-i{}", self.names.namespace, self.fresh_id()),
        };
        let others: Vec<usize> = self.servers_up().into_iter().filter(|s| *s != server).collect();
        let second = if self.chance(BUY_ON_TWO_SERVERS_PROBABILITY) { self.pick(&others) } else { None };
        let delay_ms = self.random().random_range(0..=HOP_JOIN_DELAY_MS_MAX);
        let Some(guard) = self.busy(&[player]) else { return false };
        // Each server's part is a task of that server alone, as in a hop: a crash aborts only
        // what the crashed process was doing (aborting a live server's request mid-flight would
        // make it forget a write that applied), and the player stays busy until both are over.
        let guard = Arc::new(guard);
        let elsewhere = second.map(|to| {
            let (world, purchase, guard) = (self.clone(), purchase.clone(), guard.clone());
            self.spawn_on(&[to], async move {
                let _guard = guard;
                if !world.hop(player, server, to, delay_ms, true).await {
                    return None;
                }
                let other = world.server(to)?;
                Some(other.buy(player, &purchase).await)
            })
        });
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let Some(game) = world.server(server) else { return };
            let here = async {
                let (first, again) = tokio::join!(game.buy(player, &purchase), game.buy(player, &purchase));
                [first, again]
            };
            // A second server that crashed ends its part (`None`).
            let elsewhere = async {
                match elsewhere {
                    Some(task) => joined(task).await.flatten(),
                    None => None,
                }
            };
            let (answers, last) = tokio::join!(here, elsewhere);
            let acks: Vec<BuyAck> = answers.into_iter().chain(last).collect();
            world.audit.player_event(
                &[player],
                &format!(
                    "p{player} buy {} on s{server}{}: {acks:?}",
                    purchase.purchase_id,
                    second.map(|s| format!(" and s{s}")).unwrap_or_default()
                ),
            );
            if acks.iter().any(|a| matches!(a, BuyAck::Granted | BuyAck::AlreadyGranted)) {
                world.audit.purchase_acknowledged(player, &purchase.purchase_id);
                world.count_outcome("buy.granted");
            } else {
                world.count_outcome("buy.not_granted");
            }
        });
        true
    }

    pub(crate) fn action_gift(self: &Arc<Self>) -> bool {
        let Some(server) = self.pick(&self.servers_up()) else { return false };
        let player = self.random().random_range(0..self.config.players);
        let coins = self.random().random_range(1..=GIFT_COINS_MAX);
        let with_item = self.chance(GIFT_ITEM_PROBABILITY);
        let gift = Gift {
            gift_id: format!("{}-g{}", self.names.namespace, self.fresh_id()),
            coins,
            item: with_item.then(|| format!("{}-i{}", self.names.namespace, self.fresh_id())),
        };
        let world = self.clone();
        // Until the send answers, its outcome is unknown (a crash may cut it off).
        self.audit.gift_sent(player, &gift.gift_id, GiftAck::Unknown);
        self.spawn_on(&[server], async move {
            let Some(game) = world.server(server) else { return };
            let ack = game.send_gift(player, &gift).await;
            world.audit.gift_sent(player, &gift.gift_id, ack);
            world.audit.player_event(&[player], &format!("gift {} to p{player} from s{server}: {ack:?}", gift.gift_id));
            world.count_outcome(match ack {
                GiftAck::Sent => "gift.sent",
                GiftAck::Unknown => "gift.unknown",
                GiftAck::Failed => "gift.failed",
            });
        });
        true
    }

    pub(crate) fn action_deposit(self: &Arc<Self>) -> bool {
        let Some(player) = self.pick(&self.online_idle(None)) else { return false };
        let Some(server) = self.location(player) else { return false };
        let coins = self.server(server).and_then(|g| g.read(player)).map_or(0, |p| p.coins());
        if coins < 1 {
            return false;
        }
        let amount = self.random().random_range(1..=DEPOSIT_COINS_MAX.min(coins));
        let bank = self.random().random_range(0..self.config.guild_banks);
        let Some(guard) = self.busy(&[player]) else { return false };
        let world = self.clone();
        self.spawn_on(&[server], async move {
            let _guard = guard;
            let Some(game) = world.server(server) else { return };
            let Some(before) = game.read(player) else { return };
            match game.deposit(player, bank, amount).await {
                Ok(()) => {
                    world.audit.acknowledge(player, &before);
                    world.count_outcome("deposit.ok");
                    world
                        .audit
                        .player_event(&[player], &format!("p{player} deposit {amount} in bank{bank} on s{server}: ok"));
                }
                Err(error) => {
                    world.count_outcome("deposit.failed");
                    world.audit.player_event(
                        &[player],
                        &format!("p{player} deposit {amount} in bank{bank} on s{server}: {error}"),
                    );
                    world.on_error(player, server, &error);
                }
            }
        });
        true
    }
}
