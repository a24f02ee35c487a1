//! The memory store's index rows and its `OperatorStore`: the reference the durable backends'
//! index tables are held to by the conformance suite.
//!
//! Invariant: `reindex` runs under the store's one lock, in the same step as the commit that
//! changed the document, so the maps below always describe exactly the current documents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use async_trait::async_trait;

use super::index::{IndexDecl, IndexKind, entries_for};
use super::memory::MemoryStore;
use super::operator::{
    DocIdPage, OperatorStore, Rank, RankCursor, RankedKey, check_new_decl, index_page_size, require_index,
};
use super::types::{DocId, Document, Key, StoreName};
use super::{Store, StoreError};

type IndexName = (StoreName, String);

#[derive(Debug, Default)]
pub(super) struct MemoryIndexes {
    decls: BTreeMap<IndexName, IndexDecl>,
    /// (store, index) → key → number.
    numbers: BTreeMap<IndexName, BTreeMap<Key, f64>>,
    /// (store, index) → (member, key).
    members: BTreeMap<IndexName, BTreeSet<(String, Key)>>,
    /// (store, index, key) → its members, to remove them on the next version.
    members_of: HashMap<(IndexName, Key), Vec<String>>,
    user_keys: BTreeSet<(String, DocId)>,
    user_ids_of: HashMap<DocId, Vec<String>>,
}

impl MemoryIndexes {
    /// Replaces every index row of `doc` by what its new version contributes.
    pub(super) fn reindex(&mut self, doc: &Document) {
        let old = self.user_ids_of.remove(&doc.id).unwrap_or_default();
        for user_id in old {
            self.user_keys.remove(&(user_id, doc.id.clone()));
        }
        if !doc.user_ids.is_empty() {
            for user_id in &doc.user_ids {
                self.user_keys.insert((user_id.clone(), doc.id.clone()));
            }
            self.user_ids_of.insert(doc.id.clone(), doc.user_ids.clone());
        }
        let decls: Vec<IndexDecl> = self
            .decls
            .range((doc.id.store.clone(), String::new())..)
            .take_while(|((store, _), _)| store == &doc.id.store)
            .map(|(_, decl)| decl.clone())
            .collect();
        for decl in decls {
            self.index_one(&decl, doc);
        }
    }

    fn index_one(&mut self, decl: &IndexDecl, doc: &Document) {
        let name = (decl.store.clone(), decl.name.clone());
        let entries = entries_for(decl, doc.value.as_ref());
        match decl.kind {
            IndexKind::Number => {
                let numbers = self.numbers.entry(name).or_default();
                match entries.number {
                    Some(number) => numbers.insert(doc.id.key.clone(), number),
                    None => numbers.remove(&doc.id.key),
                };
            }
            IndexKind::Members | IndexKind::Keys => {
                let members = self.members.entry(name.clone()).or_default();
                let slot = (name, doc.id.key.clone());
                for old in self.members_of.remove(&slot).unwrap_or_default() {
                    members.remove(&(old, doc.id.key.clone()));
                }
                for member in &entries.members {
                    members.insert((member.clone(), doc.id.key.clone()));
                }
                if !entries.members.is_empty() {
                    self.members_of.insert(slot, entries.members);
                }
            }
        }
    }

    fn decls_of(&self, store: &StoreName) -> Vec<IndexDecl> {
        self.decls.values().filter(|decl| &decl.store == store).cloned().collect()
    }

    fn sorted_numbers(&self, store: &StoreName, index: &str) -> Vec<RankedKey> {
        let mut ranked: Vec<RankedKey> = self
            .numbers
            .get(&(store.clone(), index.to_string()))
            .map(|numbers| numbers.iter().map(|(key, value)| RankedKey { key: key.clone(), value: *value }).collect())
            .unwrap_or_default();
        ranked.sort_by(|a, b| b.value.total_cmp(&a.value).then_with(|| a.key.cmp(&b.key)));
        ranked
    }
}

fn after_cursor(entry: &RankedKey, cursor: &RankCursor) -> bool {
    entry.value < cursor.value || (entry.value == cursor.value && entry.key > cursor.key)
}

#[async_trait]
impl OperatorStore for MemoryStore {
    async fn declare_index(&self, decl: IndexDecl) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let existing = state.indexes.decls_of(&decl.store);
        if !check_new_decl(&decl, &existing)? {
            return Ok(0);
        }
        state.indexes.decls.insert((decl.store.clone(), decl.name.clone()), decl.clone());
        let docs: Vec<Document> = state.docs.values().filter(|doc| doc.id.store == decl.store).cloned().collect();
        for doc in &docs {
            state.indexes.index_one(&decl, doc);
        }
        Ok(docs.iter().filter(|doc| doc.exists()).count() as u64)
    }

    async fn drop_index(&self, store: &StoreName, name: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let slot = (store.clone(), name.to_string());
        let indexes = &mut state.indexes;
        indexes.numbers.remove(&slot);
        indexes.members.remove(&slot);
        indexes.members_of.retain(|(index, _), _| index != &slot);
        Ok(indexes.decls.remove(&slot).is_some())
    }

    async fn list_indexes(&self, store: &StoreName) -> Result<Vec<IndexDecl>, StoreError> {
        Ok(self.lock().indexes.decls_of(store))
    }

    async fn keys_by_user_id(
        &self,
        user_id: &str,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<DocIdPage, StoreError> {
        let limit = index_page_size(limit, self.limits().page_size_default);
        let state = self.lock();
        let start = match after {
            Some(after) => Bound::Excluded((user_id.to_string(), after.clone())),
            None => Bound::Unbounded,
        };
        let ids: Vec<DocId> = state
            .indexes
            .user_keys
            .range((start, Bound::Unbounded))
            .skip_while(|(found, _)| found.as_str() < user_id)
            .take_while(|(found, _)| found == user_id)
            .take(limit + 1)
            .map(|(_, id)| id.clone())
            .collect();
        Ok(DocIdPage::from_fetched(ids, limit))
    }

    async fn keys_by_member(
        &self,
        store: &StoreName,
        index: &str,
        member: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Key>, StoreError> {
        let limit = index_page_size(limit, self.limits().page_size_default);
        let state = self.lock();
        require_index(&state.indexes.decls_of(store), index, false)?;
        let Some(members) = state.indexes.members.get(&(store.clone(), index.to_string())) else {
            return Ok(Vec::new());
        };
        Ok(members
            .iter()
            .filter(|(found, key)| found == member && after.is_none_or(|after| key > after))
            .take(limit)
            .map(|(_, key)| key.clone())
            .collect())
    }

    async fn index_top(
        &self,
        store: &StoreName,
        index: &str,
        after: Option<&RankCursor>,
        limit: usize,
    ) -> Result<Vec<RankedKey>, StoreError> {
        let limit = index_page_size(limit, self.limits().page_size_default);
        let state = self.lock();
        require_index(&state.indexes.decls_of(store), index, true)?;
        Ok(state
            .indexes
            .sorted_numbers(store, index)
            .into_iter()
            .filter(|entry| after.is_none_or(|cursor| after_cursor(entry, cursor)))
            .take(limit)
            .collect())
    }

    async fn index_rank(&self, store: &StoreName, index: &str, key: &Key) -> Result<Option<Rank>, StoreError> {
        let state = self.lock();
        require_index(&state.indexes.decls_of(store), index, true)?;
        let ranked = state.indexes.sorted_numbers(store, index);
        Ok(ranked
            .iter()
            .position(|entry| &entry.key == key)
            .map(|position| Rank { rank: position as u64 + 1, value: ranked[position].value }))
    }

    async fn index_count(
        &self,
        store: &StoreName,
        index: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<u64, StoreError> {
        let state = self.lock();
        require_index(&state.indexes.decls_of(store), index, true)?;
        Ok(state
            .indexes
            .sorted_numbers(store, index)
            .iter()
            .filter(|entry| min.is_none_or(|min| entry.value >= min) && max.is_none_or(|max| entry.value <= max))
            .count() as u64)
    }

    async fn purge_history(&self, ids: &[DocId]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut removed = 0u64;
        for id in ids {
            // This store's history map also holds the latest version (the document's); only the
            // superseded ones go, so it keeps matching the durable backends.
            let latest = state.docs.get(id).map(|doc| doc.version);
            if let Some(versions) = state.history.get_mut(id) {
                let before = versions.len();
                versions.retain(|version, _| Some(*version) == latest);
                removed += (before - versions.len()) as u64;
            }
        }
        Ok(removed)
    }
}
