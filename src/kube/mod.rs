//! Discovery through the Kubernetes API: the kubeconfig, a small HTTP/1.1 client on the event
//! loop, the Service and Secret objects it reads, and the check schedule.

pub mod api;
pub mod base64;
pub mod client;
pub mod http;
pub mod json;
pub mod kubeconfig;
pub mod schedule;
pub mod yaml;
