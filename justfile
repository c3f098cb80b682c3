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

# Defaults: 500M corpus in the temp dir, plaintext, one throughput run, 200
# latency lines 20 ms apart. Examples: `just bench --bytes 1G --dir /var/tmp`,
# `just bench --runs 5` (one corpus forwarded five times: min/median/max MB/s,
# medians of CPU and RSS, and per run the forwarder's time on a CPU, waiting for
# one and asleep), `just bench --runs 5 --bytes 2G` (runs of seconds: less of the
# machine's moment-to-moment speed), `just bench --latency-lines 0` (throughput only),
# `just bench --help`.
#
# Throughput, CPU, peak RSS and idle latency of the release binary
bench *ARGS:
    cargo build --release
    cargo run --release --example bench -- {{ARGS}}

# Needs root (network namespaces). Uses `tc netem` when the kernel has it, else a userspace
# relay that delays every byte 50 ms each way (it says which). AF_NETBENCH_MB (default 400)
# and AF_NETBENCH_RUNS (default 3, medians) size it. Example: `AF_NETBENCH_RUNS=5 just netbench`.
#
# Throughput forwarder -> tailer across two network namespaces, without and with 50 ms delay
netbench:
    cargo build --release
    cargo test --release --test netfaults netbench -- --ignored --nocapture

# A simulated kube-apiserver writes at a steady rate (lumberjack rotation at 1 MiB,
# maxbackup=1, gzip) while the forwarder delivers through socat (Unix socket) -> tinyproxy
# (CONNECT) -> TLS with client certificates -> tailer, and a seeded chaos loop SIGKILLs and
# restarts the tailer, tinyproxy, socat and the forwarder. Not part of `just test`. Examples:
# `just soak --minutes 2`, `just soak --seed 7 --rate 200`, `just soak --help`.
#
# Long run under chaos: every event arrives, forwarder RSS and descriptors stay bounded
soak *ARGS:
    cargo build --release
    cargo run --release --example soak -- {{ARGS}}

# fluentd comes from the environment, never from this repository: FLUENTD='whole command line',
# or FLUENTD_SRC=/path/to/fluentd-checkout (run with ruby; FLUENTD_RUBYOPT is passed to it as
# RUBYOPT), or `fluentd` on PATH. Without one it says so and exits 0. Not part of `just test`.
# Examples: `just interop --modes gzip`, `just interop --events 100000 --keep`.
#
# Manual run against a local fluentd: every record it wrote checked against its audit line
interop *ARGS:
    cargo build --release --bin audit-forwarder --example interop
    cargo run --release --example interop -- check {{ARGS}}

# Same fluentd discovery as `just interop`. Examples: `just fluentd-cost --formats packed
# --sizes 512K,1M --runs 3`, `just fluentd-cost --events 100000`.
#
# fluentd's CPU per record and peak RSS by message format and chunk size
fluentd-cost *ARGS:
    cargo build --release --example interop
    cargo run --release --example interop -- cost {{ARGS}}

# x86_64-unknown-linux-musl when that target is installed (what the Containerfile uses),
# otherwise glibc linked statically as a static PIE (`-C target-feature=+crt-static`). Name
# resolution never goes through NSS (src/net/dns.rs reads /etc/hosts and /etc/resolv.conf), so
# the glibc build needs no file beyond those two either. tests/emptyroot.rs builds the same way.
#
# Static, stripped release binary at target/<triple>/release/audit-forwarder (< 4 MB)
static:
    #!/usr/bin/env bash
    set -euo pipefail
    if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
        triple=x86_64-unknown-linux-musl
        cargo build --release --target "$triple"
    else
        triple=x86_64-unknown-linux-gnu
        echo "musl target not installed: static-pie glibc build" >&2
        RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$triple"
    fi
    bin="target/$triple/release/audit-forwarder"
    size=$(stat -c %s "$bin")
    echo "$bin: $size bytes"
    file "$bin"
    [ "$size" -lt $((4 * 1024 * 1024)) ] || { echo "$bin is $size bytes, over 4 MB" >&2; exit 1; }

# Formatting, unit tests and the end-to-end tests that start the binary against real sockets,
# files and (for the tunnel tests) real proxies.
#
# Everything CI runs
test: deps
    cargo fmt --check
    cargo build --release --examples
    cargo test --release -- --test-threads 4

# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); fuzz/ is a crate of
# its own, never built by `just test`. Targets (`cargo +nightly fuzz list`): transcode, tailer,
# kube_http, metrics_request, connect, ack_handshake, rfc3339, cron, kubeconfig. Each corpus
# grows in fuzz/corpus/TARGET, seeded from fuzz/seeds/TARGET (transcode: the lines of
# tests/data/audit-events.jsonl); a failing input is written to fuzz/artifacts/TARGET/ and ends
# the run. Examples: `just fuzz` (every target, 10 minutes each), `just fuzz tailer 60`.
#
# Fuzz the sans-IO parsers: one target or all, SECONDS each (default 600)
fuzz TARGET="all" SECONDS="600":
    #!/usr/bin/env bash
    set -euo pipefail
    cd fuzz
    if [ "{{TARGET}}" = all ]; then targets=$(cargo +nightly fuzz list); else targets="{{TARGET}}"; fi
    for t in $targets; do
        mkdir -p "corpus/$t"
        if [ "$t" = transcode ] && [ -z "$(ls -A corpus/transcode)" ]; then
            n=0
            while IFS= read -r line; do n=$((n + 1)); printf '%s' "$line" > "corpus/transcode/audit-$n"; done \
                < ../tests/data/audit-events.jsonl
        fi
        seeds=()
        if [ -d "seeds/$t" ]; then seeds=("seeds/$t"); fi
        echo "== fuzz $t for {{SECONDS}} s" >&2
        cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time={{SECONDS}} -timeout=10
    done

# The tools the end-to-end tests start: real proxies (tinyproxy, socat, stunnel4), openssl for
# test certificates, python3-msgpack as the independent decoder, and for tests/netfaults.rs
# iproute2 (ip netns, veth, tc) and nftables (packet loss and partitions).
#
# Install the end-to-end tests' tools with apt-get when missing (root or sudo)
deps:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    for c in tinyproxy socat stunnel4 openssl; do command -v "$c" >/dev/null || missing+=("$c"); done
    command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    /usr/bin/python3 -c 'import msgpack' 2>/dev/null || missing+=(python3 python3-msgpack)
    [ ${#missing[@]} -eq 0 ] && exit 0
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    if ! command -v apt-get >/dev/null; then
        echo "just test needs: ${missing[*]}; install them with your package manager" >&2; exit 1
    fi
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# docker or podman (ENGINE=podman to choose); tag localhost/audit-forwarder:dev, the name the
# kind/ manifests use. The tailer is the same image with the `tailer` argument.
#
# Build the scratch image from the Containerfile
image:
    kind/image.sh

# Needs docker or podman, kind, kubectl and openssl (it says which is missing). KEEP=1 keeps
# the cluster, TAILER=fluentd receives with fluentd instead of our tailer. Not part of
# `just test`: kind/ is checked there by tests/kind_files.rs.
#
# kind cluster with audit logging: sidecar -> tailer, PASS when the test's API calls arrive
kind-e2e:
    kind/e2e.sh

# Same as kind-e2e, with the sidecar reaching the tailer through a konnectivity tunnel
# (egress selector, konnectivity server on a Unix socket, agent DaemonSet).
#
# kind-e2e through konnectivity (AUDIT_KONNECTIVITY_UDS_SOCKET)
kind-e2e-konnectivity:
    kind/e2e.sh --konnectivity
