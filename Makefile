# qcow2fs — build, test, install and demo. Run the test and demo targets as
# root: they mount FUSE filesystems and attach loop devices.

# Go lives in /usr/local/go on the machines we build on; keep a Go already
# on PATH first.
export PATH := $(PATH):/usr/local/go/bin

GO       ?= go
BIN      := bin/qcow2fs
PREFIX   ?= /usr/local
SBINDIR  ?= /sbin
# Extra flags for go test, e.g. make test TESTFLAGS='-v -run TestReadMatrix'.
TESTFLAGS ?=

.PHONY: build test vet fmt install demo clean fuzz soak deb

# The version: the git tag (v0.3.0 -> 0.3.0), else the VERSION file;
# qcow2fs --version prints it.
VERSION  := $(shell scripts/version.sh)
LDFLAGS  := -X main.version=$(VERSION)

# A static binary (no cgo): no dynamic loader or C library start-up in each
# of the two processes a mount starts, nothing but the kernel to depend on.
# Accounts still come from NSS, through getent (internal/access/accounts.go).
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/qcow2fs

# qcow2fs_VERSION_ARCH.deb (in DEBDIR) with dpkg-deb, offline: /usr/bin/qcow2fs,
# the /sbin mount helpers, man pages, bash and zsh completion, the
# qcow2fs@.service template and the .mount examples of docs/MOUNTING.md.
DEBDIR ?= .
deb:
	GO=$(GO) bash scripts/deb.sh $(DEBDIR)

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$($(GO) list -f '{{.Dir}}' ./...)

# Unit tests and the end-to-end tests in integration/ (root, /dev/fuse,
# qemu-img, ...) over the classic /dev/fuse transport, the concurrency
# tests under the race detector, the fuzz targets briefly, and, where the
# kernel has FUSE over io_uring, integration/ again over it (test-uring).
# About a quarter of an hour on two cores (11-14 min in clean-clone runs).
test: vet
	QCOW2FS_URING=off $(GO) test -count=1 -timeout 40m $(TESTFLAGS) ./...
	$(GO) test -race -count=1 -timeout 20m -run '$(RACE_TESTS)' ./qcow2/ ./cache/
	$(MAKE) fuzz
	@if [ -e /sys/module/fuse/parameters/enable_uring ]; then $(MAKE) test-uring; \
	else echo "*** this kernel has no FUSE over io_uring: make test-uring not run ***"; fi

# The integration suite again with every mount over FUSE io_uring
# (QCOW2FS_URING=on; the suite switches the kernel's enable_uring on).
# Needs Linux 6.14+ with CONFIG_FUSE_IO_URING; make test runs it where the
# kernel has it.
.PHONY: test-uring
test-uring:
	QCOW2FS_URING=on $(GO) test -count=1 -timeout 40m $(TESTFLAGS) ./integration/

# The concurrency tests again under the race detector.
RACE_TESTS := TestConcurrencyModel|TestConcurrentWrites|TestInPlaceWriteNotLostToMerge|TestFlushErrorIsSticky

# The power-cut model with many more crash images per configuration than
# make test's 1000 (POWERCUT_POINTS=N to choose).
POWERCUT_POINTS ?= 10000
.PHONY: crash
crash:
	POWERCUT_POINTS=$(POWERCUT_POINTS) $(GO) test -count=1 -timeout 180m -v -run '^TestPowerCut$$' ./qcow2/ | grep -E 'crash images|^(---|ok|FAIL)'

# Each fuzz target for a while (the seed corpus already ran in go test):
# 20000 inputs each by default, a few seconds to half a minute a target. A
# count, not a duration: go1.26's fuzz coordinator can fail a target with
# "context deadline exceeded" when a -fuzztime duration runs out while a
# worker is busy (go.dev/issue/75804, fixed in go1.27); a count has no
# deadline. FUZZTIME=10m for a real campaign.
FUZZTIME ?= 20000x
FUZZ_TARGETS := qcow2:FuzzParseHeader qcow2:FuzzOpen qcow2:FuzzOpenWrite qcow2:FuzzCheck qcow2:FuzzSnapshotTable \
	qcow2:FuzzL2Entry qcow2:FuzzDecompress qcow2:FuzzRefcountBlock parttable:FuzzRead
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t#*:}; \
		echo "fuzz $$pkg $$fn for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 20x ./$$pkg || exit 1; \
	done

# A long fio workload with verification through a loop device on a mount,
# sampling the daemon's RSS (not part of CI). SOAK_MINUTES=10 by default.
soak: build
	bash scripts/soak.sh

# mount(8) runs /sbin/mount.fuse.qcow2fs for fstab entries of type
# fuse.qcow2fs, and /sbin/mount.qcow2fs for type qcow2fs.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/qcow2fs
	install -d $(DESTDIR)$(SBINDIR)
	ln -sf $(PREFIX)/bin/qcow2fs $(DESTDIR)$(SBINDIR)/mount.fuse.qcow2fs
	ln -sf $(PREFIX)/bin/qcow2fs $(DESTDIR)$(SBINDIR)/mount.qcow2fs

# On a fresh Debian machine as root: installs what it needs, builds, makes
# a sample image and shows it mounted.
demo:
	bash scripts/demo.sh

clean:
	rm -rf bin

# Benchmarks qcow2fs against QEMU's FUSE export and a go-fuse passthrough
# server (as root; installs fio and QEMU's tools if missing; about ten
# minutes). Prints a table and writes docs/PERFORMANCE.md. Shorter runs:
# make bench BENCH_RUNTIME=3; a subset: BENCH_ONLY=main,rss.
.PHONY: bench
bench:
	bash scripts/bench.sh
