//! The Fluent Forward protocol, without I/O: audit lines transcoded to msgpack entries
//! (`transcode`, over `msgpack`), chunks built, sent and acked in order (`outbox`), how many may be in flight (`pace`), the message
//! codec and acks (`codec`), and the shared-key handshake (`handshake`, with `sha512`).

pub mod codec;
pub mod handshake;
pub mod msgpack;
pub mod outbox;
pub mod pace;
pub mod sha512;
pub mod transcode;
