//! Weighted Maglev consistent-hash tables (pure).
