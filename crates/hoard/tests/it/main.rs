mod backends;
mod store_conformance;
