//! Placeholder for lock-free operations.
