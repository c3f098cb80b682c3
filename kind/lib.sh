# shellcheck shell=bash
# shellcheck disable=SC2034 # AF_IMAGE and AF_ENGINE are read by the scripts that source this.
# Sourced by the kind/ scripts: the image name and the container engine, found once.

# The image every manifest under kind/ names. The localhost/ registry keeps docker and podman
# from naming it differently (docker.io/library/... against localhost/...), so the name
# containerd gets from `kind load image-archive` is the one the pods ask for.
AF_IMAGE=localhost/audit-forwarder:dev

# af_find_engine: sets AF_ENGINE to $ENGINE if set, else to docker, else to podman: the first
# that is installed and answers `info` (docker's daemon running). Returns 1 if none does.
af_find_engine() {
    local e candidates=(docker podman)
    AF_ENGINE=""
    if [ -n "${ENGINE:-}" ]; then candidates=("$ENGINE"); fi
    for e in "${candidates[@]}"; do
        command -v "$e" >/dev/null 2>&1 || continue
        if "$e" info >/dev/null 2>&1; then
            AF_ENGINE=$e
            return 0
        fi
    done
    return 1
}

# af_require WHO PROG...: exits 1 with one line naming every missing program, a running
# container engine included, before anything is started.
af_require() {
    local who=$1 p missing=()
    shift
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ! af_find_engine; then
        if [ -n "${ENGINE:-}" ]; then
            missing+=("a running $ENGINE (ENGINE=$ENGINE)")
        else
            missing+=("a running docker or podman")
        fi
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        local list
        list=$(printf '%s, ' "${missing[@]}")
        printf '%s: missing: %s\n' "$who" "${list%, }" >&2
        exit 1
    fi
}
