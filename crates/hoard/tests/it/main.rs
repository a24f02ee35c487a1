mod backends;
mod store_conformance;
mod store_faults;
mod store_model;
