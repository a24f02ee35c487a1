mod backends;
mod sqlite_backend;
mod store_conformance;
