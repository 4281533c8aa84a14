# SPDX-License-Identifier: GPL-2.0
#
# vhost-blk-poll: build, test and lint.  See README.md.
#
#   make            build vhost_blk_poll.ko, virtio_blk_poll.ko and the selftests
#   make deps       install everything needed from Debian's archive (root)
#   make check      run all tests in virtual machines (KERNEL=debug: on a
#                   debug kernel with KASAN, lockdep and kmemleak)
#   make soak       the ring fuzzer and the races, millions of requests
#   make lint       checkpatch, W=1, sparse, kernel-doc, shellcheck, the docs
#   make docs       Documentation/ as HTML in build/docs/
#   make dkms       install the modules with DKMS for KVER (root)
#   make patches    the drivers as a patch series for a kernel tree (build/patches/)
#   make bench      every I/O path side by side, host and guests (build/bench/)
#   make bench-host the host-side part of it alone (build/bench/bench-host.*)
#   make bench-hol  reads behind flushes on one ring (build/bench/bench-hol.*)
#   make qemu       QEMU with vhost-blk-pci (qemu/); prints the binary's path
#   make demo       a guest doing verified I/O through vhost-blk-pci
#
# KVER=<version> or KDIR=<configured kernel tree> build against another kernel.

SHELL := /bin/bash
ENV := $(CURDIR)/scripts/env.sh

# Versions and paths are defined once, in scripts/env.sh.
ifeq ($(origin KVER),undefined)
KVER := $(shell $(ENV) KVER)
endif
ifeq ($(origin KDIR),undefined)
KDIR := $(shell KVER=$(KVER) $(ENV) KDIR)
endif
BUILD := $(shell $(ENV) VBP_BUILD)
KSRC := $(shell $(ENV) VBP_KSRC_DIR)
export KVER KDIR

# vhost.h is not in the headers package: take it from the tree when KDIR is
# a full source tree, otherwise from the matching Debian source.
VHOST_INC := $(if $(wildcard $(KDIR)/drivers/vhost/vhost.h),$(KDIR)/drivers/vhost,$(KSRC)/drivers/vhost)

# The guest driver's fault injection is for the tests: VBP_FAULT_INJECTION=n
# leaves it out (DKMS does).
VBP_FAULT_INJECTION ?= y

KBUILD := $(MAKE) -C $(KDIR) M=$(CURDIR) W=1 \
	CONFIG_VHOST_BLK_POLL=m CONFIG_VIRTIO_BLK_POLL=m \
	CONFIG_VIRTIO_BLK_POLL_FAULT_INJECTION=$(VBP_FAULT_INJECTION) \
	VBP_VHOST_INC=$(VHOST_INC)

SELFTESTS := tools/testing/selftests/vhost_blk
KSFT := $(MAKE) -C $(SELFTESTS) OUTPUT=$(CURDIR)/$(SELFTESTS) \
	KHDR_INCLUDES="-isystem $(KSRC)/usr/include"

.PHONY: all modules modules-clean selftests ksrc deps check soak lint docs dkms patches clean bench bench-host bench-hol qemu demo

all: modules selftests

ksrc:
	@scripts/ksrc.sh

modules: ksrc
	@test -d "$(KDIR)" || { echo "no kernel tree at $(KDIR) (make deps)"; exit 1; }
	$(KBUILD) modules

modules-clean:
	$(KBUILD) clean

selftests: ksrc
	$(KSFT)

deps:
	scripts/deps.sh

# KERNEL=debug: the VM suites (tiers 1 and 2) on a debug build of the same
# kernel, with KASAN, lockdep, kmemleak and more (scripts/debug-kernel.sh;
# built once, about half an hour on two cores); any report fails.
ifeq ($(KERNEL),debug)
check:
	scripts/debug-kernel.sh
	$(MAKE) check KERNEL= $$(scripts/debug-kernel.sh --env) \
		CHECK_SUITES="$(or $(CHECK_SUITES),vmrun kselftest)" \
		CHECK_TIME_SCALE=$(or $(CHECK_TIME_SCALE),8)
else
check: all
	scripts/check.sh
endif

# What make check's fuzzer does, longer: SOAK_REQUESTS fuzzed requests
# (a fifth of them again on a polled null_blk) and SOAK_ROUNDS raced
# batches per backend; VBP_FUZZ_SEED repeats a run.
SOAK_REQUESTS ?= 2000000
SOAK_ROUNDS ?= 7000
soak: all
	$(SELFTESTS)/vm-run -c 2 -m 2G -t 86400 \
		-e VBP_FUZZ_REQUESTS=$(SOAK_REQUESTS) -e VBP_RACE_ROUNDS=$(SOAK_ROUNDS) \
		$(if $(VBP_FUZZ_SEED),-e VBP_FUZZ_SEED=$(VBP_FUZZ_SEED)) \
		-- $(SELFTESTS)/vhost_blk_fuzz.sh

lint: ksrc
	scripts/lint.sh

docs:
	scripts/docs.py Documentation $(BUILD)/docs

# Figures, not tests; results in build/bench/.  bench-host: the module under
# the mini-VMM in one VM; bench: that, then native and every guest path on
# the same backends in one nested run (scripts/bench.sh).
bench: bench-host
	@$(MAKE) --no-print-directory bench-hol
	@scripts/bench.sh

# bench-host counts instructions per request with a TCG plugin (under
# software emulation only: a KVM guest gives IOPS alone), built against the
# plugin API of the QEMU source qemu/build.sh uses.
BENCH_PLUGIN := $(BUILD)/bench/insn_count.so
BENCH_INSNS := $(BUILD)/bench/bench-host-insns.jsonl
BENCH_ACCEL = $(shell $(SELFTESTS)/vm-run -A)
comma := ,

$(BENCH_PLUGIN): $(SELFTESTS)/insn_count.c $(SELFTESTS)/vbp_mark.h
	@mkdir -p $(@D)
	api=$$(qemu/build.sh -p) && \
		$(CC) -O2 -Wall -shared -fPIC -I"$$api" -o $@ $<

bench-host: all $(BENCH_PLUGIN)
	rm -rf $(BUILD)/bench/bench-host-raw $(BENCH_INSNS)
	$(SELFTESTS)/vm-run -c 3 -m 2G -t 3600 -O $(BUILD)/bench/bench-host-raw \
		-p nohz_full=1-2 \
		$(if $(filter tcg,$(BENCH_ACCEL)),-a -plugin -a $(BENCH_PLUGIN)$(comma)out=$(BENCH_INSNS)) \
		$(foreach v,BENCH_SECONDS BENCH_POLL_US BENCH_REPS BENCH_PATHS BENCH_BACKENDS,$(if $($(v)),-e "$(v)=$($(v))")) \
		-- $(SELFTESTS)/bench_host.sh
	scripts/bench_host_report.py $(BUILD)/bench/bench-host-raw \
		$(BENCH_INSNS) $(BUILD)/bench

# The reads' latency on a ring with 50 ms flushes in flight and without
# (bench_hol.sh), in build/bench/bench-hol.{json,md}.
bench-hol: all
	$(SELFTESTS)/vm-run -c 3 -m 2G -t 1800 -O $(BUILD)/bench \
		$(foreach v,BENCH_SECONDS BENCH_FLUSH_MS BENCH_QDS,$(if $($(v)),-e "$(v)=$($(v))")) \
		-- $(SELFTESTS)/bench_hol.sh

# As root: register the modules with DKMS, build and install them for KVER
# (scripts/dkms.sh; "scripts/dkms.sh remove" takes them out again).
dkms:
	@scripts/dkms.sh install

# The drivers as a patch series for a Linux 6.12 tree, in build/patches/.
patches:
	@scripts/patches.sh

# Built once per QEMU source version and patch series, cached outside the
# tree (qemu/build.sh).
qemu:
	@qemu/build.sh

# DEMO_BACKEND=<raw image or block device> serves the guest from it (its
# contents are overwritten) instead of a null_blk.
demo: all
	@scripts/demo.sh

clean:
	-$(KBUILD) clean
	-$(KSFT) clean
	rm -rf $(BUILD)
	rm -f tools/testing/selftests/{lib.mk,kselftest.h,kselftest_harness.h,kselftest}
