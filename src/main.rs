//! audit-forwarder: follows kube-apiserver audit logs and delivers every line, at least once and
//! in order, as Fluent Forward records. `main` only wires the modules together and maps errors to
//! exit codes.
#![allow(dead_code)]

mod cli;
mod forward;
mod lines;
mod msgpack;
mod offsets;
mod sys;
mod tail;
mod transcode;

fn main() {}
