//! Talking to Kubernetes: for now the cron schedule behind `--check-schedule`.

pub mod schedule;
