//! The two choices an operator makes about a PostgreSQL deployment, kept outside the backend so
//! that configuration (`StoreOptions`, `hoard serve`'s flags) can name them in any build.
//!
//! Invariant: each choice has one spelling on the command line and in files (`FromStr` and
//! `as_str` are inverses), and an unknown spelling is refused with the accepted ones.

use std::str::FromStr;

/// Which PostgreSQL features the store relies on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PostgresProfile {
    /// Everything stock PostgreSQL has: LISTEN/NOTIFY for notifications, an advisory lock around
    /// migrations, READ COMMITTED row-locking transactions, lz4 compression of values.
    #[default]
    Full,
    /// The subset distributed SQL engines (CockroachDB, YugabyteDB) offer: notifications through
    /// a table that every process polls, migrations that race and retry instead of taking an
    /// advisory lock, SERIALIZABLE transactions retried on serialization failures, and the
    /// server's default compression. Same tables, same answers (the conformance suite runs on it).
    Portable,
}

/// What sits between hoard and PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooler {
    /// A direct connection (or a session-mode pooler): hoard sets its connection parameters once
    /// per connection and prepares each statement once per connection.
    #[default]
    None,
    /// A transaction-mode pooler such as PgBouncer: a connection may change between transactions,
    /// so hoard sends no startup options, keeps no prepared statement, sets its timeouts inside each
    /// commit transaction, and LISTENs on a direct connection (`listen_url`), since a pooler cannot
    /// hold a LISTEN.
    Transaction,
}

impl PostgresProfile {
    pub const SPELLINGS: &'static str = "full or portable";

    pub fn as_str(self) -> &'static str {
        match self {
            PostgresProfile::Full => "full",
            PostgresProfile::Portable => "portable",
        }
    }
}

impl FromStr for PostgresProfile {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "full" => Ok(PostgresProfile::Full),
            "portable" => Ok(PostgresProfile::Portable),
            other => Err(format!("unknown postgres profile {other:?}: use {}", PostgresProfile::SPELLINGS)),
        }
    }
}

impl Pooler {
    pub const SPELLINGS: &'static str = "none or transaction";

    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Transaction => "transaction",
        }
    }
}

impl FromStr for Pooler {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Pooler::None),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(format!("unknown postgres pooler {other:?}: use {}", Pooler::SPELLINGS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_reads_back_and_unknown_ones_are_refused() {
        for profile in [PostgresProfile::Full, PostgresProfile::Portable] {
            assert_eq!(profile.as_str().parse::<PostgresProfile>(), Ok(profile));
        }
        for pooler in [Pooler::None, Pooler::Transaction] {
            assert_eq!(pooler.as_str().parse::<Pooler>(), Ok(pooler));
        }
        assert!("Portable".parse::<PostgresProfile>().expect_err("case matters").contains("full or portable"));
        assert!(
            "session".parse::<Pooler>().expect_err("session mode needs no setting").contains("none or transaction")
        );
    }
}
