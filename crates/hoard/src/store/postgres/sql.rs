//! How the PostgreSQL store writes and sends its SQL: table names qualified by the store's schema,
//! statements prepared once per connection or sent unnamed, and the isolation level of its
//! transactions, all fixed when the store opens (`PostgresOptions::pooler` and `::profile`).
//!
//! Invariant: no statement depends on connection state that a transaction-mode pooler would lose
//! between transactions. Every table is named with its schema (`{docs}` in a template becomes
//! `"schema".docs`), so nothing needs `search_path`; behind a pooler
//! (`StatementMode::Unnamed`) every statement is sent unnamed with its parameter types, parsed,
//! bound and run before one Sync, so no prepared statement outlives the transaction it ran in.
//! Directly connected (`StatementMode::Prepared`), statements are prepared once per pooled
//! connection and cached, which is what the benchmarks measure.

use tokio_postgres::GenericClient as _;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row};

use super::quote_identifier;

/// How statements reach PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatementMode {
    /// Prepared once per connection and cached (a direct connection, or a session-mode pooler).
    #[default]
    Prepared,
    /// Sent unnamed, with their parameter types, in one round trip each: what a transaction-mode
    /// pooler (PgBouncer before 1.21, Neon's `-pooler` endpoints) can route.
    Unnamed,
}

/// A parameter and its PostgreSQL type (needed to send a statement unnamed in one round trip).
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A connection or a transaction of the pool, which statements can be sent on.
pub(crate) trait Connection: deadpool_postgres::GenericClient + Sync {
    type Plain: tokio_postgres::GenericClient + Sync;
    /// The driver's own client or transaction, for unnamed statements.
    fn plain(&self) -> &Self::Plain;
}

impl Connection for deadpool_postgres::Client {
    type Plain = tokio_postgres::Client;
    fn plain(&self) -> &tokio_postgres::Client {
        self
    }
}

impl<'a> Connection for deadpool_postgres::Transaction<'a> {
    type Plain = tokio_postgres::Transaction<'a>;
    fn plain(&self) -> &tokio_postgres::Transaction<'a> {
        self
    }
}

/// A statement ready to send (`Sql::ready`).
#[derive(Debug)]
pub(crate) enum Ready {
    Prepared(tokio_postgres::Statement),
    Unnamed(String),
}

/// The store's SQL dialect, made once at open and shared by every part of the backend.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `{name}` in a template → its replacement: every table, schema-qualified, and
    /// `{schema_name}`, the schema's name as an SQL string literal.
    replacements: Vec<(String, String)>,
    statements: StatementMode,
    isolation: IsolationLevel,
}

/// Every table of hoard's schema, as templates name them.
const TABLES: &[&str] =
    &["docs", "history", "holders", "notifications", "index_decls", "user_keys", "index_numbers", "index_members"];

impl Sql {
    pub fn new(schema: &str, statements: StatementMode, isolation: IsolationLevel) -> Sql {
        let quoted = quote_identifier(schema);
        let mut replacements: Vec<(String, String)> =
            TABLES.iter().map(|table| (format!("{{{table}}}"), format!("{quoted}.{table}"))).collect();
        // Schema names are validated to [a-z0-9_] before a store opens: no quote to escape.
        debug_assert!(!schema.contains('\''), "schema names are plain identifiers");
        replacements.push(("{schema_name}".to_string(), format!("'{schema}'")));
        Sql { replacements, statements, isolation }
    }

    /// The isolation level of every transaction the store runs (READ COMMITTED, or SERIALIZABLE
    /// in the distributed-SQL profile).
    pub fn isolation(&self) -> IsolationLevel {
        self.isolation
    }

    /// The `BEGIN` statement of a transaction at the store's isolation level.
    pub fn begin(&self) -> &'static str {
        match self.isolation {
            IsolationLevel::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
            IsolationLevel::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            _ => "BEGIN ISOLATION LEVEL READ COMMITTED",
        }
    }

    pub fn statements(&self) -> StatementMode {
        self.statements
    }

    /// `template` with every `{table}` replaced by its schema-qualified name and `{schema_name}`
    /// by the schema's name as a literal.
    pub fn text(&self, template: &str) -> String {
        let mut text = template.to_string();
        for (placeholder, replacement) in &self.replacements {
            if text.contains(placeholder.as_str()) {
                text = text.replace(placeholder.as_str(), replacement);
            }
        }
        text
    }

    /// Makes `template` ready to send: prepared (or taken from the connection's cache), or its
    /// text for an unnamed statement. Statements that must run in order in one pipeline are all
    /// made ready first and then `run` together: preparing inside the pipeline would let a cached
    /// statement overtake one still being prepared (a COMMIT ahead of the writes it commits).
    pub async fn ready<C: Connection>(
        &self,
        connection: &C,
        template: &str,
        params: &[Param<'_>],
    ) -> Result<Ready, tokio_postgres::Error> {
        let text = self.text(template);
        match self.statements {
            StatementMode::Prepared => {
                let types: Vec<Type> = params.iter().map(|(_, kind)| kind.clone()).collect();
                Ok(Ready::Prepared(connection.prepare_typed_cached(&text, &types).await?))
            }
            StatementMode::Unnamed => Ok(Ready::Unnamed(text)),
        }
    }

    /// Sends a ready statement and returns its rows. The request goes out when the future is
    /// first polled, so futures polled in order (`join`) run in that order on the server.
    pub async fn run<C: Connection>(
        &self,
        connection: &C,
        ready: &Ready,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match ready {
            Ready::Prepared(statement) => {
                let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(value, _)| *value).collect();
                connection.query(statement, &values).await
            }
            Ready::Unnamed(text) => connection.plain().query_typed(text, params).await,
        }
    }

    /// Runs `template` (see `text`) with `params` and returns its rows: `ready`, then `run`.
    pub async fn query<C: Connection>(
        &self,
        connection: &C,
        template: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let ready = self.ready(connection, template, params).await?;
        self.run(connection, &ready, params).await
    }

    /// Runs a statement that answers at most one row (an aggregate, or a lookup by primary key).
    pub async fn query_opt<C: Connection>(
        &self,
        connection: &C,
        template: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let mut rows = self.query(connection, template, params).await?;
        debug_assert!(rows.len() <= 1, "{template} answered {} rows; at most one was expected", rows.len());
        Ok(rows.pop())
    }
}
