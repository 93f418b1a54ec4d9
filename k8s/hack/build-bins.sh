#!/usr/bin/env bash
# build-bins.sh builds the Kubernetes test binaries the k8s/ tests run
# (kube-apiserver and etcd, which envtest starts from KUBEBUILDER_ASSETS)
# and controller-gen (which `make crds` runs) from the Go module proxy,
# keeps them in a cache directory outside the clone, and copies them into
# the destination directory.
#
# Usage: build-bins.sh DEST CACHE K8S_VERSION ETCD_VERSION CONTROLLER_TOOLS_VERSION
#
# CACHE holds one finished binary per name; a binary is built into it only
# when it is missing, so a fresh clone on a machine that built them once
# copies them in a second instead of rebuilding kube-apiserver (a cold
# build takes minutes and gigabytes of build cache). If CACHE cannot be
# created, the binaries are built straight into DEST.
#
# Neither k8s.io/kubernetes nor etcd's server can be built with
# `go install pkg@version`: their go.mod files carry replace directives.
# So each is built from a temporary module that requires it and, for
# Kubernetes, replaces every staging module (listed in its go.mod at
# v0.0.0 and replaced by a ./staging path) with the published v0.X.Y.
set -euo pipefail

dest=$1 cache=$2 k8s_version=$3 etcd_version=$4 ctools_version=$5
go=${GO:-go}
export CGO_ENABLED=0 GOFLAGS=-mod=mod

mkdir -p "$dest"
if ! mkdir -p "$cache" 2>/dev/null || [[ ! -w $cache ]]; then
	echo "build-bins: cache $cache is not writable; building into $dest" >&2
	cache=$dest
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build_kube_apiserver OUT builds kube-apiserver $k8s_version into OUT.
build_kube_apiserver() {
	local out=$1 minor staging mod
	minor=$(echo "$k8s_version" | cut -d. -f2)
	staging="v0.${k8s_version#v1.}"
	mod=$work/kube-apiserver
	mkdir -p "$mod"
	(
		cd "$mod"
		$go mod init drover.local/k8sbins >/dev/null 2>&1
		$go mod download -json "k8s.io/kubernetes@$k8s_version" >/dev/null
		local gomod
		gomod=$($go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$k8s_version.mod
		# Every module the kubernetes go.mod replaces with a staging path.
		sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*|\1|p' "$gomod" | while read -r m; do
			# Only modules its requirements name: the sample-* ones are not published.
			if grep -Eq "^[[:space:]]*$m v0\.0\.0\$" "$gomod"; then
				$go mod edit -replace="$m=$m@$staging"
			fi
		done
		$go get "k8s.io/kubernetes/cmd/kube-apiserver@$k8s_version"
		nice $go build -trimpath -o "$out" \
			-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
			k8s.io/kubernetes/cmd/kube-apiserver
	)
}

# build_etcd OUT builds etcd $etcd_version into OUT.
build_etcd() {
	local out=$1 mod=$work/etcd
	mkdir -p "$mod"
	(
		cd "$mod"
		$go mod init drover.local/etcdbin >/dev/null 2>&1
		$go get "go.etcd.io/etcd/server/v3@$etcd_version"
		nice $go build -trimpath -ldflags "-s -w" -o "$out" go.etcd.io/etcd/server/v3
	)
}

# build_controller_gen OUT installs controller-gen $ctools_version as OUT.
build_controller_gen() {
	local out=$1
	GOBIN=$work/gobin nice $go install "sigs.k8s.io/controller-tools/cmd/controller-gen@$ctools_version"
	mv "$work/gobin/controller-gen" "$out"
}

for name in kube-apiserver etcd controller-gen; do
	cached=$cache/$name
	if [[ ! -x $cached ]]; then
		echo "build-bins: building $name into $cache"
		"build_${name//-/_}" "$cached.tmp"
		mv "$cached.tmp" "$cached"
	fi
	if [[ $cache != "$dest" ]]; then
		cp -f "$cached" "$dest/$name.tmp"
		mv "$dest/$name.tmp" "$dest/$name"
	fi
done
