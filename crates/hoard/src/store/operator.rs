//! `OperatorStore`: the narrow trait of live-operations lookups a backend answers from its own
//! index rows (user id → keys, declared JSON-path indexes) and the one purge erasure needs.
//!
//! Invariant: index rows change only in the transaction of the commit that changed the document
//! (see `store::index`); `purge_history` removes every superseded version of a key and nothing
//! else. Everything else operators do (audit log, tombstones, erasure requests) is documents in
//! `hoard.*` stores written through `Store::commit`, so it works on every backend unchanged.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::error::{InvalidInput, StoreError};
use super::index::{INDEX_PAGE_ENTRIES_MAX, INDEXES_PER_STORE_MAX, IndexDecl};
use super::types::{DocId, Key, StoreName};

/// One key of a top-N page with its indexed number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedKey {
    pub key: Key,
    pub value: f64,
}

/// Where a top-N page starts: strictly after this (value, key) in descending value order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankCursor {
    pub value: f64,
    pub key: Key,
}

/// A key's place in a number index: 1 for the highest value (ties by key, byte order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rank {
    pub rank: u64,
    pub value: f64,
}

/// A page of keys carrying one user id, in (store, key) byte order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocIdPage {
    pub ids: Vec<DocId>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<DocId>,
}

impl DocIdPage {
    /// The page of `limit` ids out of `fetched`, which a backend reads as up to `limit + 1` rows
    /// in order: one row more says there is a next page.
    pub fn from_fetched(mut fetched: Vec<DocId>, limit: usize) -> DocIdPage {
        let more = fetched.len() > limit;
        fetched.truncate(limit);
        let next_after = if more { fetched.last().cloned() } else { None };
        DocIdPage { ids: fetched, next_after }
    }
}

/// The page size an index query uses: 0 means the store's default page size, and no page is
/// longer than `INDEX_PAGE_ENTRIES_MAX`.
pub fn index_page_size(requested: usize, default: usize) -> usize {
    let size = if requested == 0 { default } else { requested };
    size.clamp(1, INDEX_PAGE_ENTRIES_MAX)
}

/// Refuses a declaration past `INDEXES_PER_STORE_MAX` for its store (a re-declaration of an
/// existing name with the same kind and path is allowed; another kind or path is refused).
pub fn check_new_decl(decl: &IndexDecl, existing: &[IndexDecl]) -> Result<bool, StoreError> {
    decl.check()?;
    if let Some(found) = existing.iter().find(|found| found.name == decl.name) {
        if found == decl {
            return Ok(false);
        }
        return Err(InvalidInput::Malformed {
            what: "index declaration",
            expected: "the same kind and path as the index of that name already declared (drop it first)",
        }
        .into());
    }
    if existing.len() >= INDEXES_PER_STORE_MAX {
        return Err(InvalidInput::TooMany {
            what: "indexes of this store",
            count: existing.len() + 1,
            count_max: INDEXES_PER_STORE_MAX,
        }
        .into());
    }
    Ok(true)
}

/// Lookups and purges for operators; every durable backend implements it (`Store::operator`).
#[async_trait]
pub trait OperatorStore: Send + Sync {
    /// Declares an index and fills it from every document of its store, in one transaction with
    /// the declaration (saves wait, then maintain it). Returns the documents indexed (0 when the
    /// same declaration already existed).
    async fn declare_index(&self, decl: IndexDecl) -> Result<u64, StoreError>;

    /// Drops an index and its entries; false when there was none.
    async fn drop_index(&self, store: &StoreName, name: &str) -> Result<bool, StoreError>;

    /// The indexes declared on a store, by name.
    async fn list_indexes(&self, store: &StoreName) -> Result<Vec<IndexDecl>, StoreError>;

    /// Every key whose user ids include `user_id` (deleted documents too: their history may
    /// hold the user's data), in (store, key) order after `after`.
    async fn keys_by_user_id(
        &self,
        user_id: &str,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<DocIdPage, StoreError>;

    /// Keys of `store` whose `members`/`keys` index `index` holds `member`, in key order.
    async fn keys_by_member(
        &self,
        store: &StoreName,
        index: &str,
        member: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Key>, StoreError>;

    /// The highest values of a number index, descending (ties by key), after `after`.
    async fn index_top(
        &self,
        store: &StoreName,
        index: &str,
        after: Option<&RankCursor>,
        limit: usize,
    ) -> Result<Vec<RankedKey>, StoreError>;

    /// A key's rank in a number index; `None` when the key has no number there.
    async fn index_rank(&self, store: &StoreName, index: &str, key: &Key) -> Result<Option<Rank>, StoreError>;

    /// Entries of a number index with `min <= value <= max` (either bound optional).
    async fn index_count(
        &self,
        store: &StoreName,
        index: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<u64, StoreError>;

    /// Removes every superseded version of these keys (erasure); returns the rows removed. The
    /// current document is left as it is: erasure first commits its deletion.
    async fn purge_history(&self, ids: &[DocId]) -> Result<u64, StoreError>;
}

/// Refuses a query on an index the store does not declare, or of the wrong kind.
pub fn require_index<'a>(decls: &'a [IndexDecl], index: &str, number: bool) -> Result<&'a IndexDecl, StoreError> {
    let decl = decls
        .iter()
        .find(|decl| decl.name == index)
        .ok_or(InvalidInput::Malformed { what: "index", expected: "the name of an index declared on this store" })?;
    let is_number = decl.kind == super::index::IndexKind::Number;
    if is_number != number {
        return Err(InvalidInput::Malformed {
            what: "index kind",
            expected: if number { "a number index for top, rank and count" } else { "a members or keys index" },
        }
        .into());
    }
    Ok(decl)
}
