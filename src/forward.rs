//! forward (being written)
