mod backends;
mod engine_schema;
mod engine_sessions;
mod engine_timers;
mod sqlite_backend;
mod store_conformance;
mod store_faults;
mod store_model;
