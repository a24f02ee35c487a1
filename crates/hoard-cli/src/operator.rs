//! Operator commands: read, write, list, history, restore, release and prune, on any store.
//!
//! Invariant: every write an operator makes is a conditional commit like any other; writes to a
//! key a session holds are refused unless forced, and a forced write first fences the holder out,
//! so an operator can never be silently overwritten by (or overwrite) a live session. Only `put`,
//! `delete` and `increment` may create a database; every other command opens an existing hoard
//! database or refuses, creating nothing. Writes to hoard's internal stores (`hoard.*`: trade
//! records, receipts, idempotency records, API keys …) need `--write-internal-store`, since a
//! record made by hand there can forge or break a trade, a grant or a key. A write whose outcome
//! the store could not tell is read back before anything is reported.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use hoard::store::validate::parse_json_value;
use hoard::store::{
    Commit, CommitOutcome, Condition, DocId, Document, Key, ListQuery, SharedStore, StoreName, StoreOptions, ValueOp,
    VersionQuery, Write, get, open_store, resolve_unknown_commit, restore_version,
};
use hoard_server::auth::INTERNAL_STORE_PREFIX;
use serde_json::{Value, json};

use crate::Command;
use crate::output::{print_stderr, print_stdout, redacted_location};

/// Exit code when a condition failed (a conflict): distinct from errors, so scripts can tell.
const EXIT_CONFLICT: u8 = 3;

/// True for the commands that may create a database (the write commands that add data); every
/// other command opens an existing hoard database or refuses.
fn may_create_database(command: &Command) -> bool {
    matches!(command, Command::Put { .. } | Command::Delete { .. } | Command::Increment { .. })
}

/// The store and key a command writes, with its `--write-internal-store` flag; `None` for
/// commands that do not write a key.
fn written_store(command: &Command) -> Option<(&str, bool)> {
    match command {
        Command::Put { store, write_internal_store, .. }
        | Command::Delete { store, write_internal_store, .. }
        | Command::Increment { store, write_internal_store, .. }
        | Command::Restore { store, write_internal_store, .. }
        | Command::Release { store, write_internal_store, .. } => Some((store.as_str(), *write_internal_store)),
        _ => None,
    }
}

/// Refuses a write to an internal store without `--write-internal-store`, before the database is
/// even opened.
fn check_internal_store_write(command: &Command) -> Result<()> {
    match written_store(command) {
        Some((store, false)) if store.starts_with(INTERNAL_STORE_PREFIX) => bail!(
            "{store} is one of hoard's internal stores ({INTERNAL_STORE_PREFIX}*: trade records, receipts, \
             idempotency records, API keys …); a record made or changed by hand there can forge or break a trade, \
             a grant or a key, and nothing was written. Pass --write-internal-store if you mean to change it"
        ),
        _ => Ok(()),
    }
}

pub async fn run(location: &str, command: Command) -> Result<ExitCode> {
    check_internal_store_write(&command)?;
    let options = StoreOptions { must_exist: !may_create_database(&command), ..StoreOptions::default() };
    let store = open_store(location, options)
        .await
        .with_context(|| format!("cannot open the database {}", redacted_location(location)))?;
    match command {
        Command::Status => status(&store, location).await,
        Command::Get { store: name, key, version } => read(&store, &doc_id(&name, &key)?, version).await,
        Command::Put { store: name, key, value, if_version, if_absent, attributes, user_ids, force, .. } => {
            let id = doc_id(&name, &key)?;
            let value = parse_json_value(&read_value_argument(&value)?).context("the value must be JSON")?;
            let mut write = Write::put(id.clone(), value);
            if let Some(text) = attributes {
                match parse_json_value(&text).context("--attributes must be a JSON object")? {
                    Value::Object(map) => write = write.attributes(map),
                    _ => bail!("--attributes must be a JSON object, like '{{\"note\": \"gm grant\"}}'"),
                }
            }
            if let Some(user_ids) = user_ids {
                write = write.user_ids(user_ids);
            }
            let condition = match (if_version, if_absent) {
                (Some(version), _) => Some(Condition::Version(version)),
                (None, true) => Some(Condition::Absent),
                (None, false) => None,
            };
            operator_write(&store, write, condition, force).await
        }
        Command::Delete { store: name, key, if_version, force, .. } => {
            let write = Write::delete(doc_id(&name, &key)?);
            operator_write(&store, write, if_version.map(Condition::Version), force).await
        }
        Command::Increment { store: name, key, by, .. } => {
            operator_write(&store, Write::new(doc_id(&name, &key)?).value(ValueOp::Increment(by)), None, false).await
        }
        Command::List { store: name, prefix, after, limit } => {
            let store_name = StoreName::new(name).context("invalid store name")?;
            let after = after.map(Key::new).transpose().context("invalid --after key")?;
            let page = store.list_keys(&store_name, &ListQuery { prefix, after, limit }).await?;
            print_json(&json!({
                "keys": page.keys.iter().map(Key::as_str).collect::<Vec<_>>(),
                "next_after": page.next_after.as_ref().map(Key::as_str),
            }))
        }
        Command::History { store: name, key, before, limit } => {
            let versions =
                store.list_versions(&doc_id(&name, &key)?, &VersionQuery { before_version: before, limit }).await?;
            print_json(&serde_json::to_value(versions)?)
        }
        Command::Restore { store: name, key, version, force, .. } => {
            let id = doc_id(&name, &key)?;
            if force {
                fence_out_holder(&store, &id).await?;
            }
            let outcome = restore_version(&*store, &id, version, Condition::LeaseFree).await?;
            report(outcome, "restore refused: a session holds the key; use --force to take it from its holder first")
        }
        Command::Release { store: name, key, .. } => {
            let id = doc_id(&name, &key)?;
            let released = fence_out_holder(&store, &id).await?;
            print_json(&json!({ "released": released }))
        }
        Command::Bench(_) => bail!("bench is not an operator command"),
        Command::Prune => {
            let pruned = store.prune_history().await?;
            print_json(&json!({ "pruned_versions": pruned }))
        }
        // `main` runs `serve` itself; it is not an operator command.
        Command::Serve(_) => bail!("serve is not an operator command"),
        Command::Sim(_) => bail!("sim is not an operator command"),
        Command::FindUser { .. }
        | Command::FindItem { .. }
        | Command::Index { .. }
        | Command::Top { .. }
        | Command::Erase { .. }
        | Command::Audit { .. }
        | Command::Trade(_) => crate::liveops::run(&store, command).await,
    }
}

fn doc_id(store: &str, key: &str) -> Result<DocId> {
    Ok(DocId::new(StoreName::new(store).context("invalid store name")?, Key::new(key).context("invalid key")?))
}

fn read_value_argument(argument: &str) -> Result<String> {
    if argument != "-" {
        return Ok(argument.to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the value from standard input (it must be UTF-8)")?;
    Ok(text)
}

fn print_json(value: &Value) -> Result<ExitCode> {
    print_stdout(&format!("{}\n", serde_json::to_string_pretty(value)?))?;
    Ok(ExitCode::SUCCESS)
}

fn document_json(document: &Document) -> Value {
    json!({
        "store": document.id.store.as_str(),
        "key": document.id.key.as_str(),
        "exists": document.exists(),
        "value": document.value,
        "version": document.version,
        "created_at_ms": document.created_at_ms,
        "updated_at_ms": document.updated_at_ms,
        "attributes": document.attributes,
        "user_ids": document.user_ids,
        "lease": { "holder": document.lease.holder.as_ref().map(|h| h.as_str()), "epoch": document.lease.epoch },
        "inbox": document.inbox,
    })
}

async fn status(store: &SharedStore, location: &str) -> Result<ExitCode> {
    let now_ms = store.now_ms().await?;
    print_json(&json!({
        "backend": store.backend_name(),
        "location": redacted_location(location),
        "store_clock_ms": now_ms,
        "limits": serde_json::to_value(store.limits())?,
    }))
}

async fn read(store: &SharedStore, id: &DocId, version: Option<u64>) -> Result<ExitCode> {
    match version {
        None => {
            let document = get(&**store, id).await?;
            print_json(&document_json(&document))
        }
        Some(version) => match store.get_version(id, version).await? {
            Some(record) => print_json(&serde_json::to_value(record)?),
            None => bail!("version {version} of {id} is not in history (never written, or pruned)"),
        },
    }
}

/// Takes the key from its holder (see `hoard::store::force_release`).
async fn fence_out_holder(store: &SharedStore, id: &DocId) -> Result<bool> {
    match hoard::store::force_release(&**store, id).await? {
        Ok(holder) => Ok(holder.is_some()),
        Err(conflict) => bail!("the key changed hands while releasing it ({conflict}); run the command again"),
    }
}

async fn operator_write(
    store: &SharedStore,
    write: Write,
    condition: Option<Condition>,
    force: bool,
) -> Result<ExitCode> {
    if force {
        fence_out_holder(store, &write.id).await?;
    }
    // An operator write never lands under a live session: its own condition, if any, and no
    // live holder, checked together inside the commit.
    let condition = match condition {
        Some(condition) => Condition::All(vec![condition, Condition::LeaseFree]),
        None => Condition::LeaseFree,
    };
    let held_message = "write refused: a session holds the key; use --force to take it from its holder first";
    let commit = Commit::single(write.when(condition));
    // What reading back needs (id, keys, kinds of change), without a copy of the value.
    let trace = commit.trace();
    match store.commit(commit).await {
        Ok(outcome) => report(outcome, held_message),
        Err(error) if error.may_have_applied() => report_unknown_outcome(store, &trace, &error).await,
        Err(error) => Err(error.into()),
    }
}

/// The store could not tell whether the write applied (its COMMIT failed: a full disk, a lost
/// connection): read back and say which, with the store's reason.
async fn report_unknown_outcome(
    store: &SharedStore,
    commit: &Commit,
    error: &hoard::store::StoreError,
) -> Result<ExitCode> {
    let applied = resolve_unknown_commit(&**store, commit).await.with_context(|| {
        format!("{error}; reading back to find out whether the write applied failed too: run `hoard get` to see")
    })?;
    match applied {
        Some(true) => {
            print_stderr(&format!("the store reported an error after writing ({error}); read back: the write applied"));
            print_json(&json!({ "committed": true, "commit_id": commit.id.to_string(), "read_back": true }))
        }
        Some(false) => bail!("the write was not applied (read back: the key does not have it): {error}"),
        None => bail!("{error}; whether the write applied cannot be told by reading back: run `hoard get` to see"),
    }
}

fn report(outcome: CommitOutcome, held_message: &str) -> Result<ExitCode> {
    match outcome {
        CommitOutcome::Committed { applied, commit_id, .. } => print_json(&json!({
            "committed": true,
            "commit_id": commit_id.to_string(),
            "version": applied.first().map(|a| a.version),
        })),
        CommitOutcome::Conflict(conflict) => {
            if conflict.kind == hoard::store::ConflictKind::LeaseHeld {
                print_stderr(held_message);
            } else {
                print_stderr(&format!("conflict: {conflict}"));
            }
            Ok(ExitCode::from(EXIT_CONFLICT))
        }
    }
}
