#!/usr/bin/env bash
# Builds the Kubernetes test stack once and prints the directory holding it:
# kube-apiserver and kubectl (the same Kubernetes release), etcd and kwok, all from
# their Go modules (no registry ships them as binaries). The binaries go to a
# versioned cache directory outside the repository, marked complete only when every
# one built, so only the first run on a machine pays (15–25 minutes on two cores).
#
#   scripts/k8s-stack.sh                      # → /var/cache/warden-test/k8s-1.37.2-...
#   WARDEN_K8S_CACHE=/somewhere scripts/k8s-stack.sh
set -euo pipefail

k8s=${WARDEN_K8S_VERSION:-1.37.2}
etcd=${WARDEN_ETCD_VERSION:-3.6.16}
kwok=${WARDEN_KWOK_VERSION:-0.8.0}
# The last part names this script's revision: a change to how the binaries are built
# builds them again.
dir=${WARDEN_K8S_CACHE:-/var/cache/warden-test/k8s-$k8s-etcd-$etcd-kwok-$kwok-r2}
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
command -v go >/dev/null || { echo "go not found: the Kubernetes test stack is built from Go modules" >&2; exit 1; }
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0
ldflags="-s -w"
log() { printf '==> %s\n' "$*" >&2; }

# kube-apiserver and kubectl: k8s.io/kubernetes points its k8s.io/* staging modules
# at its own tree (`replace ... => ./staging/...`), which `go install` refuses; a
# module of our own requires it and points each at the published v0.x.y instead.
log "building kube-apiserver and kubectl $k8s"
mkdir "$work/k8s"
(
  cd "$work/k8s"
  printf 'module warden.test/k8s\n\ngo 1.26\n\nrequire k8s.io/kubernetes v%s\n' "$k8s" >go.mod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$k8s" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging=$(sed -n 's|^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*|\1|p' "$gomod")
  [ -n "$staging" ] || { echo "no staging modules found in $gomod" >&2; exit 1; }
  for m in $staging; do
    printf 'replace %s => %s v0.%s\n' "$m" "$m" "${k8s#1.}" >>go.mod
  done
  # The version the binaries report (kubectl compares its own with the server's).
  version="-X k8s.io/component-base/version.gitVersion=v$k8s -X k8s.io/component-base/version.gitMajor=${k8s%%.*}"
  version="$version -X k8s.io/component-base/version.gitMinor=$(echo "$k8s" | cut -d. -f2)"
  version="$version -X k8s.io/client-go/pkg/version.gitVersion=v$k8s"
  go build -ldflags="$ldflags $version" -o "$dir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -ldflags="$ldflags $version" -o "$dir/kubectl" k8s.io/kubernetes/cmd/kubectl
)

# etcd: its root module replaces its own submodules too; the server's module exports
# the whole command as etcdmain.
log "building etcd $etcd"
mkdir "$work/etcd"
(
  cd "$work/etcd"
  printf 'module warden.test/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$etcd" >go.mod
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
  go build -ldflags="$ldflags" -o "$dir/etcd" .
)

log "building kwok $kwok"
GOBIN=$dir go install -ldflags="$ldflags" "sigs.k8s.io/kwok/cmd/kwok@v$kwok"

for b in kube-apiserver kubectl etcd kwok; do
  [ -x "$dir/$b" ] || { echo "$b was not built" >&2; exit 1; }
done
touch "$dir/.complete"
echo "$dir"
