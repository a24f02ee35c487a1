//! Named limits on everything the store accepts, with their defaults.
//!
//! Invariant: every size and count a caller can send is bounded by a field here, checked before
//! anything is stored (G8). Defaults are at least as generous as Roblox DataStore's.

use serde::{Deserialize, Serialize};

/// The store's limits. Every backend enforces the same values through `store::validate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Roblox: 50 characters.
    pub store_name_bytes_max: usize,
    /// Roblox: 50 characters.
    pub key_bytes_max: usize,
    pub holder_id_bytes_max: usize,
    /// Serialized JSON bytes of one value. Roblox: 4,194,304 characters.
    pub value_bytes_max: usize,
    /// Serialized JSON bytes of a key's attributes. Roblox: 300 characters.
    pub attributes_bytes_max: usize,
    pub user_ids_per_key_max: usize,
    pub user_id_bytes_max: usize,
    /// Writes (keys) in one commit.
    pub writes_per_commit_max: usize,
    /// Messages waiting in one key's inbox; past it, sends are refused (never dropped).
    pub inbox_messages_max: usize,
    /// Serialized JSON bytes of one inbox message.
    pub inbox_message_bytes_max: usize,
    /// Entries in one page of keys or versions.
    pub page_size_max: usize,
    pub page_size_default: usize,
    pub notification_topic_bytes_max: usize,
    /// PostgreSQL's NOTIFY payload limit is 8,000 bytes; this stays under it.
    pub notification_payload_bytes_max: usize,
    /// Nesting depth of a value, an inbox message or a key's attributes (a scalar is 0 deep,
    /// `[]` and `{}` are 1, `{"a": [1]}` is 2). Set well below what every reader of stored JSON
    /// accepts, so that whatever is accepted can be read back: serde_json stops at 128 levels
    /// (every backend's reads, `hoard serve`'s request and answer bodies, `RemoteStore`), and the
    /// deepest envelope a stored value travels in (a `hoard serve` answer) adds 6.
    /// (PostgreSQL stores values as text, not `jsonb`; SQLite's JSON functions, which stop at
    /// 1,000, are not used.)
    #[serde(default = "json_depth_max_default")]
    pub json_depth_max: usize,
}

/// The default of `Limits::json_depth_max`.
pub const JSON_DEPTH_MAX_DEFAULT: usize = 64;

fn json_depth_max_default() -> usize {
    JSON_DEPTH_MAX_DEFAULT
}

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * KIB;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            store_name_bytes_max: 100,
            key_bytes_max: 256,
            holder_id_bytes_max: 128,
            value_bytes_max: 4 * MIB,
            attributes_bytes_max: 4 * KIB,
            user_ids_per_key_max: 64,
            user_id_bytes_max: 64,
            writes_per_commit_max: 128,
            inbox_messages_max: 1_000,
            inbox_message_bytes_max: 64 * KIB,
            page_size_max: 1_000,
            page_size_default: 100,
            notification_topic_bytes_max: 256,
            notification_payload_bytes_max: 7_000,
            json_depth_max: JSON_DEPTH_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// The page size to use for a requested one (0: the default), capped at the maximum.
    pub fn page_size(&self, requested: usize) -> usize {
        let size = if requested == 0 { self.page_size_default } else { requested };
        size.min(self.page_size_max)
    }
}

/// How long superseded versions are kept.
///
/// Every version is kept while younger than `keep_all_ms`; after that, one version per UTC hour
/// (the last of that hour) is kept until `retention_ms` after it was superseded (Roblox: hourly
/// backups kept 30 days). The latest version of a key is never pruned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPolicy {
    pub keep_all_ms: i64,
    pub retention_ms: i64,
}

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

impl Default for HistoryPolicy {
    fn default() -> HistoryPolicy {
        HistoryPolicy { keep_all_ms: DAY_MS, retention_ms: 30 * DAY_MS }
    }
}

impl HistoryPolicy {
    /// Whether a superseded version should go, given when the next version was written, whether a
    /// later version was written in the same UTC hour (`written_at_ms / HOUR_MS` equal), and now.
    pub fn should_prune(&self, superseded_at_ms: i64, later_in_same_hour: bool, now_ms: i64) -> bool {
        let age_superseded_ms = now_ms.saturating_sub(superseded_at_ms);
        if age_superseded_ms >= self.retention_ms {
            return true;
        }
        age_superseded_ms >= self.keep_all_ms && later_in_same_hour
    }
}
