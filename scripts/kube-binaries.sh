#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok) from Go modules and cache the binaries outside the clone.
#
# Why from modules: this project's machines reach the Go module proxy but no
# container registry or download site, so the binaries envtest/kind users
# download are built here instead. k8s.io/kubernetes publishes its staging
# modules at v0.0.0 in its own go.mod, so a small wrapper module pins each of
# them to the matching v0.X.Y with replace directives.
#
# Usage: scripts/kube-binaries.sh            build what is missing, print the bin dir
#        scripts/kube-binaries.sh --print    print the bin dir, build nothing
# A cold build takes about 12 minutes on 2 cores (see README); a warm one is a no-op.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
CACHE_ROOT="${POLICY_ROLLOUTS_KUBE_CACHE:-$HOME/.cache/policy-rollouts/kube}"
BIN_DIR="$CACHE_ROOT/v$KUBE_VERSION/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

if [[ "${1:-}" == "--print" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

missing=()
for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN_DIR"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "kube-binaries: Go is not installed; install Go >= 1.26 (https://go.dev/doc/install or 'apt-get install golang') and rerun" >&2
  exit 2
fi

# Never let a module's toolchain line fetch another Go: the machine's Go builds all of these.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0
mkdir -p "$BIN_DIR"
WORK="$CACHE_ROOT/v$KUBE_VERSION/src"
mkdir -p "$WORK"
START=$(date +%s)
step() { echo "[kube-binaries +$(( $(date +%s) - START ))s] $*" >&2; }

minor="${KUBE_VERSION#*.}"; minor="${minor%%.*}"
staging_version="v0.${KUBE_VERSION#*.}"

build_kubernetes() {
  local dir="$WORK/kubernetes"
  mkdir -p "$dir"
  step "fetching k8s.io/kubernetes v$KUBE_VERSION's go.mod"
  local gomod
  gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module policyrollouts.local/kube-binaries"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes v$KUBE_VERSION"
    echo
    echo "replace ("
    # Every staging module k8s.io/kubernetes replaces with ./staging/src/... is
    # pinned to the published v0.X.Y of the same release.
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } > "$dir/go.mod"
  step "resolving dependencies (go get; first time downloads ~1 GB of modules)"
  (cd "$dir" && go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@v$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-scheduler@v$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubectl@v$KUBE_VERSION" >&2)
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    if [[ ! -x "$BIN_DIR/$cmd" ]]; then
      step "building $cmd (kube-apiserver is the longest: ~1,700 packages)"
      (cd "$dir" && go build -v -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" 2>&1 \
        | awk '{n++} n%200==0 {print "[kube-binaries] '"$cmd"': " n " packages compiled" > "/dev/stderr"}')
      mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
    fi
  done
}

build_simple() {  # name module-path package version
  local name=$1 module=$2 package=$3 version=$4
  local dir="$WORK/$name"
  mkdir -p "$dir"
  printf 'module policyrollouts.local/%s-binary\n\ngo 1.26.0\n' "$name" > "$dir/go.mod"
  step "resolving $module@$version"
  (cd "$dir" && go get "$package@$version" >&2)
  step "building $name"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/$name.tmp" "$package")
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
}

for b in "${missing[@]}"; do
  case "$b" in
    etcd) build_simple etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 "v$ETCD_VERSION" ;;
    kwok) build_simple kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "v$KWOK_VERSION" ;;
  esac
done
if [[ ! -x "$BIN_DIR/kube-apiserver" || ! -x "$BIN_DIR/kube-controller-manager" || ! -x "$BIN_DIR/kube-scheduler" \
      || ! -x "$BIN_DIR/kubectl" ]]; then
  build_kubernetes
fi
step "done: $(ls "$BIN_DIR" | tr '\n' ' ')"
echo "$BIN_DIR"
