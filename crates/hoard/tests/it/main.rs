mod backends;
mod engine_sessions;
mod sqlite_backend;
mod store_conformance;
mod store_faults;
mod store_model;
