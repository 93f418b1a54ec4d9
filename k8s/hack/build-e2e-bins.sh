#!/usr/bin/env bash
# build-e2e-bins.sh builds the rest of a real single-node Kubernetes that
# `make e2e` runs (kube-apiserver and etcd come from build-bins.sh): the
# kubelet, kube-controller-manager and kube-scheduler, and the CSI
# sidecars (csi-provisioner, csi-attacher, csi-resizer, csi-snapshotter)
# with the snapshot controller, all from the Go module proxy, plus the
# snapshot CRDs (from external-snapshotter's client module). Like
# build-bins.sh it keeps finished binaries in a cache directory outside
# the clone (a cold build is about half an hour on 2 cores) and copies
# them into DEST.
#
# Usage: build-e2e-bins.sh DEST CACHE K8S_VERSION PROVISIONER ATTACHER RESIZER SNAPSHOTTER
# (each sidecar argument is its module version, e.g. v6.4.0)
#
# None of these builds with `go install pkg@version` except the resizer:
# their go.mod files carry replace directives. Each is built from a
# temporary module that requires it and copies its replaces; a replace by
# a local path (Kubernetes' ./staging/src/k8s.io/x, the snapshotter's
# ./client) becomes the published module at the matching version, kept
# only when the requirements name that module.
set -euo pipefail

dest=$1 cache=$2 k8s_version=$3 prov_version=$4 att_version=$5 rsz_version=$6 snap_version=$7
go=${GO:-go}
export CGO_ENABLED=0 GOFLAGS=-mod=mod

mkdir -p "$dest"
if ! mkdir -p "$cache" 2>/dev/null || [[ ! -w $cache ]]; then
	echo "build-e2e-bins: cache $cache is not writable; building into $dest" >&2
	cache=$dest
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# copy_replaces GOMOD LOCALVER adds to the current module every replace
# directive of GOMOD (a go.mod file), in both the one-line and the block
# form. A replace by a local path becomes the replaced module at LOCALVER,
# and only when GOMOD requires that module.
copy_replaces() {
	local gomod=$1 localver=$2
	awk '
		/^replace[ \t]*\($/ { inblock = 1; next }
		inblock && /^\)/ { inblock = 0; next }
		/=>/ && (inblock || /^replace[ \t]/) {
			line = $0; sub(/^replace[ \t]+/, "", line); sub(/\/\/.*/, "", line)
			split(line, sides, "=>")
			nl = split(sides[1], l, " "); nr = split(sides[2], r, " ")
			print l[1], r[1], (nr > 1 ? r[2] : "-")
		}' "$gomod" | while read -r old new ver; do
		if [[ $ver == - ]]; then
			# A local path: the published module, if it is required at all.
			grep -Eq "^[[:space:]]*(require[[:space:]]+)?$old v" "$gomod" || continue
			$go mod edit -replace="$old=$old@$localver"
		else
			$go mod edit -replace="$old=$new@$ver"
		fi
	done
}

# prepare_module DIR MODULE VERSION LOCALVER makes DIR a temporary module
# that requires MODULE@VERSION with MODULE's replaces copied.
prepare_module() {
	local dir=$1 module=$2 version=$3 localver=$4 gomod
	[[ -f $dir/go.mod ]] && return 0
	mkdir -p "$dir"
	(
		cd "$dir"
		$go mod init drover.local/e2ebins >/dev/null 2>&1
		gomod=$($go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
		copy_replaces "$gomod" "$localver"
		$go get "$module@$version" >/dev/null
	)
}

# build_in DIR OUT PKG VERSION [LDFLAGS] builds PKG (of a module at
# VERSION) in the temporary module DIR.
build_in() {
	local dir=$1 out=$2 pkg=$3 version=$4 ldflags=${5:-}
	(
		cd "$dir"
		$go get "$pkg@$version" >/dev/null
		nice -n 10 $go build -trimpath -ldflags "-s -w $ldflags" -o "$out" "$pkg"
	)
}

build_kube() {
	local cmd=$1 out=$2 minor
	minor=$(echo "$k8s_version" | cut -d. -f2)
	prepare_module "$work/kubernetes" k8s.io/kubernetes "$k8s_version" "v0.${k8s_version#v1.}"
	build_in "$work/kubernetes" "$out" "k8s.io/kubernetes/cmd/$cmd" "$k8s_version" \
		"-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
}

build_sidecar() {
	local module=$1 version=$2 cmd=$3 out=$4
	local dir
	dir=$work/$(basename "$(dirname "$module")")
	prepare_module "$dir" "$module" "$version" "$version"
	build_in "$dir" "$out" "$module/cmd/$cmd" "$version" "-X main.version=$version"
}

build_kubelet() { build_kube kubelet "$1"; }
build_kube_controller_manager() { build_kube kube-controller-manager "$1"; }
build_kube_scheduler() { build_kube kube-scheduler "$1"; }
build_csi_provisioner() { build_sidecar github.com/kubernetes-csi/external-provisioner/v6 "$prov_version" csi-provisioner "$1"; }
build_csi_attacher() { build_sidecar github.com/kubernetes-csi/external-attacher/v4 "$att_version" csi-attacher "$1"; }
build_csi_resizer() { build_sidecar github.com/kubernetes-csi/external-resizer/v2 "$rsz_version" csi-resizer "$1"; }
build_csi_snapshotter() { build_sidecar github.com/kubernetes-csi/external-snapshotter/v8 "$snap_version" csi-snapshotter "$1"; }
build_snapshot_controller() { build_sidecar github.com/kubernetes-csi/external-snapshotter/v8 "$snap_version" snapshot-controller "$1"; }

# The snapshot CRDs (VolumeSnapshot, VolumeSnapshotContent,
# VolumeSnapshotClass) ship in the snapshotter's client module.
if [[ ! -d $cache/snapshot-crds ]]; then
	dir=$($go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$snap_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	mkdir -p "$cache/snapshot-crds.tmp"
	cp "$dir"/config/crd/snapshot.storage.k8s.io_*.yaml "$cache/snapshot-crds.tmp/"
	chmod 644 "$cache"/snapshot-crds.tmp/*
	mv "$cache/snapshot-crds.tmp" "$cache/snapshot-crds"
fi
if [[ $cache != "$dest" ]]; then
	rm -rf "$dest/snapshot-crds" && cp -r "$cache/snapshot-crds" "$dest/snapshot-crds"
fi

for name in ${BUILD_ONLY:-kubelet kube-controller-manager kube-scheduler csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller}; do
	cached=$cache/$name
	if [[ ! -x $cached ]]; then
		echo "build-e2e-bins: building $name into $cache"
		start=$(date +%s)
		"build_${name//-/_}" "$cached.tmp"
		mv "$cached.tmp" "$cached"
		echo "build-e2e-bins: built $name in $(($(date +%s) - start)) s"
	fi
	if [[ $cache != "$dest" ]]; then
		cp -f "$cached" "$dest/$name.tmp"
		mv "$dest/$name.tmp" "$dest/$name"
	fi
done
