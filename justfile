# Recipes need only a Rust toolchain, just, bash and coreutils.

set shell := ["bash", "-euo", "pipefail", "-c"]

# A simulated kube-apiserver writes and rotates an audit log, the forwarder
# follows it and delivers every event to a local tailer; `--keep` keeps the
# temp dir.
#
# End-to-end demo of the release binary (args: [--keep] [--bin PATH])
demo *ARGS:
    cargo build --release
    cargo run --release --example gen -- demo {{ARGS}}

# Defaults: 500M corpus in the temp dir, plaintext, 200 latency lines 20 ms
# apart. Examples: `just bench --bytes 1G --dir /var/tmp`,
# `just bench --latency-lines 0` (throughput only), `just bench --help`.
#
# Throughput, CPU, peak RSS and idle latency of the release binary
bench *ARGS:
    cargo build --release
    cargo run --release --example bench -- {{ARGS}}

# Everything CI runs: formatting, unit tests and the end-to-end tests that start the binary
# against real sockets, files and (for the tunnel tests) real proxies.
test:
    cargo fmt --check
    cargo build --release --examples
    cargo test --release -- --test-threads 4
