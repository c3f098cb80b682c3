//! audit-forwarder as a library: the modules the binary (`main.rs`) wires together. It exists so
//! that the fuzz targets (`fuzz/`) and regression tests can call the sans-IO parsers directly;
//! nothing outside this repository is meant to depend on it.

pub mod cli;
pub mod config;
pub mod escape;
pub mod event_loop;
pub mod follow;
pub mod forward;
pub mod kube;
pub mod metrics;
pub mod net;
pub mod repeat;
pub mod sys;
pub mod tailer;
