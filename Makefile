# Drover developer targets. Run `make help` for the list.
#
# rapid check counts: pgregory.net/rapid v1.3.0 takes its default check
# count from the RAPID_CHECKS environment variable (its -rapid.checks flag
# would break `go test ./...` for packages that do not import rapid).
# `make test` exports RAPID_CHECKS=$(RAPID_CHECKS); override it per run, e.g.
# `make test RAPID_CHECKS=10000`.

# Find Go on a fresh machine where only /usr/local/go/bin holds it.
export PATH := $(PATH):/usr/local/go/bin

GO                  ?= go
BIN                 := $(CURDIR)/bin
TEST_TIMEOUT        ?= 20m
RAPID_CHECKS        ?= 1000
# FUZZTIME is how long each fuzz target runs with `make fuzz`, the
# campaign (`make fuzz FUZZTIME=10m`; FUZZ_TARGETS='FuzzA FuzzB' picks
# targets by name). The default is a count of inputs, not a duration: Go
# 1.26's fuzz coordinator can fail a duration run at its deadline with
# "context deadline exceeded" and no failing input (golang/go#75804, fixed
# in Go 1.27). The fuzz loop below reports that case as the race, not a
# finding; any failure that writes an input under testdata/fuzz, or says
# anything else, fails.
FUZZTIME            ?= 100000x
FUZZ_TARGETS        ?=
# FUZZ_SMOKE is each target's budget in make test's smoke run (make
# fuzz-smoke): a count of inputs, since exec speed varies from 300,000/s
# (pure decoders) to under 100/s (targets whose every input writes and
# reopens files), so a duration would give the slow ones next to nothing.
# FUZZ_SMOKE_SLOW overrides it for those, name=count. Together they keep
# the smoke run to about 2 minutes on 2 cores: mostly each target's fixed
# cost (build, baseline coverage, workers).
FUZZ_SMOKE          ?= 20000x
FUZZ_SMOKE_SLOW     ?= FuzzGetChunk=1000x FuzzDamagedFiles=500x
SIM_LONG_TIMEOUT    ?= 2h
# SIM_LONG_SEEDS is how many swarm seeds `make sim-long` runs (make test
# runs 1000, plus 50 of each named fault profile).
SIM_LONG_SEEDS      ?= 10000
STATICCHECK_VERSION := v0.8.2
STATICCHECK         := $(BIN)/staticcheck
STATICCHECK_STAMP   := $(BIN)/.staticcheck-$(STATICCHECK_VERSION)
# versitygw is the real S3 server the backup tests run (its posix backend,
# as a separate process on 127.0.0.1), built from the module proxy.
VERSITYGW_VERSION   := v1.8.0
VERSITYGW_STAMP     := $(BIN)/.versitygw-$(VERSITYGW_VERSION)
# The k8s/ tests run a real kube-apiserver and etcd (envtest starts them
# from KUBEBUILDER_ASSETS=bin/), built from the module proxy by
# k8s/hack/build-bins.sh with controller-gen (make crds). A cold build of
# kube-apiserver takes minutes and gigabytes of build cache, so the
# binaries are kept in K8S_BIN_CACHE, outside the clone, and copied into
# bin/ from there: CI's fresh clones on the same machine build them once.
# controller-tools v0.23 is the release built on k8s.io v0.37, the
# libraries controller-runtime v0.25 uses.
K8S_VERSION         := v1.37.2
ETCD_VERSION        := v3.7.3
CONTROLLER_TOOLS_VERSION := v0.23.0
K8S_BIN_CACHE       ?= /var/cache/drover/k8s-$(K8S_VERSION)-etcd-$(ETCD_VERSION)-controller-tools-$(CONTROLLER_TOOLS_VERSION)
K8S_BINS_STAMP      := $(BIN)/.k8s-bins-$(K8S_VERSION)-$(ETCD_VERSION)-$(CONTROLLER_TOOLS_VERSION)
export KUBEBUILDER_ASSETS ?= $(BIN)
# make e2e runs a real single-node Kubernetes: besides kube-apiserver and
# etcd (above) it needs the kubelet, controller manager and scheduler and
# the CSI sidecars with the snapshot controller and CRDs, built by
# k8s/hack/build-e2e-bins.sh into their own versioned cache (about 30 min
# cold on 2 cores, seconds warm). node-driver-registrar and livenessprobe
# are not served by the module proxy: drover registers itself with the
# kubelet (k8s/pluginreg).
CSI_PROVISIONER_VERSION := v6.4.0
CSI_ATTACHER_VERSION    := v4.13.0
CSI_RESIZER_VERSION     := v2.3.0
CSI_SNAPSHOTTER_VERSION := v8.7.0
E2E_BIN_VERSIONS        := $(K8S_VERSION)-provisioner-$(CSI_PROVISIONER_VERSION)-attacher-$(CSI_ATTACHER_VERSION)-resizer-$(CSI_RESIZER_VERSION)-snapshotter-$(CSI_SNAPSHOTTER_VERSION)
E2E_BIN_CACHE           ?= /var/cache/drover/k8s-e2e-$(E2E_BIN_VERSIONS)
E2E_BINS_STAMP          := $(BIN)/.k8s-e2e-bins-$(E2E_BIN_VERSIONS)

export RAPID_CHECKS

# A failed browser test (the web console's) leaves a screenshot and the
# page's HTML under DROVER_TEST_ARTIFACTS/<test>.
DROVER_TEST_ARTIFACTS ?= $(CURDIR)/.artifacts
export DROVER_TEST_ARTIFACTS

# SIM_SEED_WINDOW moves a window of 200 extra swarm seeds with every
# commit (sim's TestSeeds derives them from it), so CI keeps exploring.
SIM_SEED_WINDOW     ?= $(shell git rev-parse HEAD 2>/dev/null)
export SIM_SEED_WINDOW

# fuzz_targets prints "dir FuzzName" for every fuzz target in the tree.
fuzz_targets = grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . \
	| sed -E 's|^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)$$|\1 \2|' | sort -u

.PHONY: k8s-bins k8s-e2e-bins e2e crds k8s-scale image test-race versitygw bench-backup bench-rebuild help build test fuzz-smoke lint sim-long fuzz bench run clean iscsi-compare conformance iscsi-soak iscsi-perf-compare proto

help:
	@echo "make build     build bin/drover"
	@echo "make test      unit, property, layering, purity and process tests ($(RACE_PKGS) under -race), then a fuzz smoke run of $(FUZZ_SMOKE) per target ($(FUZZ_SMOKE_SLOW))"
	@echo "make test-race the rest of the concurrent shell under -race ($(RACE_SLOW_PKGS)); .ci/run runs it after make test"
	@echo "make lint      gofmt, go vet, staticcheck $(STATICCHECK_VERSION)"
	@echo "make sim-long  $(SIM_LONG_SEEDS) swarm seeds of the simulator, then as many of the 'all' profile at 5000 ops"
	@echo "make fuzz      run every fuzz target (or FUZZ_TARGETS) for FUZZTIME (default $(FUZZTIME))"
	@echo "make bench     drover bench (fio vs nbdkit, qemu-nbd, raw file) on tmpfs and disk, Go benchmarks, then bench-backup"
	@echo "make bench-rebuild full rebuild of a $(REBUILD_BENCH_SIZE) volume over TCP vs fio on the same disk, catch-up after 10% changed"
	@echo "make bench-backup  backup/restore MB/s of a $(BACKUP_BENCH_SIZE) volume vs tar|zstd, objects per GiB, incremental after 5% change"
	@echo "make iscsi-compare  iscsi-test-cu against Drover and tgtd in one run (root, libiscsi-bin, tgt)"
	@echo "make iscsi-soak     iscsi-perf at queue depth 32 for ISCSI_SOAK (default 60s) on a 3-replica volume"
	@echo "make iscsi-perf-compare  iscsi-perf 4 KiB reads: Drover 1 and 3 replicas vs tgtd, IOPS ratios (root, tgt)"
	@echo "make run       build and run 'drover dev': a 1 GiB volume, three local replicas, NBD (DATA_DIR=$(DATA_DIR))"
	@echo "make versitygw build the S3 server the backup tests use into bin/ (make test does)"
	@echo "make k8s-bins  build kube-apiserver $(K8S_VERSION), etcd $(ETCD_VERSION), controller-gen $(CONTROLLER_TOOLS_VERSION) into bin/ via $(K8S_BIN_CACHE) (make test does)"
	@echo "make k8s-e2e-bins  build kubelet, controller manager, scheduler $(K8S_VERSION) and the CSI sidecars into bin/ via $(E2E_BIN_CACHE)"
	@echo "make e2e       Drover on a real single-node Kubernetes (kubelet, containerd): PVC, Pod, snapshot, restore, expand, replica kill, cleanup"
	@echo "make image     bin/drover-image.tar: a reproducible docker-archive image of drover ($(IMAGE_TAG)), no registry needed"
	@echo "make k8s-scale the manager's memory with K8S_SCALE (default $(K8S_SCALE)) volumes against none, in one run"
	@echo "make crds      regenerate deploy/crds and k8s/api's deepcopy code with controller-gen"
	@echo "make proto     regenerate the committed gRPC/protobuf code (needs protoc)"

build:
	$(GO) build -o $(BIN)/drover ./cmd/drover

# The concurrent shell (transports/, frontends/, cmd/drover) runs under
# the race detector. make test runs RACE_PKGS with -race and everything
# else without; make test-race (which .ci/run also runs) runs the rest of
# the shell with -race: iSCSI's conformance suites and cmd/drover's
# process tests take 2-3x as long under -race (about 8 min together),
# which would push make test past its 15-minute budget on 2 cores.
# TestDataPathAllocatesNothing and TestHostileClientsMemoryBounded skip
# under -race (the detector drops sync.Pool items and keeps shadow memory),
# so make test also runs them without.
RACE_PKGS           := ./transports/... ./frontends/nbd/...
RACE_SLOW_PKGS      := ./frontends/iscsi ./cmd/drover
race_pkg_list        = $(shell $(GO) list $(RACE_PKGS))
plain_pkg_list       = $(filter-out $(race_pkg_list),$(shell $(GO) list ./...))

test: $(VERSITYGW_STAMP) $(K8S_BINS_STAMP)
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(plain_pkg_list)
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_PKGS)
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestDataPathAllocatesNothing$$' ./transports/enginerun
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestHostileClientsMemoryBounded$$' ./frontends/nbd
	@$(MAKE) --no-print-directory fuzz-smoke

test-race: $(VERSITYGW_STAMP)
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_SLOW_PKGS)

# fuzz_run runs the fuzz targets named in FUZZ_TARGETS (all when
# empty), each for the budget the shell function budget prints.
define fuzz_run
	targets="$$($(fuzz_targets))"; \
	if [ -z "$$targets" ]; then \
		echo "fuzz: no fuzz targets exist yet (they arrive with the wire codec and fuzz/ issues)"; \
		exit 0; \
	fi; \
	echo "$$targets" | while read -r dir name; do \
		if [ -n "$(FUZZ_TARGETS)" ] && ! echo " $(FUZZ_TARGETS) " | grep -q " $$name "; then continue; fi; \
		t=$$(budget "$$name"); \
		echo "fuzz: $$dir $$name for $$t"; \
		corpus="$$dir/testdata/fuzz/$$name"; \
		before=$$(ls "$$corpus" 2>/dev/null | wc -l); \
		out=$$(mktemp); start=$$(date +%s); \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$$t "$$dir" >"$$out" 2>&1; rc=$$?; \
		cat "$$out"; \
		echo "fuzz: $$name took $$(( $$(date +%s) - start )) s with the build"; \
		after=$$(ls "$$corpus" 2>/dev/null | wc -l); \
		if [ $$rc -ne 0 ]; then \
			if [ "$$after" -eq "$$before" ] && grep -q '^    context deadline exceeded$$' "$$out" && \
				[ "$$(grep -c -- '--- FAIL' "$$out")" -eq 1 ]; then \
				echo "fuzz: $$name stopped at its deadline with no failing input: Go 1.26's coordinator race (golang/go#75804), not a finding"; \
			else \
				rm -f "$$out"; exit 1; \
			fi; \
		fi; \
		rm -f "$$out"; \
	done
endef

fuzz:
	@budget() { echo "$(FUZZTIME)"; }; \
	$(fuzz_run)

fuzz-smoke:
	@budget() { t="$(FUZZ_SMOKE)"; for kv in $(FUZZ_SMOKE_SLOW); do [ "$${kv%%=*}" = "$$1" ] && t="$${kv#*=}"; done; echo "$$t"; }; \
	start=$$(date +%s); \
	$(fuzz_run); \
	rc=$$?; echo "fuzz-smoke: $$(( $$(date +%s) - start )) s"; exit $$rc

lint: $(STATICCHECK_STAMP)
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK_STAMP):
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@touch $@

versitygw: $(VERSITYGW_STAMP)
$(VERSITYGW_STAMP):
	GOBIN=$(BIN) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
	@touch $@

k8s-bins: $(K8S_BINS_STAMP)
$(K8S_BINS_STAMP): k8s/hack/build-bins.sh
	GO=$(GO) k8s/hack/build-bins.sh $(BIN) $(K8S_BIN_CACHE) $(K8S_VERSION) $(ETCD_VERSION) $(CONTROLLER_TOOLS_VERSION)
	@touch $@

k8s-e2e-bins: $(E2E_BINS_STAMP)
$(E2E_BINS_STAMP): k8s/hack/build-e2e-bins.sh
	GO=$(GO) k8s/hack/build-e2e-bins.sh $(BIN) $(E2E_BIN_CACHE) $(K8S_VERSION) \
		$(CSI_PROVISIONER_VERSION) $(CSI_ATTACHER_VERSION) $(CSI_RESIZER_VERSION) $(CSI_SNAPSHOTTER_VERSION)
	@touch $@

# e2e runs Drover on a real single-node Kubernetes (k8s/e2e): etcd,
# kube-apiserver, controller manager, scheduler and kubelet from the
# binaries above, containerd, runc and the CNI plugins from Debian, and
# Drover's manager, agent and CSI driver as Pods of deploy/manifests from
# make image's image. Root only; the cluster lives in E2E_ROOT and is torn
# down (by PID files) at the end, also when a step fails. It prints each
# step's time and the whole run's wall time.
E2E_ROOT            ?= /var/tmp/drover-e2e
E2E_TIMEOUT         ?= 30m
e2e: $(K8S_BINS_STAMP) $(E2E_BINS_STAMP) image
	@start=$$(date +%s); \
	DROVER_E2E=1 DROVER_E2E_ROOT=$(E2E_ROOT) $(GO) test -count=1 -timeout $(E2E_TIMEOUT) -run '^TestEndToEnd$$' -v ./k8s/e2e; rc=$$?; \
	echo "make e2e: wall time $$(( $$(date +%s) - start )) s (binaries and image ready before)"; exit $$rc

# crds regenerates the committed CRDs (and the Helm chart's copy) and
# deepcopy code from k8s/api's Go types; k8s/api's TestCRDsUpToDate fails
# when they drift.
crds: $(K8S_BINS_STAMP)
	$(BIN)/controller-gen object paths=./k8s/api/... crd paths=./k8s/api/... output:crd:artifacts:config=deploy/crds
	rm -f deploy/chart/crds/*.yaml && cp deploy/crds/*.yaml deploy/chart/crds/

# image writes Drover's container image as a docker-archive tarball,
# $(BIN)/drover-image.tar (docker load / podman load / kind load
# image-archive), with no registry or container runtime: a static drover
# built reproducibly (-trimpath, no build id, no VCS stamp) in one layer.
# The same commit and Go version give the same bytes.
IMAGE_TAG           ?= drover:dev
image:
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -buildvcs=false -ldflags '-s -w -buildid=' -o $(BIN)/image/drover ./cmd/drover
	$(GO) run ./cmd/drover-image --binary $(BIN)/image/drover --out $(BIN)/drover-image.tar --tag $(IMAGE_TAG)

# k8s-scale measures the manager process's memory with K8S_SCALE volumes
# (three replicas each, on Node objects without agents) against its
# memory with none, and the time to place them all.
K8S_SCALE           ?= 100
k8s-scale: $(K8S_BINS_STAMP)
	DROVER_K8S_SCALE=$(K8S_SCALE) $(GO) test -count=1 -timeout 10m -run '^TestProcessK8sManagerScale$$' -v ./cmd/drover

sim-long:
	SIM_SEEDS=$(SIM_LONG_SEEDS) $(GO) test -count=1 -timeout $(SIM_LONG_TIMEOUT) -run '^TestSeeds$$' -v ./sim/ | grep -v '^=== '
	$(GO) run ./cmd/drover sim --seeds 1..$(SIM_LONG_SEEDS) --faults all --ops 5000

# bench runs `drover bench` (fio: raw file, nbdkit-file, qemu-nbd, Drover
# with 1 and 3 replicas; see drover bench --help) on tmpfs and on BENCH_DIR's
# disk, writing JSON reports to bin/, then the Go micro-benchmarks.
# BENCH_RUNTIME is fio's runtime per cell (7 targets x 5 workloads per dir).
BENCH_RUNTIME       ?= 3s
BENCH_DIR           ?= $(BIN)
BENCH_GO_PKGS       := ./core/blockset ./transports/tcp ./transports/enginerun

bench: build
	$(BIN)/drover bench --tmpfs --runtime $(BENCH_RUNTIME) --json $(BIN)/bench-tmpfs.json
	$(BIN)/drover bench --dir $(BENCH_DIR) --runtime $(BENCH_RUNTIME) --json $(BIN)/bench-disk.json
	$(GO) test -count=1 -run '^$$' -bench . -benchmem $(BENCH_GO_PKGS)
	@$(MAKE) --no-print-directory bench-backup
	@$(MAKE) --no-print-directory bench-rebuild

# bench-rebuild runs `drover bench rebuild` on BENCH_DIR's disk: fio's
# sequential write and read of REBUILD_BENCH_SIZE (the reference), a full
# rebuild of a volume that size over loopback TCP as a ratio of it (goal
# >= 0.8), and the bytes a catch-up copies after 10% of the blocks changed
# (goal <= 15%).
REBUILD_BENCH_SIZE  ?= 2GiB
bench-rebuild: build
	$(BIN)/drover bench rebuild --dir $(BENCH_DIR) --size $(REBUILD_BENCH_SIZE) --json $(BIN)/bench-rebuild.json

# bench-backup backs a BACKUP_BENCH_SIZE volume (drover dev on BENCH_DIR's
# disk) up to a directory target and restores it, against tar | zstd -T0
# and zstd -d | tar x of the same data in the same run, then measures an
# incremental backup after 5% of the volume changed (TestBackupBench).
BACKUP_BENCH_SIZE   ?= 2GiB
bench-backup:
	DROVER_BACKUP_BENCH=1 DROVER_BACKUP_BENCH_SIZE=$(BACKUP_BENCH_SIZE) DROVER_BACKUP_BENCH_DIR=$(BENCH_DIR) \
		$(GO) test -count=1 -timeout 30m -run '^TestBackupBench$$' -v ./cmd/drover

# DATA_DIR is where `make run` keeps its volume (git ignores /.drover/).
# Running `make run` again, after a stop or even a kill -9, reopens it.
DATA_DIR            ?= $(CURDIR)/.drover
# RUN_ARGS are more `drover dev` flags, e.g. RUN_ARGS='--frontend iscsi'.
RUN_ARGS            ?=

run: build
	exec $(BIN)/drover dev --data-dir "$(DATA_DIR)" $(RUN_ARGS)

# proto regenerates transports/control/controlpb from control.proto. The
# generated code is committed, so only changing the .proto needs protoc
# (Debian: apt-get install protobuf-compiler) and the two plugins below.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
proto:
	@command -v protoc >/dev/null || { echo "proto: protoc is missing (Debian: apt-get install -y protobuf-compiler)"; exit 1; }
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	cd transports/control/controlpb && PATH="$(BIN):$$PATH" protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative control.proto

clean:
	rm -rf $(BIN)

# iscsi-compare runs libiscsi's whole conformance suite against Drover's
# iSCSI target and against tgtd (Debian tgt) serving a file of the same
# size, and prints pass/fail/skip counts side by side.
iscsi-compare conformance:
	DROVER_ISCSI_COMPARE=1 $(GO) test -count=1 -timeout 30m -run '^TestCompareWithTgtd$$' -v ./frontends/iscsi

# iscsi-soak runs two iscsi-perf sessions (sequential and random 4 KiB
# reads, queue depth 32) for ISCSI_SOAK against a 3-replica Drover volume
# in the test process, beside a writer; more than about a second without a
# completion (a jump in iscsi-perf's progress countdown), or a session that
# does not finish, fails it. make test runs the
# same test for 5 s.
ISCSI_SOAK          ?= 60s
iscsi-soak:
	DROVER_ISCSI_SOAK=$(ISCSI_SOAK) $(GO) test -count=1 -timeout 10m -run '^TestSoakThreeReplicas$$' -v ./frontends/iscsi

# iscsi-perf-compare runs iscsi-perf (-m 32 -b 8: 4 KiB reads at queue
# depth 32 on 512-byte LUNs, sequential and random) for ISCSI_PERF_TIME per
# cell against Drover with 1 and 3 replicas and tgtd serving a file, in
# one run, and prints IOPS and ratios to tgtd.
ISCSI_PERF_TIME     ?= 10s
iscsi-perf-compare:
	DROVER_ISCSI_PERF=1 DROVER_ISCSI_PERF_TIME=$(ISCSI_PERF_TIME) $(GO) test -count=1 -timeout 10m -run '^TestPerfCompare$$' -v ./frontends/iscsi
