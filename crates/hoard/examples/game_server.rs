//! A Rust game server using hoard: sessions, a trade, a purchase, a gift and shutdown, on the
//! embedded SQLite store. Run with `cargo run -p hoard --example game_server`.

use std::collections::BTreeMap;
use std::time::Duration;

use hoard::engine::{
    Engine, EngineConfig, Holdings, ProfileKind, ProfileSchema, ReceiptOutcome, Tradable, Trade, TradeLeg, TradeOutcome,
};
use hoard::store::{StoreName, StoreOptions, open_store};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Player {
    level: u32,
    holdings: Holdings,
    #[serde(default)]
    mail: Vec<String>,
}

impl Tradable for Player {
    fn holdings(&self) -> &Holdings {
        &self.holdings
    }
    fn holdings_mut(&mut self) -> &mut Holdings {
        &mut self.holdings
    }
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let folder = tempfile::tempdir()?;
    let location = folder.path().join("game.sqlite3");
    let store = open_store(&location.to_string_lossy(), StoreOptions::default()).await?;
    let engine =
        Engine::open(store, EngineConfig { server_label: "example".into(), ..EngineConfig::default() }).await?;

    // How this game's profiles look, where they live, and how gifts change them.
    let schema = ProfileSchema::new(|| {
        let mut player = Player { level: 1, ..Player::default() };
        player.holdings.currencies.insert("coins".into(), 100);
        player
    });
    let players = ProfileKind::new(StoreName::new("players")?, schema).on_message(|player: &mut Player, message| {
        let note = message.body["body"]["note"].as_str().unwrap_or("a gift").to_string();
        player.mail.push(note);
    });

    // Two players join; their profiles are created from the template.
    let alice = engine.start_session(&players, "alice").await?;
    let bob = engine.start_session(&players, "bob").await?;
    alice.update(|p| {
        p.holdings.items.insert("sword-0001".into(), json!({"kind": "sword"}));
    })?;

    // A trade: the sword for 40 coins, atomically, idempotent by its id.
    let trade = Trade {
        id: "trade-0001".into(),
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec!["sword-0001".into()], currencies: BTreeMap::new() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: BTreeMap::from([("coins".into(), 40)]) },
        ],
    };
    match engine.trade(&[&alice, &bob], &trade).await? {
        TradeOutcome::Committed(record) => println!("trade {} committed", record.trade_id),
        TradeOutcome::AlreadyCommitted(record) => println!("trade {} was already done", record.trade_id),
    }

    // A purchase: granted exactly once, however often the platform calls.
    for _delivery in 0..2 {
        let outcome = engine
            .process_receipt(&bob, "purchase-77", json!({"product": "gems-100"}), |p: &mut Player| {
                *p.holdings.currencies.entry("gems".into()).or_insert(0) += 100;
                Ok(())
            })
            .await;
        match outcome {
            ReceiptOutcome::Granted => println!("purchase granted"),
            ReceiptOutcome::AlreadyGranted => println!("purchase already granted"),
            other => println!("purchase not granted: {other:?}"),
        }
    }

    // A gift to a player who is online here (it would wait in the inbox if they were offline).
    engine.send_message(alice.id(), json!({"note": "welcome back"})).await?;
    alice.check_inbox().await?;

    let coins = |p: &Player| p.holdings.currencies.get("coins").copied().unwrap_or(0);
    println!("alice: {} coins, mail {:?}", alice.read(coins), alice.read(|p| p.mail.clone()));
    println!(
        "bob: {} coins, items {:?}",
        bob.read(coins),
        bob.read(|p| p.holdings.items.keys().cloned().collect::<Vec<_>>())
    );

    // Shutdown saves and releases every session, in parallel, within the deadline.
    let report = engine.shutdown(Duration::from_secs(30)).await;
    println!("shutdown saved {} sessions, {} failed", report.saved.len(), report.failed.len());
    Ok(())
}
