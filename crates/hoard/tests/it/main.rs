mod backends;
mod postgres_backend;
mod store_conformance;
