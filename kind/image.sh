#!/usr/bin/env bash
# kind/image.sh: builds localhost/audit-forwarder:dev from the Containerfile with docker or
# podman (ENGINE=podman to choose), stamping the git commit --version prints.
set -euo pipefail

kind_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$kind_dir")
# shellcheck source=kind/lib.sh
. "$kind_dir/lib.sh"

af_require image
commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
echo "image: building $AF_IMAGE with $AF_ENGINE (commit $commit)" >&2
"$AF_ENGINE" build -f "$repo/Containerfile" --build-arg "AUDIT_FORWARDER_COMMIT=$commit" \
    -t "$AF_IMAGE" "$repo"
