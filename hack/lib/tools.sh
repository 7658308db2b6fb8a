# shellcheck shell=bash
# Builds and caches the external binaries the tests need (kube-apiserver, kube-controller-manager, kubectl,
# etcd, helm) from the Go module proxy. Sourced by hack/control-plane, hack/test and hack/demo.
# Binaries are cached by version under $SMART_OPERATOR_CACHE (default ~/.cache/smart-operator), so only the
# first run on a machine pays for the builds.

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
# kube 1.36 must be built with the Go line it was released with (a newer Go breaks its OpenAPI handler).
K8S_GO_TOOLCHAIN=${K8S_GO_TOOLCHAIN:-go1.26.8}
SMART_OPERATOR_CACHE=${SMART_OPERATOR_CACHE:-$HOME/.cache/smart-operator}

k8s_bin_dir() { echo "$SMART_OPERATOR_CACHE/bin/kubernetes-$K8S_VERSION"; }
etcd_bin() { echo "$SMART_OPERATOR_CACHE/bin/etcd-$ETCD_VERSION/etcd"; }
helm_bin() { echo "$SMART_OPERATOR_CACHE/bin/helm-$HELM_VERSION/helm"; }
kubectl_bin() { echo "$(k8s_bin_dir)/kubectl"; }

tools_log() { printf '[tools] %s\n' "$*" >&2; }
tools_fail() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

# with_build_lock <name> <command...>: one build of <name> at a time across processes (parallel test runs
# would otherwise delete each other's work dir). The command re-checks the cache once it holds the lock.
with_build_lock() {
  local name=$1
  shift
  mkdir -p "$SMART_OPERATOR_CACHE/build"
  (
    exec 8>"$SMART_OPERATOR_CACHE/build/.$name.lock"
    flock -n 8 || { tools_log "waiting for another build of $name to finish"; flock 8; }
    "$@"
  ) || exit $? # tools_fail inside the subshell must still end the caller, as it does outside
}

require_go() {
  command -v go >/dev/null || tools_fail "step 'find go': no 'go' on PATH; install Go ${K8S_GO_TOOLCHAIN#go} or newer"
}

# ensure_kubernetes_bins builds kube-apiserver, kube-controller-manager and kubectl at $K8S_VERSION.
# k8s.io/kubernetes replaces its staging modules with local paths, which `go install` refuses; a wrapper
# module that replaces each staging module with its published v0.X.Y tag builds the same code.
have_kubernetes_bins() {
  local out; out=$(k8s_bin_dir)
  [[ -x $out/kube-apiserver && -x $out/kube-controller-manager && -x $out/kubectl ]]
}
ensure_kubernetes_bins() {
  have_kubernetes_bins && return 0
  require_go
  with_build_lock "kubernetes-$K8S_VERSION" build_kubernetes_bins
}
build_kubernetes_bins() {
  have_kubernetes_bins && return 0
  local out; out=$(k8s_bin_dir)
  local work="$SMART_OPERATOR_CACHE/build/kubernetes-$K8S_VERSION"
  local staging_version="v0.${K8S_VERSION#v1.}"
  local minor; minor=$(cut -d. -f2 <<<"$K8S_VERSION")
  tools_log "building kubernetes $K8S_VERSION binaries (first run only; about 10 minutes on 2 cores) in $work"
  rm -rf "$work" && mkdir -p "$work/bin" "$out"
  (
    set -euo pipefail
    cd "$work"
    export GOTOOLCHAIN=$K8S_GO_TOOLCHAIN GOFLAGS=-mod=mod CGO_ENABLED=0
    printf 'module local/kubernetes-bins\n\ngo 1.26\n' >go.mod
    local upstream_mod
    upstream_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [[ -f $upstream_mod ]] || { echo "could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    {
      echo 'module local/kubernetes-bins'
      echo
      grep -E '^go ' "$upstream_mod"
      grep -E '^godebug ' "$upstream_mod" || true
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo 'replace ('
      sed -nE "s#^[[:space:]]*(k8s\.io/[a-z0-9-]+) => \./staging/.*#\t\1 => \1 $staging_version#p" "$upstream_mod"
      echo ')'
    } >go.mod
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean"
    done
    # Build into the work dir and rename into the cache (same file system), so an interrupted build never
    # leaves a truncated binary that the -x checks above would accept.
    go build -trimpath -ldflags "$ldflags" -o "$work/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl
    mv "$work/bin/kube-apiserver" "$work/bin/kube-controller-manager" "$work/bin/kubectl" "$out/"
  ) || tools_fail "step 'build kubernetes $K8S_VERSION': go build failed (see output above; work dir $work)"
  "$out/kube-apiserver" --version >&2 || tools_fail "step 'build kubernetes': built kube-apiserver does not run"
}

# ensure_etcd builds etcd in its own wrapper module so its dependency versions stay its own.
ensure_etcd() {
  [[ -x $(etcd_bin) ]] && return 0
  require_go
  with_build_lock "etcd-$ETCD_VERSION" build_etcd
}
build_etcd() {
  local bin; bin=$(etcd_bin)
  [[ -x $bin ]] && return 0
  local work="$SMART_OPERATOR_CACHE/build/etcd-$ETCD_VERSION"
  tools_log "building etcd $ETCD_VERSION (first run only) in $work"
  rm -rf "$work" && mkdir -p "$work" "$(dirname "$bin")"
  (
    set -euo pipefail
    cd "$work"
    export GOTOOLCHAIN=$K8S_GO_TOOLCHAIN GOFLAGS=-mod=mod CGO_ENABLED=0
    printf 'module local/etcd-bin\n\ngo 1.26\n' >go.mod
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3
    mv "$work/etcd" "$bin"
  ) || tools_fail "step 'build etcd $ETCD_VERSION': go build failed (work dir $work)"
}

ensure_helm() {
  [[ -x $(helm_bin) ]] && return 0
  require_go
  with_build_lock "helm-$HELM_VERSION" build_helm
}
build_helm() {
  local bin; bin=$(helm_bin)
  [[ -x $bin ]] && return 0
  local work="$SMART_OPERATOR_CACHE/build/helm-$HELM_VERSION"
  tools_log "building helm $HELM_VERSION (first run only) in $work"
  rm -rf "$work" && mkdir -p "$work/bin" "$(dirname "$bin")"
  (
    set -euo pipefail
    cd "$work"
    export GOTOOLCHAIN=$K8S_GO_TOOLCHAIN CGO_ENABLED=0 GOBIN="$work/bin"
    go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$work/bin/helm" "$bin"
  ) || tools_fail "step 'build helm $HELM_VERSION': go install failed (work dir $work)"
}

# ensure_kstatus_check builds hack/kstatus (a checker on sigs.k8s.io/cli-utils' kstatus, the status
# library of Flux, Helm 4 --wait, kpt and Argo CD's generic health), cached by the hash of its sources.
kstatus_check_bin() {
  local here; here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../kstatus" && pwd)
  local hash; hash=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)
  echo "$SMART_OPERATOR_CACHE/bin/kstatus-check-$hash/kstatus-check"
}
ensure_kstatus_check() {
  [[ -x $(kstatus_check_bin) ]] && return 0
  require_go
  with_build_lock kstatus-check build_kstatus_check
}
build_kstatus_check() {
  local bin; bin=$(kstatus_check_bin)
  [[ -x $bin ]] && return 0
  local here; here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../kstatus" && pwd)
  tools_log "building the kstatus checker (first run only) into $bin"
  mkdir -p "$(dirname "$bin")"
  (
    set -euo pipefail
    cd "$here"
    GOTOOLCHAIN=local CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$bin.tmp" .
    mv "$bin.tmp" "$bin"
  ) || tools_fail "step 'build kstatus checker': go build failed in $here"
}

ensure_all_tools() {
  ensure_etcd
  ensure_kubernetes_bins
  ensure_helm
}
