//! Operator grants as inbox messages: the one format `hoard serve`'s grant route pushes
//! (`{"hoard_grant": {...}}`, `OperatorGrant`) and how a game's `on_message` handler applies one
//! to the profile's `Holdings` (`apply_grant_message`).
//!
//! Invariants:
//! - The route builds its message with `OperatorGrant::message` and handlers read it with
//!   `OperatorGrant::from_message`, so the two cannot drift.
//! - Applying is pure and changes only the holdings: currencies by their amounts, a take never
//!   below zero (a take larger than the balance takes the balance and reports the shortfall, and
//!   a balance already below zero is not lowered); granted items added unless already held (a
//!   held id is left as it is); taken items removed if held. Every part of a grant that could
//!   not apply is reported, never dropped silently.
//! - Exactly once is the inbox's promise, not this module's: the route pushes a grant id at most
//!   once (`hoard.grants`, `Condition::Absent`), and a session applies each message once and
//!   acknowledges it in the save that holds its changes (G7).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::engine::trade::Holdings;
use crate::store::InboxMessage;

/// The field of an inbox message body that holds an operator grant.
pub const GRANT_MESSAGE_FIELD: &str = "hoard_grant";

/// An operator's grant (or, with negative amounts and `take_items`, a take).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorGrant {
    /// Unique per grant; the route pushes one message per grant id.
    pub grant_id: String,
    /// Currency name → amount (negative takes).
    #[serde(default)]
    pub currencies: BTreeMap<String, i64>,
    /// Item id → item data to add.
    #[serde(default)]
    pub items: BTreeMap<String, Value>,
    /// Item ids to take.
    #[serde(default)]
    pub take_items: Vec<String>,
    /// The API key (or operator) that granted it.
    #[serde(default)]
    pub by: String,
}

/// What applying a grant changed, and what of it could not apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantApplied {
    pub grant_id: String,
    /// Currency → the change made (a take stops at a zero balance).
    pub currencies: BTreeMap<String, i64>,
    /// Currency → the part of a take the balance did not cover.
    pub shortfall: BTreeMap<String, i64>,
    pub items_added: Vec<String>,
    /// Granted item ids the profile already held (left as they were).
    pub items_already_held: Vec<String>,
    pub items_taken: Vec<String>,
    /// Item ids to take that the profile did not hold.
    pub items_not_held: Vec<String>,
}

/// A message that carries `hoard_grant` but not in the grant's shape.
#[derive(Debug, Error)]
#[error("inbox message {seq} carries a malformed {GRANT_MESSAGE_FIELD}: {reason}")]
pub struct MalformedGrant {
    pub seq: u64,
    pub reason: String,
}

impl OperatorGrant {
    /// The inbox message body the grant route pushes.
    pub fn message(&self) -> Value {
        json!({ GRANT_MESSAGE_FIELD: self })
    }

    /// The grant a message body carries: at its top (as the grant route pushes it) or inside the
    /// engine's envelope (`Engine::send_message`'s `{"message_id", "body"}`). `Ok(None)`: the
    /// message is not a grant.
    pub fn from_message(message: &InboxMessage) -> Result<Option<OperatorGrant>, MalformedGrant> {
        let body = &message.body;
        let Some(grant) =
            body.get(GRANT_MESSAGE_FIELD).or_else(|| body.get("body").and_then(|inner| inner.get(GRANT_MESSAGE_FIELD)))
        else {
            return Ok(None);
        };
        serde_json::from_value(grant.clone())
            .map(Some)
            .map_err(|error| MalformedGrant { seq: message.seq, reason: error.to_string() })
    }

    /// Applies the grant to `holdings` (see the module's invariants).
    pub fn apply_to(&self, holdings: &mut Holdings) -> GrantApplied {
        let mut applied = GrantApplied { grant_id: self.grant_id.clone(), ..GrantApplied::default() };
        for (currency, amount) in &self.currencies {
            let held = holdings.currencies.get(currency).copied();
            let balance = held.unwrap_or(0);
            let wanted = balance.saturating_add(*amount);
            // A take stops at zero (and never lowers a balance that is already below it).
            let next = if *amount < 0 { wanted.max(balance.min(0)) } else { wanted };
            if next > wanted {
                applied.shortfall.insert(currency.clone(), next.saturating_sub(wanted));
            }
            if held.is_some() || next != 0 {
                holdings.currencies.insert(currency.clone(), next);
            }
            applied.currencies.insert(currency.clone(), next.saturating_sub(balance));
        }
        for (item, data) in &self.items {
            if holdings.items.contains_key(item) {
                applied.items_already_held.push(item.clone());
            } else {
                holdings.items.insert(item.clone(), data.clone());
                applied.items_added.push(item.clone());
            }
        }
        for item in &self.take_items {
            match holdings.items.remove(item) {
                Some(_) => applied.items_taken.push(item.clone()),
                None => applied.items_not_held.push(item.clone()),
            }
        }
        applied
    }
}

/// For a `ProfileKind::on_message` handler: applies `message` to `holdings` if it is an operator
/// grant (`Ok(None)` if it is some other message, for the game's own handling).
pub fn apply_grant_message(
    holdings: &mut Holdings,
    message: &InboxMessage,
) -> Result<Option<GrantApplied>, MalformedGrant> {
    Ok(OperatorGrant::from_message(message)?.map(|grant| grant.apply_to(holdings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: Value) -> InboxMessage {
        InboxMessage { seq: 7, body, sent_at_ms: 0 }
    }

    fn holdings(coins: i64, items: &[&str]) -> Holdings {
        Holdings {
            currencies: BTreeMap::from([("coins".to_string(), coins)]),
            items: items.iter().map(|item| (item.to_string(), json!({}))).collect(),
            ..Holdings::default()
        }
    }

    #[test]
    fn grant_adds_currency_and_items_and_takes_held_items() {
        let grant = OperatorGrant {
            grant_id: "g-1".into(),
            currencies: BTreeMap::from([("coins".into(), 100), ("gems".into(), 5)]),
            items: BTreeMap::from([("sword-9".into(), json!({"level": 3}))]),
            take_items: vec!["cursed-1".into()],
            by: "support".into(),
        };
        let mut held = holdings(20, &["cursed-1"]);
        let applied = apply_grant_message(&mut held, &message(grant.message())).expect("well formed").expect("a grant");
        assert_eq!(held.currencies, BTreeMap::from([("coins".into(), 120), ("gems".into(), 5)]));
        assert_eq!(held.items, BTreeMap::from([("sword-9".into(), json!({"level": 3}))]));
        assert_eq!((applied.items_added, applied.items_taken), (vec!["sword-9".into()], vec!["cursed-1".into()]));
        assert!(applied.shortfall.is_empty() && applied.items_not_held.is_empty());
    }

    #[test]
    fn take_stops_at_zero_and_reports_what_it_could_not_take() {
        let grant = OperatorGrant {
            grant_id: "t-1".into(),
            currencies: BTreeMap::from([("coins".into(), -50)]),
            items: BTreeMap::from([("sword-1".into(), json!({"new": true}))]),
            take_items: vec!["gone-1".into()],
            ..OperatorGrant::default()
        };
        let mut held = holdings(30, &["sword-1"]);
        let applied = grant.apply_to(&mut held);
        assert_eq!(held.currencies["coins"], 0, "no balance goes negative");
        assert_eq!((applied.currencies["coins"], applied.shortfall["coins"]), (-30, 20));
        assert_eq!(held.items["sword-1"], json!({}), "a held item is left as it was");
        assert_eq!(applied.items_already_held, vec!["sword-1".to_string()]);
        assert_eq!(applied.items_not_held, vec!["gone-1".to_string()]);
    }

    #[test]
    fn take_never_lowers_a_balance_below_zero_and_a_grant_to_it_adds_only_its_amount() {
        let take = OperatorGrant {
            grant_id: "t-2".into(),
            currencies: BTreeMap::from([("coins".into(), -10), ("gems".into(), -1)]),
            ..OperatorGrant::default()
        };
        let mut held = holdings(-5, &[]);
        let applied = take.apply_to(&mut held);
        assert_eq!(held.currencies, BTreeMap::from([("coins".into(), -5)]), "no new currency at zero");
        assert_eq!(applied.shortfall, BTreeMap::from([("coins".into(), 10), ("gems".into(), 1)]));
        let grant = OperatorGrant {
            grant_id: "g-4".into(),
            currencies: BTreeMap::from([("coins".into(), 3)]),
            ..OperatorGrant::default()
        };
        grant.apply_to(&mut held);
        assert_eq!(held.currencies["coins"], -2);
    }

    #[test]
    fn grant_is_read_at_the_top_or_inside_the_engine_envelope_and_other_messages_are_not_grants() {
        let grant = OperatorGrant { grant_id: "g-2".into(), ..OperatorGrant::default() };
        let top = OperatorGrant::from_message(&message(grant.message())).expect("well formed");
        let enveloped = message(json!({"message_id": "h/1", "body": grant.message()}));
        let inside = OperatorGrant::from_message(&enveloped).expect("well formed");
        assert_eq!((top.as_ref(), inside.as_ref()), (Some(&grant), Some(&grant)));
        let gift = message(json!({"message_id": "h/2", "body": {"gift": "rose"}}));
        assert!(OperatorGrant::from_message(&gift).expect("not a grant is no error").is_none());
        let bad = message(json!({"hoard_grant": {"grant_id": "g-3", "currencies": {"coins": "lots"}}}));
        let error = OperatorGrant::from_message(&bad).expect_err("malformed");
        assert_eq!(error.seq, 7);
    }
}
