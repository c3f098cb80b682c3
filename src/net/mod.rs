//! Reaching the receiver: the connection state machine (`conn`) over a socket stack
//! (`transport`), name resolution off the loop (`resolve`) by our own
//! hosts/resolv.conf reader and DNS client (`dns`), the HTTP CONNECT tunnel of a
//! konnectivity proxy (`proxy`) and rustls configurations (`tls`).

pub mod conn;
pub mod dns;
pub mod proxy;
pub mod resolve;
pub mod tls;
pub mod transport;
