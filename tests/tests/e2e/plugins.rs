//! Dynamic plugins (being written).
