//! The example PostgreSQL plugin, built standalone, against a real PostgreSQL server (being written).
