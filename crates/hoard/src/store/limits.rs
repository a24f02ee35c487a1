//! Named limits on everything the store accepts, with their defaults.
//!
//! Invariant: every size and count a caller can send is bounded by a field here, checked before
//! anything is stored (G8). Defaults are at least as generous as Roblox DataStore's.

use serde::{Deserialize, Serialize};

use super::error::InvalidInput;

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

/// How long superseded versions are kept, and how they are stored.
///
/// A version is *superseded* when the next kept version of its key is written; its age is
/// measured from then. Tiers, from young to old: every version while younger than
/// `keep_every_version_ms`; then the last version of each `hourly_bucket_ms` bucket (UTC hours by
/// default) while younger than `keep_hourly_ms`; then the last of each `daily_bucket_ms` bucket
/// (UTC days) while younger than `retention_ms`; older ones go. The latest version of a key is the
/// document itself and is never pruned. Roblox keeps versions 30 days.
///
/// What a live game pays with the defaults: a player who autosaves every 30 s for an hour keeps
/// about 120 versions for the hour, then 24 (one per hour) for a day, then 30 (one per day); a
/// superseded version is stored as a delta against its successor (`store::history`), a few
/// hundred bytes for a typical edit of an 8 KiB profile, and one in `keyframe_interval_versions`
/// whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPolicy {
    /// Every superseded version is kept this long. Default 1 hour.
    pub keep_every_version_ms: i64,
    /// Then one version per hourly bucket, until this old. Default 24 hours.
    pub keep_hourly_ms: i64,
    /// Then one version per daily bucket, until this old; older superseded versions go. Default
    /// 30 days.
    pub retention_ms: i64,
    /// Width of the hourly tier's buckets (aligned to the Unix epoch, so UTC hours). Default 1 hour.
    pub hourly_bucket_ms: i64,
    /// Width of the daily tier's buckets (UTC days). Default 1 day.
    pub daily_bucket_ms: i64,
    /// Every superseded version whose number is a multiple of this is stored whole, not as a
    /// delta, so reading any version rebuilds fewer than `2 * keyframe_interval_versions` deltas.
    /// Default 64.
    pub keyframe_interval_versions: u64,
}

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Default of `HistoryPolicy::keep_every_version_ms`.
pub const KEEP_EVERY_VERSION_MS_DEFAULT: i64 = HOUR_MS;
/// Default of `HistoryPolicy::keep_hourly_ms`.
pub const KEEP_HOURLY_MS_DEFAULT: i64 = DAY_MS;
/// Default of `HistoryPolicy::retention_ms`.
pub const RETENTION_MS_DEFAULT: i64 = 30 * DAY_MS;
/// Default of `HistoryPolicy::keyframe_interval_versions`.
pub const KEYFRAME_INTERVAL_VERSIONS_DEFAULT: u64 = 64;

impl Default for HistoryPolicy {
    fn default() -> HistoryPolicy {
        HistoryPolicy {
            keep_every_version_ms: KEEP_EVERY_VERSION_MS_DEFAULT,
            keep_hourly_ms: KEEP_HOURLY_MS_DEFAULT,
            retention_ms: RETENTION_MS_DEFAULT,
            hourly_bucket_ms: HOUR_MS,
            daily_bucket_ms: DAY_MS,
            keyframe_interval_versions: KEYFRAME_INTERVAL_VERSIONS_DEFAULT,
        }
    }
}

impl HistoryPolicy {
    /// A policy that keeps nothing but the latest version (superseded versions go at once).
    pub fn keep_latest_only() -> HistoryPolicy {
        HistoryPolicy { keep_every_version_ms: 0, keep_hourly_ms: 0, retention_ms: 0, ..HistoryPolicy::default() }
    }

    /// Refuses a policy whose tiers are out of order or whose buckets or keyframe interval are
    /// empty; checked when a store opens.
    pub fn check(&self) -> Result<(), InvalidInput> {
        const EXPECTED: &str = "0 <= keep_every_version_ms <= keep_hourly_ms <= retention_ms, buckets >= 1 ms, \
                                keyframe_interval_versions >= 1";
        let tiers_in_order = 0 <= self.keep_every_version_ms
            && self.keep_every_version_ms <= self.keep_hourly_ms
            && self.keep_hourly_ms <= self.retention_ms;
        if !tiers_in_order
            || self.hourly_bucket_ms < 1
            || self.daily_bucket_ms < 1
            || self.keyframe_interval_versions < 1
        {
            return Err(InvalidInput::Malformed { what: "history policy", expected: EXPECTED });
        }
        Ok(())
    }

    /// Whether a superseded version is kept: it was written at `written_at_ms`, the next kept
    /// version of its key at `successor_written_at_ms` (when it was superseded), and it is now
    /// `now_ms`. In a bucketed tier a version is kept when its successor falls in a later bucket,
    /// that is, when it is the last of its bucket.
    pub fn keeps(&self, written_at_ms: i64, successor_written_at_ms: i64, now_ms: i64) -> bool {
        let age_superseded_ms = now_ms.saturating_sub(successor_written_at_ms);
        if age_superseded_ms < self.keep_every_version_ms {
            return true;
        }
        if age_superseded_ms >= self.retention_ms {
            return false;
        }
        let bucket_ms =
            if age_superseded_ms < self.keep_hourly_ms { self.hourly_bucket_ms } else { self.daily_bucket_ms };
        written_at_ms.div_euclid(bucket_ms) != successor_written_at_ms.div_euclid(bucket_ms)
    }
}
