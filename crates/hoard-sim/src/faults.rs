//! Process faults: a server crashing at any instant (mid-trade, mid-save, mid-handoff: whatever
//! it has in flight is cut off), and a server freezing longer than its lease, having its players
//! taken over elsewhere, then waking and trying to write. Store faults (errors before/after
//! apply, lost requests, latency spikes, lost notifications) are `FaultStore`'s, per server.
//!
//! Cross-server trades also get faults aimed at their steps (`step_faults`): a trap armed on the
//! party's server's link crashes or freezes it just before or just after one of its commits of
//! the trade.
//!
//! Invariants:
//! - At least one server stays up, so the world keeps playing.
//! - A crashed incarnation never comes back: the next incarnation has a new holder id and link.
//! - A frozen server's own traffic waits at its link; the world moves its players elsewhere and,
//!   once it wakes, makes its stale sessions play and save (the writes G1 must refuse).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::step_faults::{FireStepFault, StepFault, StepMoment, StepTrap, TradeStep, step_fault_name};
use crate::world::World;

/// How often the scheduler considers a crash or a freeze.
pub const FAULT_TICK_MS: u64 = 1_000;
/// Chance each idle player of a frozen server reconnects to another server during the freeze.
pub const RECONNECT_ELSEWHERE_PROBABILITY: f64 = 0.7;
/// Players of a server about to freeze whose saves are sent just before it freezes.
pub const SAVES_IN_FLIGHT_AT_FREEZE_MAX: usize = 3;
/// How long after those saves start the freeze hits (so some are cut mid-flight).
pub const FREEZE_AFTER_SAVES_MS_MAX: u64 = 10;
/// The last of one party's server's commits touching a cross-server trade a step fault may hit
/// (0: its prepare; 1: the next, its settle or an abort's decision).
pub const STEP_FAULT_COMMIT_INDEX_MAX: usize = 1;
/// Chance a step fault aims at the party's prepare rather than at its next commit of the trade.
pub const STEP_FAULT_AT_PREPARE_PROBABILITY: f64 = 0.35;

impl World {
    pub(crate) async fn fault_scheduler(self: Arc<Self>, end: tokio::time::Instant) {
        let per_tick = |per_minute: f64| (per_minute * FAULT_TICK_MS as f64 / 60_000.0).clamp(0.0, 1.0);
        let crash_chance = per_tick(self.config.faults.crashes_per_minute);
        let pause_chance = per_tick(self.config.faults.pauses_per_minute);
        let serve_restart_chance =
            if self.service.is_some() { per_tick(self.config.faults.serve_restarts_per_minute) } else { 0.0 };
        while tokio::time::Instant::now() + Duration::from_millis(FAULT_TICK_MS) < end {
            tokio::time::sleep(Duration::from_millis(FAULT_TICK_MS)).await;
            if self.chance(crash_chance) {
                let up = self.servers_up();
                if up.len() >= 2
                    && let Some(index) = self.pick(&up)
                {
                    self.crash(index);
                }
            }
            if self.chance(pause_chance) {
                let up = self.servers_up();
                if up.len() >= 2
                    && let Some(index) = self.pick(&up)
                {
                    let world = self.clone();
                    tokio::spawn(async move { world.freeze(index).await });
                }
            }
            if serve_restart_chance > 0.0 && self.chance(serve_restart_chance) {
                let world = self.clone();
                tokio::spawn(async move { world.restart_service().await });
            }
        }
    }

    /// With the configured chance, arms a step fault on server `index`'s link for `trade_id`: a
    /// crash or freeze before or after one of its next commits of that trade.
    pub(crate) fn arm_step_fault(self: &Arc<Self>, index: usize, trade_id: &str) {
        if !self.chance(self.config.faults.cross_trade_step_faults) || self.play_is_over() {
            return;
        }
        let (link, incarnation) = {
            let servers = self.servers();
            let Some(slot) = servers.get(index) else { return };
            (slot.link.clone(), slot.incarnation)
        };
        // Settles are the rarer commits (a party may have moved, or another server settles it).
        let commit_index = if self.chance(STEP_FAULT_AT_PREPARE_PROBABILITY) { 0 } else { STEP_FAULT_COMMIT_INDEX_MAX };
        let moment = if self.chance(0.5) { StepMoment::Before } else { StepMoment::After };
        let fault = if self.chance(0.5) { StepFault::Crash } else { StepFault::Freeze };
        // Weak: the trap lives in a link the world owns.
        let world = Arc::downgrade(self);
        let fire: FireStepFault = Box::new(move |fault, moment, step| {
            if let Some(world) = world.upgrade() {
                world.step_fault(index, incarnation, fault, moment, step);
            }
        });
        let trap = StepTrap { trade_id: trade_id.to_string(), commit_index, moment, fault, fire, commits_seen: 0 };
        if link.arm(trap) {
            self.count_outcome("cross_trade.step_fault.replaced_unsprung");
        }
    }

    /// Play is over: no trap springs any more (the settling rounds wait for their servers).
    pub(crate) fn disarm_step_faults(&self) {
        for slot in self.servers().iter() {
            slot.link.disarm();
        }
    }

    /// A step fault's trap sprang on server `index` (incarnation `incarnation`): crash or freeze
    /// it now, while the trade's commit waits at its link.
    fn step_fault(
        self: &Arc<Self>,
        index: usize,
        incarnation: u64,
        fault: StepFault,
        moment: StepMoment,
        step: TradeStep,
    ) {
        let link = self
            .servers()
            .get(index)
            .filter(|slot| slot.incarnation == incarnation && slot.server.is_some() && !slot.frozen)
            .map(|slot| slot.link.clone());
        let Some(link) = link.filter(|_| self.servers_up().len() >= 2) else {
            self.count_outcome("cross_trade.step_fault.not_possible");
            return;
        };
        let name = step_fault_name(fault, moment, step);
        self.count_outcome(&name);
        self.audit.event(&[], &format!("{name} on s{index}"));
        match fault {
            StepFault::Crash => self.crash(index),
            StepFault::Freeze => {
                // Held from this instant (the freeze itself pauses the link a little later).
                link.pause();
                let world = self.clone();
                tokio::spawn(async move { world.freeze(index).await });
            }
        }
    }

    /// HTTP path: kills the `hoard serve` process (every request in it is cut) and starts a new
    /// one over the same store after a downtime (requests meanwhile are refused).
    async fn restart_service(self: Arc<Self>) {
        let Some(service) = self.service.clone() else { return };
        let down_ms = self.random().random_range(0..=self.config.faults.serve_down_ms_max);
        let incarnation = service.kill();
        self.stats().serve_restarts += 1;
        self.audit.event(&[], &format!("CRASH hoard serve process {incarnation}; down {down_ms} ms"));
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        service.restart();
        self.audit.event(&[], "hoard serve restarted over the same store");
    }

    /// Crashes server `index` now: its actions are aborted, its process state is gone, its link
    /// never delivers again. A new incarnation starts after a random delay.
    pub(crate) fn crash(self: &Arc<Self>, index: usize) {
        let (link, server, tasks, incarnation) = {
            let mut servers = self.servers();
            let Some(slot) = servers.get_mut(index) else { return };
            let Some(server) = slot.server.take() else { return };
            (slot.link.clone(), server, std::mem::take(&mut slot.tasks), slot.incarnation)
        };
        for task in tasks {
            task.abort();
        }
        server.crash();
        link.kill();
        let players: Vec<usize> =
            self.players().iter().enumerate().filter(|(_, p)| p.at == Some(index)).map(|(i, _)| i).collect();
        for player in &players {
            self.set_location(*player, None);
        }
        self.stats().crashes += 1;
        self.audit.player_event(&players, &format!("CRASH s{index} incarnation {incarnation} (link{})", link.id()));
        let delay_ms = self.random().random_range(self.config.restart_ms_min..=self.config.restart_ms_max);
        let world = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            world.restart(index, incarnation + 1).await;
        });
    }

    async fn restart(self: &Arc<Self>, index: usize, incarnation: u64) {
        match self.open_incarnation(index, incarnation).await {
            Ok(slot) => {
                if let Some(current) = self.servers().get_mut(index) {
                    *current = slot;
                }
                self.stats().restarts += 1;
            }
            Err(error) => {
                // Opening retries the store itself; a server that still cannot start stays down.
                self.audit.event(&[], &format!("s{index} incarnation {incarnation} failed to start: {error}"));
            }
        }
    }

    /// Freezes server `index` for longer than a lease, moves its idle players elsewhere, then
    /// wakes it and has its stale sessions play and save.
    pub(crate) async fn freeze(self: Arc<Self>, index: usize) {
        let Some((link, server, incarnation)) = self
            .servers()
            .get(index)
            .and_then(|slot| slot.server.clone().map(|server| (slot.link.clone(), server, slot.incarnation)))
        else {
            return;
        };
        self.stats().pauses += 1;
        // Saves in flight when the freeze hits.
        let mut idle: Vec<usize> =
            self.players().iter().enumerate().filter(|(_, p)| !p.busy && p.at == Some(index)).map(|(i, _)| i).collect();
        for player in idle.iter().take(SAVES_IN_FLIGHT_AT_FREEZE_MAX).copied() {
            let Some(guard) = self.busy(&[player]) else { continue };
            let (world, game) = (self.clone(), server.clone());
            self.spawn_on(&[index], async move {
                let _guard = guard;
                world.save_and_acknowledge(&*game, player, index).await;
            });
        }
        let freeze_after_ms = self.random().random_range(0..=FREEZE_AFTER_SAVES_MS_MAX);
        tokio::time::sleep(Duration::from_millis(freeze_after_ms)).await;
        let pause_ms = self.random().random_range(self.config.pause_ms_min..=self.config.pause_ms_max);
        link.pause();
        server.set_frozen(true);
        if let Some(slot) = self.servers().get_mut(index) {
            slot.frozen = true;
        }
        self.audit.event(&[], &format!("FREEZE s{index} for {pause_ms} ms"));
        // Its players reconnect elsewhere (the server is frozen; the game client gives up on it).
        idle.retain(|p| self.players().get(*p).is_some_and(|slot| !slot.busy && slot.at == Some(index)));
        let mut moved = Vec::new();
        for player in idle {
            let targets: Vec<usize> = self.servers_up().into_iter().filter(|s| *s != index).collect();
            let Some(to) = self.pick(&targets) else { break };
            if !self.chance(RECONNECT_ELSEWHERE_PROBABILITY) {
                continue;
            }
            let Some(guard) = self.busy(&[player]) else { continue };
            moved.push(player);
            self.set_location(player, None);
            let world = self.clone();
            self.spawn_on(&[to], async move {
                let _guard = guard;
                let Some(game) = world.server(to) else { return };
                let result = game.join(player, true).await;
                if result.is_ok() {
                    world.set_location(player, Some(to));
                }
                world.audit.player_event(
                    &[player],
                    &format!("p{player} reconnects to s{to} while s{index} is frozen: {result:?}"),
                );
            });
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let same_incarnation =
            self.servers().get(index).is_some_and(|s| s.incarnation == incarnation && s.server.is_some());
        if !same_incarnation {
            return;
        }
        link.resume();
        server.set_frozen(false);
        if let Some(slot) = self.servers().get_mut(index) {
            slot.frozen = false;
        }
        self.audit.player_event(&moved, &format!("WAKE s{index}"));
        // The woken server still has the moved players' old sessions: it plays and saves them.
        for player in moved {
            let draw = self.draw_play();
            let (world, game) = (self.clone(), server.clone());
            self.spawn_on(&[index], async move {
                if game.update(player, &mut |profile| draw.apply(profile)).is_err() {
                    world.audit.player_event(&[player], &format!("p{player} stale session on s{index}: refused"));
                    return;
                }
                world.save_and_acknowledge(&*game, player, index).await;
            });
        }
    }
}
