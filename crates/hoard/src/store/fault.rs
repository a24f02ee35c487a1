//! Fault injection. Being written.
