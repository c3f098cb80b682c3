#!/usr/bin/env bash
# kind/e2e.sh [--konnectivity]: the whole path on a laptop. Builds the image, creates a kind
# cluster with audit logging, deploys the tailer (TAILER=fluentd for fluentd instead), adds the
# audit-forwarder sidecar to the kube-apiserver static pod (through a konnectivity tunnel with
# --konnectivity), creates and deletes a namespace and a ConfigMap with a unique name, and
# waits until the tailer has printed those four audit events. Prints PASS or FAIL and deletes
# the cluster unless KEEP=1.
#
# Needs: docker or podman (ENGINE= to choose), kind, kubectl, openssl.
# Environment: KEEP=1, TAILER=audit-forwarder|fluentd, CLUSTER=name, TIMEOUT=seconds per wait.
set -euo pipefail

kind_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kind/lib.sh
. "$kind_dir/lib.sh"

konnectivity=0
case "${1:-}" in
    "") ;;
    --konnectivity) konnectivity=1 ;;
    *)
        echo "usage: $0 [--konnectivity]" >&2
        exit 2
        ;;
esac
tailer=${TAILER:-audit-forwarder}
case "$tailer" in
    audit-forwarder) tailer_manifest=tailer.yaml ;;
    fluentd) tailer_manifest="tailer-fluentd.yaml" ;;
    *)
        echo "kind-e2e: TAILER must be audit-forwarder or fluentd, not $tailer" >&2
        exit 2
        ;;
esac
if [ "$konnectivity" = 1 ]; then
    cluster=${CLUSTER:-audit-forwarder-e2e-konnectivity}
    cluster_config="cluster-konnectivity.yaml"
    patch=apiserver-patch-konnectivity.yaml
else
    cluster=${CLUSTER:-audit-forwarder-e2e}
    cluster_config=cluster.yaml
    patch=apiserver-patch.yaml
fi
timeout=${TIMEOUT:-240}
node=$cluster-control-plane
namespace=audit
name=e2e-$(date +%s)-$RANDOM

say() { printf 'kind-e2e: %s\n' "$*" >&2; }

af_require kind-e2e kind kubectl openssl
if [ "$AF_ENGINE" = podman ]; then
    export KIND_EXPERIMENTAL_PROVIDER=${KIND_EXPERIMENTAL_PROVIDER:-podman}
fi
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    say "a kind cluster named $cluster exists; delete it (kind delete cluster --name $cluster) or set CLUSTER"
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/audit-forwarder-e2e.XXXXXX")
export KUBECONFIG=$work/kubeconfig
created=0

cleanup() {
    local rc=$?
    if [ "$created" = 1 ] && [ "${KEEP:-0}" = 1 ]; then
        say "KEEP=1: cluster $cluster kept. export KUBECONFIG=$KUBECONFIG; audit log in $work/auditlog"
        say "remove with: kind delete cluster --name $cluster && rm -rf $work"
        exit "$rc"
    fi
    if [ "$created" = 1 ]; then
        # The apiserver wrote the audit log as root into the host directory: empty it from
        # inside the node, or removing $work below fails for a user without root.
        "$AF_ENGINE" exec "$node" sh -c 'rm -rf /var/log/kubernetes/audit/* /var/log/kubernetes/audit/.[!.]*' \
            >/dev/null 2>&1 || true
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || say "could not delete cluster $cluster"
    fi
    rm -rf "$work" 2>/dev/null || say "left $work behind"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT COMMAND...: runs COMMAND every 2 s until it succeeds or $timeout seconds pass.
wait_for() {
    local what=$1 deadline=$((SECONDS + timeout))
    shift
    say "waiting for $what"
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 2
    done
}

node_exec() { "$AF_ENGINE" exec "$node" "$@"; }
# node_write PATH: stdin to PATH in the node, replaced in one rename (kubelet reads the
# manifests directory, and must never see half a file).
node_write() {
    # shellcheck disable=SC2016 # expanded by the node's shell
    "$AF_ENGINE" exec -i "$node" sh -c 'cat >"$1.tmp" && mv "$1.tmp" "$1"' sh "$1"
}
# node_logs CONTAINER LINES: the end of a container's log from the node's CRI, which works
# when `kubectl logs` does not (the apiserver restarting, or its tunnel down).
node_logs() {
    # shellcheck disable=SC2016 # expanded by the node's shell
    node_exec sh -c 'crictl logs --tail "$2" "$(crictl ps -a --latest --quiet --name "$1")"' sh "$1" "$2" >&2 2>&1 || true
}

# The pod's container NAME has been running since the manifest was patched.
container_running() {
    local started
    started=$(kubectl -n kube-system get pod "kube-apiserver-$node" \
        -o "jsonpath={.status.containerStatuses[?(@.name==\"$1\")].state.running.startedAt}")
    [ -n "$started" ]
}

tailer_log() { kubectl -n "$namespace" logs deploy/audittailer --tail=-1; }

# Each of the four events, by object name, resource and verb, in the tailer's output (our
# tailer prints the event as JSON; fluentd's stdout prefixes time and tag).
events_arrived() {
    local log resource verb
    log=$(tailer_log) || return 1
    for resource in namespaces configmaps; do
        for verb in create delete; do
            grep -F "\"$name\"" <<<"$log" | grep -E "\"resource\": ?\"$resource\"" |
                grep -Eq "\"verb\": ?\"$verb\"" || return 1
        done
    done
}

diagnose() {
    say "--- audit-forwarder sidecar (last 40 lines)"
    node_logs audit-forwarder 40
    if [ "$konnectivity" = 1 ]; then
        say "--- konnectivity-server (last 20 lines)"
        node_logs konnectivity-server 20
        kubectl -n kube-system get pods -l app=konnectivity-agent -o wide >&2 || true
    fi
    say "--- tailer (last 20 lines)"
    node_logs audittailer 20
    say "--- lines naming $name: $(tailer_log 2>/dev/null | grep -cF "\"$name\"" || true)"
    say "audit log on the host (root-owned): $work/auditlog"
}

say "building $AF_IMAGE"
"$kind_dir/image.sh"
"$AF_ENGINE" save -o "$work/image.tar" "$AF_IMAGE"

# kind resolves the config's relative hostPaths from here (see kind/cluster.yaml).
cp "$kind_dir/$cluster_config" "$kind_dir/audit-policy.yaml" "$kind_dir/egress-selector.yaml" "$work/"
mkdir -p "$work/auditlog"
# The sidecar runs as root without capabilities (kind/apiserver-patch.yaml); with rootful
# docker this directory is the host user's, so root in the node may write its position file
# here only if everybody may.
chmod 0777 "$work/auditlog"
say "creating kind cluster $cluster"
created=1
(cd "$work" && kind create cluster --name "$cluster" --config "$cluster_config" \
    --kubeconfig "$KUBECONFIG" --wait 180s)
kind load image-archive "$work/image.tar" --name "$cluster"

say "deploying the tailer ($tailer) and its certificates"
"$kind_dir/gencerts.sh" "$work/certs" "$namespace" audittailer
kubectl apply -f "$kind_dir/namespace.yaml"
kubectl apply -f "$work/certs/secrets.yaml" -f "$kind_dir/rbac.yaml" -f "$kind_dir/$tailer_manifest"
if [ "$konnectivity" = 1 ]; then
    kubectl apply -f "$kind_dir/konnectivity-agent.yaml"
fi
kubectl -n "$namespace" rollout status deploy/audittailer --timeout="${timeout}s"

say "writing the sidecar's kubeconfig into the node"
server=$(node_exec cat /etc/kubernetes/admin.conf | sed -n 's/^ *server: *//p' | head -n 1)
[ -n "$server" ] || { say "FAIL: no server in the node's /etc/kubernetes/admin.conf"; exit 1; }
node_exec mkdir -p /etc/kubernetes/audit-forwarder
node_exec cp /etc/kubernetes/pki/ca.crt /etc/kubernetes/audit-forwarder/ca.crt
kubectl -n "$namespace" create token audit-forwarder --duration=24h | node_write /etc/kubernetes/audit-forwarder/token
sed "s|^\( *server: *\)APISERVER\$|\1$server|" "$kind_dir/sidecar-kubeconfig.yaml" |
    node_write /etc/kubernetes/audit-forwarder/kubeconfig

say "adding the sidecar to the kube-apiserver static pod ($patch)"
node_exec cat /etc/kubernetes/manifests/kube-apiserver.yaml >"$work/kube-apiserver.orig.yaml"
kubectl patch --local -f "$work/kube-apiserver.orig.yaml" --type=json \
    --patch-file "$kind_dir/$patch" -o yaml >"$work/kube-apiserver.yaml"
# Written beside the manifests directory first: a file kubelet sees there is a pod.
node_write /etc/kubernetes/kube-apiserver.yaml <"$work/kube-apiserver.yaml"
node_exec mv /etc/kubernetes/kube-apiserver.yaml /etc/kubernetes/manifests/kube-apiserver.yaml

if [ "$konnectivity" = 1 ]; then
    wait_for "the konnectivity server" container_running konnectivity-server || { diagnose; say FAIL; exit 1; }
fi
wait_for "the audit-forwarder sidecar" container_running audit-forwarder || { diagnose; say FAIL; exit 1; }

# The pod running is not the API serving: it restarted with the new manifest.
wait_for "the API server to be ready" kubectl get --raw /readyz || { diagnose; say FAIL; exit 1; }

say "API calls on namespace and ConfigMap $name"
kubectl create namespace "$name"
kubectl -n "$name" create configmap "$name" --from-literal=made-by=kind-e2e
kubectl -n "$name" delete configmap "$name"
kubectl delete namespace "$name" --wait=false

if wait_for "the four audit events of $name in the tailer's log" events_arrived; then
    say "PASS: create and delete of namespace and ConfigMap $name reached the tailer ($tailer$([ "$konnectivity" = 1 ] && echo ', through konnectivity'))"
else
    diagnose
    say "FAIL: the audit events of $name did not all reach the tailer"
    exit 1
fi
