//! audit-forwarder: follows kube-apiserver audit logs and delivers every line, at least once and
//! in order, as Fluent Forward records. `main` only wires the modules together and maps errors to
//! exit codes.

mod cli;
mod forward;
mod msgpack;
mod transcode;

fn main() {}
