//! Live-operations commands: find keys by user id, find who holds an item, declare an index,
//! read a leaderboard, erase a user's data, read the audit log, inspect cross-server trades.
//!
//! Invariant: they call the same library functions as `hoard serve`'s `/v1/ops` routes
//! (`hoard::liveops`, `OperatorStore`), so the CLI and the API cannot disagree; erasure and index
//! declarations are recorded in the audit log under the operating-system user running the CLI.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use hoard::liveops::erase::erase_user;
use hoard::liveops::trades::{escrowed_trades, trade_view};
use hoard::liveops::{AuditEntry, append_audit, list_audit, operator_of};
use hoard::store::index::{IndexDecl, IndexKind};
use hoard::store::{DocId, Key, SharedStore, StoreName};
use serde_json::json;

use crate::{Command, TradeCommand};

/// Who is operating: `cli:$USER`.
fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

fn print_json(value: &serde_json::Value) -> Result<ExitCode> {
    crate::output::print_stdout(&format!("{}\n", serde_json::to_string_pretty(value)?))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(store: &SharedStore, command: Command) -> Result<ExitCode> {
    if let Command::Trade(command) = command {
        return trade(store, command).await;
    }
    let operator = operator_of(&**store)?;
    match command {
        Command::FindUser { user_id, after_store, after_key, limit } => {
            let after = match (after_store, after_key) {
                (Some(store), Some(key)) => {
                    Some(DocId::parse(&store, &key).context("invalid --after-store/--after-key")?)
                }
                (None, None) => None,
                _ => bail!("give both --after-store and --after-key, or neither"),
            };
            let page = operator.keys_by_user_id(&user_id, after.as_ref(), limit).await?;
            print_json(&json!({ "ids": page.ids, "next_after": page.next_after }))
        }
        Command::FindItem { store: name, index, member, after, limit } => {
            let name = StoreName::new(name).context("invalid store name")?;
            let after = after.map(Key::new).transpose().context("invalid --after key")?;
            let keys = operator.keys_by_member(&name, &index, &member, after.as_ref(), limit).await?;
            print_json(&json!({ "keys": keys }))
        }
        Command::Index { store: name, name: index, kind, path } => {
            let decl = IndexDecl {
                store: StoreName::new(name).context("invalid store name")?,
                name: index,
                kind: IndexKind::parse(&kind)?,
                path,
            };
            let indexed = operator.declare_index(decl.clone()).await?;
            let entry = AuditEntry {
                actor: actor(),
                action: "declare_index".into(),
                target: None,
                version_before: None,
                version_after: None,
                detail: format!("{}: {} {} {}", decl.store, decl.name, kind, decl.path),
                at_ms: 0,
            };
            append_audit(&**store, entry).await?;
            print_json(&json!({ "indexed": indexed }))
        }
        Command::Top { store: name, index, limit } => {
            let name = StoreName::new(name).context("invalid store name")?;
            print_json(&json!({ "entries": operator.index_top(&name, &index, None, limit).await? }))
        }
        Command::Erase { user_id, reason } => {
            let tombstone = erase_user(&**store, &user_id, &actor(), &reason).await?;
            let entry = AuditEntry {
                actor: actor(),
                action: "erase".into(),
                target: None,
                version_before: None,
                version_after: None,
                detail: format!("erasure {}: {} documents", tombstone.erasure_id, tombstone.documents_erased),
                at_ms: 0,
            };
            append_audit(&**store, entry).await?;
            print_json(&serde_json::to_value(tombstone)?)
        }
        Command::Audit { after, limit } => {
            let after = after.map(Key::new).transpose().context("invalid --after")?;
            let (entries, next_after) = list_audit(&**store, after, limit).await?;
            let entries: Vec<_> = entries.into_iter().map(|(id, entry)| json!({ "id": id, "entry": entry })).collect();
            print_json(&json!({ "entries": entries, "next_after": next_after }))
        }
        _ => bail!("not a live-operations command"),
    }
}

/// `hoard trade show` and `hoard trade stuck`: the answers of `/v1/ops/trades/{id}` and
/// `/v1/ops/trades?stuck=true`.
async fn trade(store: &SharedStore, command: TradeCommand) -> Result<ExitCode> {
    match command {
        TradeCommand::Show { trade_id } => match trade_view(&**store, &trade_id).await? {
            Some(view) => print_json(&json!({ "trade": view })),
            None => bail!("there is no trade {trade_id:?}"),
        },
        TradeCommand::Stuck { after, limit } => {
            print_json(&serde_json::to_value(escrowed_trades(&**store, after.as_deref(), limit).await?)?)
        }
    }
}
