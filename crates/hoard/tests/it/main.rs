mod backends;
mod engine_cancellation;
mod engine_cross_trades;
mod engine_inbox;
mod engine_lease;
mod engine_protocol;
mod engine_schema;
mod engine_schema_rules;
mod engine_sessions;
mod engine_shared_docs;
mod engine_timers;
mod engine_trades;
mod pg_cluster;
mod pgbouncer;
mod postgres_backend;
mod postgres_cross_trades;
mod postgres_failover;
mod postgres_profiles;
mod probe_store;
mod retry;
mod sqlite_backend;
/// The store conformance suite runs against every backend of the library.
macro_rules! conformance_backends {
    ($suite:ident) => {
        $suite!(memory);
        $suite!(sqlite);
        $suite!(postgres);
        $suite!(postgres_portable);
        $suite!(postgres_pooled);
    };
}
mod store_conformance;
mod store_delta;
mod store_faults;
mod store_history;
mod store_migrations;
mod store_model;
mod store_operator;
mod store_pruner;
mod tidy;
