//! The simulated game's data: the player profile every strategy stores, the values that enter
//! the world (found items, gifts, purchases, guild deposits), and where they live in the store.
//!
//! Invariant: every item id and every coin in a profile can be traced to its birth *inside the
//! same profile document*: `minted` lists the items born there (found, gifted, bought) and the
//! `earned`/`granted`/`gifted`/`spent` counters the coins. Trades move holdings, never these
//! records, so the audit can check conservation from durable state alone: each born item held by
//! exactly one profile, and all balances (plus guild banks) equal to coins born minus coins spent.

use std::collections::BTreeMap;

use hoard::engine::{Holdings, ProfileKind, ProfileSchema, Tradable};
use hoard::store::{DocId, InboxMessage, Key, StoreName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Named store of player profiles.
pub const PLAYER_STORE: &str = "sim.players";
/// Named store of guild banks (lock-free shared documents).
pub const GUILD_STORE: &str = "sim.guild";
/// Named store of the skewed-clock control's lock documents.
pub const LOCK_STORE: &str = "sim.locks";
/// The one currency of the simulated game.
pub const COINS: &str = "coins";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimProfile {
    pub holdings: Holdings,
    /// Bumped by every play action: the acknowledged value must never be lost (G2).
    pub progress: u64,
    /// Item ids born in this profile (found, gifted or bought). Trades never move this list.
    pub minted: Vec<String>,
    pub earned: i64,
    pub spent: i64,
    pub granted: i64,
    pub gifted: i64,
    /// Gift ids applied here: each sent gift must show up exactly once in the whole world (G7).
    pub gifts: Vec<String>,
    /// Purchase ids granted here: each at most once in the whole world (G4).
    pub purchases: Vec<String>,
}

impl Tradable for SimProfile {
    fn holdings(&self) -> &Holdings {
        &self.holdings
    }
    fn holdings_mut(&mut self) -> &mut Holdings {
        &mut self.holdings
    }
}

impl SimProfile {
    pub fn coins(&self) -> i64 {
        self.holdings.currencies.get(COINS).copied().unwrap_or(0)
    }

    pub fn add_coins(&mut self, amount: i64) {
        *self.holdings.currencies.entry(COINS.to_string()).or_insert(0) += amount;
    }

    pub fn mint(&mut self, item_id: &str, kind: &str) {
        self.holdings.items.insert(item_id.to_string(), json!({ "kind": kind }));
        self.minted.push(item_id.to_string());
    }

    /// Coins that entered the world in this profile, minus coins that left it.
    pub fn coins_born_minus_spent(&self) -> i64 {
        self.earned + self.granted + self.gifted - self.spent
    }
}

/// A gift sent through a player's inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gift {
    pub gift_id: String,
    pub coins: i64,
    pub item: Option<String>,
}

/// A purchase delivered as a receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub purchase_id: String,
    pub coins: i64,
    pub item: String,
}

/// The field of an inbox envelope holding the message (as the engine's `send_message` wraps it).
pub const INBOX_BODY_FIELD: &str = "body";

pub fn apply_gift(profile: &mut SimProfile, gift: &Gift) {
    profile.gifts.push(gift.gift_id.clone());
    profile.add_coins(gift.coins);
    profile.gifted += gift.coins;
    if let Some(item) = &gift.item {
        profile.mint(item, "gift");
    }
}

/// Reads a gift out of an inbox message envelope (`{"message_id", "body": gift}`).
pub fn gift_of_message(body: &Value) -> Option<Gift> {
    serde_json::from_value(body.get(INBOX_BODY_FIELD)?.clone()).ok()
}

pub fn apply_message(profile: &mut SimProfile, message: &InboxMessage) {
    if let Some(gift) = gift_of_message(&message.body) {
        apply_gift(profile, &gift);
    }
}

pub fn apply_purchase(profile: &mut SimProfile, purchase: &Purchase) {
    profile.purchases.push(purchase.purchase_id.clone());
    profile.add_coins(purchase.coins);
    profile.granted += purchase.coins;
    profile.mint(&purchase.item, "purchase");
}

/// The profile kind every strategy uses: the same stored envelope, the same inbox handler.
pub fn profile_kind() -> Result<ProfileKind<SimProfile>, String> {
    let store = StoreName::new(PLAYER_STORE).map_err(|e| e.to_string())?;
    // Tradable: the engine settles a player's pending cross-server trades on load, when a
    // decision arrives, and at the deadline.
    Ok(ProfileKind::new(store, ProfileSchema::new(SimProfile::default)).on_message(apply_message).tradable())
}

/// Where one world's documents live. Memory worlds use the seed alone (replayable); worlds on a
/// real database add a run tag so reruns of a seed never meet an earlier run's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
}

impl Names {
    pub fn player_key(&self, player: usize) -> String {
        format!("{}-p{player}", self.namespace)
    }

    pub fn player_id(&self, player: usize) -> Result<DocId, String> {
        doc_id(PLAYER_STORE, &self.player_key(player))
    }

    pub fn bank_id(&self, bank: usize) -> Result<DocId, String> {
        doc_id(GUILD_STORE, &format!("{}-bank{bank}", self.namespace))
    }

    pub fn lock_id(&self, player: usize) -> Result<DocId, String> {
        doc_id(LOCK_STORE, &self.player_key(player))
    }

    /// Player index of a profile key of this world.
    pub fn player_of(&self, id: &DocId) -> Option<usize> {
        if id.store.as_str() != PLAYER_STORE {
            return None;
        }
        id.key.as_str().strip_prefix(&self.namespace)?.strip_prefix("-p")?.parse().ok()
    }
}

pub fn doc_id(store: &str, key: &str) -> Result<DocId, String> {
    Ok(DocId::new(StoreName::new(store).map_err(|e| e.to_string())?, Key::new(key).map_err(|e| e.to_string())?))
}

/// Decodes a stored profile envelope (`{"hoard_profile": .., "data": profile}`).
pub fn decode_stored_profile(value: &Value) -> Result<SimProfile, String> {
    let data = value.get(hoard::engine::schema::ENVELOPE_DATA_FIELD).unwrap_or(value);
    serde_json::from_value(data.clone()).map_err(|e| e.to_string())
}

/// A guild bank's stored value: `{"coins": n}` in process (a lock-free document), or holdings
/// `{"holdings": {"currencies": {"coins": n}}}` over HTTP (a trade party); absent counts as empty.
pub fn bank_coins(value: Option<&Value>) -> i64 {
    value
        .and_then(|v| v.get(COINS).or_else(|| v.pointer(&format!("/holdings/currencies/{COINS}"))))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// One trade as the world asks for it: legs by index into `players`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTrade {
    pub trade_id: String,
    pub players: Vec<usize>,
    pub legs: Vec<hoard::engine::TradeLeg>,
}

/// Applies a trade's legs to in-memory profiles (for the controls, which have no engine);
/// refuses on a missing item or short balance, changing nothing.
pub fn apply_trade_legs(profiles: &mut [SimProfile], trade: &SimTrade) -> Result<(), String> {
    let mut next: Vec<SimProfile> = profiles.to_vec();
    for leg in &trade.legs {
        let (Some(_), Some(_)) = (next.get(leg.from), next.get(leg.to)) else { return Err("bad leg".into()) };
        let amount: i64 = leg.currencies.values().sum();
        if next[leg.from].coins() < amount {
            return Err("short balance".into());
        }
        next[leg.from].add_coins(-amount);
        next[leg.to].add_coins(amount);
        for item in &leg.items {
            let data = next[leg.from].holdings.items.remove(item).ok_or("item not held")?;
            next[leg.to].holdings.items.insert(item.clone(), data);
        }
    }
    profiles.clone_from_slice(&next);
    Ok(())
}

/// Coins by currency for a trade leg.
pub fn coins_map(amount: i64) -> BTreeMap<String, i64> {
    if amount > 0 { BTreeMap::from([(COINS.to_string(), amount)]) } else { BTreeMap::new() }
}
