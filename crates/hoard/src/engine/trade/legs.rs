//! Moving value in a trade, pure: checking a trade's shape against the named limits, and applying
//! its legs to the parties' holdings. Shared by the engine and `hoard serve`, so both move value
//! the same way.
//!
//! Invariants: an item moves from exactly the party that holds it to exactly one other; no
//! balance goes negative or overflows; any refusal leaves the caller to discard the copies it
//! passed (nothing here touches memory a player sees, or the store).

use std::collections::BTreeSet;

use crate::store::DocId;

use super::{Holdings, TRADE_ID_BYTES_MAX, TRADE_ITEMS_MAX, TRADE_LEGS_MAX, Tradable, Trade, TradeError};

/// Checks a trade's shape against the named limits, for `parties` parties.
pub fn check_shape(trade: &Trade, parties: usize) -> Result<(), TradeError> {
    let invalid = |reason: String| Err(TradeError::Invalid { reason });
    if trade.id.is_empty() || trade.id.len() > TRADE_ID_BYTES_MAX || trade.id.contains('/') {
        return invalid(format!("trade id must be 1 to {TRADE_ID_BYTES_MAX} bytes without '/'"));
    }
    if trade.legs.is_empty() || trade.legs.len() > TRADE_LEGS_MAX {
        return invalid(format!("a trade has 1 to {TRADE_LEGS_MAX} legs"));
    }
    let mut items = BTreeSet::new();
    for leg in &trade.legs {
        if leg.from >= parties || leg.to >= parties || leg.from == leg.to {
            return invalid(format!("leg {} → {} must join two different parties of {parties}", leg.from, leg.to));
        }
        if leg.items.is_empty() && leg.currencies.is_empty() {
            return invalid("a leg moves at least one item or currency".into());
        }
        for (currency, amount) in &leg.currencies {
            if *amount <= 0 || currency.is_empty() {
                return invalid(format!(
                    "currency amounts are positive integers with a name (got {currency:?} {amount})"
                ));
            }
        }
        for item in &leg.items {
            if !items.insert(item.clone()) {
                return invalid(format!("item {item} is given twice"));
            }
        }
    }
    if items.len() > TRADE_ITEMS_MAX {
        return invalid(format!("a trade moves at most {TRADE_ITEMS_MAX} items"));
    }
    Ok(())
}

/// Applies the legs to the parties' holdings, refusing on any missing item or short balance.
pub(super) fn apply_legs<P: Tradable>(profiles: &mut [P], parties: &[DocId], trade: &Trade) -> Result<(), TradeError> {
    let mut holdings: Vec<&mut Holdings> = profiles.iter_mut().map(Tradable::holdings_mut).collect();
    apply_legs_to_holdings(&mut holdings, parties, trade)
}

/// Applies the legs to the parties' holdings (in the order of `parties`), refusing on any missing
/// item or short balance. Shared by the engine and `hoard serve`, so both move value the same way.
/// Call `check_shape` first; a leg naming a party out of range is refused here too.
pub fn apply_legs_to_holdings(
    holdings: &mut [&mut Holdings],
    parties: &[DocId],
    trade: &Trade,
) -> Result<(), TradeError> {
    if holdings.len() != parties.len() {
        return Err(TradeError::Invalid { reason: "one holdings per party".into() });
    }
    for leg in &trade.legs {
        if leg.from >= parties.len() || leg.to >= parties.len() {
            return Err(TradeError::Invalid { reason: format!("leg {} → {} names no party", leg.from, leg.to) });
        }
        let party = |index: usize| parties[index].clone();
        for (currency, amount) in &leg.currencies {
            let giver = &mut holdings[leg.from];
            // A currency the giver never had is a balance of zero.
            let balance = giver.currencies.get(currency).copied().unwrap_or(0);
            if balance < *amount {
                return Err(TradeError::InsufficientBalance {
                    party: party(leg.from),
                    currency: currency.clone(),
                    balance,
                    amount: *amount,
                });
            }
            giver.currencies.insert(currency.clone(), balance - amount);
            let taker = &mut holdings[leg.to];
            let entry = taker.currencies.entry(currency.clone()).or_insert(0);
            *entry =
                entry.checked_add(*amount).ok_or_else(|| TradeError::Invalid { reason: "balance overflow".into() })?;
        }
        for item in &leg.items {
            let data = holdings[leg.from]
                .items
                .remove(item)
                .ok_or_else(|| TradeError::ItemNotHeld { party: party(leg.from), item: item.clone() })?;
            holdings[leg.to].items.insert(item.clone(), data);
        }
    }
    Ok(())
}
