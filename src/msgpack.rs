//! msgpack (being written)
