// SPDX-License-Identifier: GPL-2.0
/*
 * A QEMU TCG plugin that counts, for each vCPU of an x86-64 guest, the
 * instructions executed in user mode and in kernel mode, the system calls
 * (syscall, int $0x80) and the returns from interrupts and exceptions
 * (iret).  The guest sets marks with vbp_mark() (vbp_mark.h): a multi-byte
 * no-op that carries a mark number.  At each mark the counters of every
 * vCPU are appended to the output file as one JSON line:
 *
 *   {"mark": 1, "vcpu": 0, "cpus": [[user, kernel, syscalls, irets], ...]}
 *
 * The difference of two such lines is the work each vCPU did between the
 * marks.  Usage (bench_host.sh under make bench-host):
 *
 *   qemu-system-x86_64 -plugin insn_count.so,out=FILE ...
 *
 * Built against the header of the QEMU that loads it (qemu/build.sh -p).
 */

#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

#include "vbp_mark.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* x86-64 kernel addresses have the top bit set. */
#define KERNEL_VADDR	0x8000000000000000ULL

/*
 * Counts packed into a callback's argument (no allocation per
 * translation): what one execution of a translation block adds, and for a
 * mark what its block adds after the mark, with the mark's number.  A
 * block has at most 512 instructions; syscall and iret end it.
 */
#define TB_INSNS	0xffffULL
#define TB_KERNEL	0x10000ULL
#define TB_SYSCALL_SHIFT 17
#define TB_IRET_SHIFT	25
#define TB_FIELD	0xffULL
#define TB_MARK_SHIFT	40

struct vcpu_count {
	uint64_t insns[2];	/* user, kernel */
	uint64_t syscalls;
	uint64_t irets;
	uint64_t pad[4];	/* a cache line of its own */
};

static struct vcpu_count *counts;
static int ncpus;
static FILE *out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void add(uint64_t *c, uint64_t n)
{
	/* Only the vCPU's own thread writes; marks read from other threads. */
	__atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n,
			 __ATOMIC_RELAXED);
}

static void tb_exec(unsigned int vcpu, void *udata)
{
	uint64_t v = (uintptr_t)udata;
	struct vcpu_count *c;

	if (vcpu >= (unsigned int)ncpus)
		return;
	c = &counts[vcpu];
	add(&c->insns[!!(v & TB_KERNEL)], v & TB_INSNS);
	if (v >> TB_SYSCALL_SHIFT & TB_FIELD)
		add(&c->syscalls, v >> TB_SYSCALL_SHIFT & TB_FIELD);
	if (v >> TB_IRET_SHIFT & TB_FIELD)
		add(&c->irets, v >> TB_IRET_SHIFT & TB_FIELD);
}

static uint64_t get(const uint64_t *c)
{
	return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/*
 * The counters of every vCPU.  The marking vCPU's block was counted whole
 * when it began: what follows the mark in it belongs after the mark.
 */
static void mark_exec(unsigned int vcpu, void *udata)
{
	uint64_t v = (uintptr_t)udata;
	int i;

	pthread_mutex_lock(&out_lock);
	fprintf(out, "{\"mark\": %u, \"vcpu\": %u, \"cpus\": [",
		(unsigned int)(v >> TB_MARK_SHIFT & TB_INSNS), vcpu);
	for (i = 0; i < ncpus; i++) {
		struct vcpu_count *c = &counts[i];
		uint64_t n[4] = { get(&c->insns[0]), get(&c->insns[1]),
				  get(&c->syscalls), get(&c->irets) };

		if (i == (int)vcpu) {
			n[!!(v & TB_KERNEL)] -= v & TB_INSNS;
			n[2] -= v >> TB_SYSCALL_SHIFT & TB_FIELD;
			n[3] -= v >> TB_IRET_SHIFT & TB_FIELD;
		}
		fprintf(out, "%s[%llu, %llu, %llu, %llu]", i ? ", " : "",
			(unsigned long long)n[0], (unsigned long long)n[1],
			(unsigned long long)n[2], (unsigned long long)n[3]);
	}
	fprintf(out, "]}\n");
	fflush(out);
	pthread_mutex_unlock(&out_lock);
}

/* The mark number of a vbp_mark() instruction, or -1. */
static int mark_of(const uint8_t *b, size_t len)
{
	static const uint8_t op[] = VBP_MARK_BYTES;

	if (len != VBP_MARK_LEN || memcmp(b, op, 4) || memcmp(b + 6, op + 6, 2))
		return -1;
	return b[4] | b[5] << 8;
}

static bool is_syscall(const uint8_t *b, size_t len)
{
	return len == 2 && ((b[0] == 0x0f && b[1] == 0x05) ||
			    (b[0] == 0xcd && b[1] == 0x80));
}

static bool is_iret(const uint8_t *b, size_t len)
{
	return (len == 1 && b[0] == 0xcf) ||
	       (len == 2 && (b[0] & 0xf0) == 0x40 && b[1] == 0xcf);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	size_t i, n = qemu_plugin_tb_n_insns(tb);
	uint64_t kernel = 0, sys = 0, iret = 0;

	if (qemu_plugin_tb_vaddr(tb) & KERNEL_VADDR)
		kernel = TB_KERNEL;
	/* Backwards: each mark learns what follows it in the block. */
	for (i = n; i-- > 0;) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		const uint8_t *b = qemu_plugin_insn_data(insn);
		size_t len = qemu_plugin_insn_size(insn);
		int mark = mark_of(b, len);

		if (mark >= 0) {
			uint64_t v = (n - 1 - i) | kernel |
				     (sys & TB_FIELD) << TB_SYSCALL_SHIFT |
				     (iret & TB_FIELD) << TB_IRET_SHIFT |
				     (uint64_t)mark << TB_MARK_SHIFT;

			qemu_plugin_register_vcpu_insn_exec_cb(insn, mark_exec,
							       QEMU_PLUGIN_CB_NO_REGS,
							       (void *)(uintptr_t)v);
		}
		sys += is_syscall(b, len);
		iret += is_iret(b, len);
	}
	qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS,
					     (void *)(uintptr_t)((n & TB_INSNS) |
						kernel |
						(sys & TB_FIELD) << TB_SYSCALL_SHIFT |
						(iret & TB_FIELD) << TB_IRET_SHIFT));
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
	pthread_mutex_lock(&out_lock);
	if (out)
		fclose(out);
	out = NULL;
	pthread_mutex_unlock(&out_lock);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
					   const qemu_info_t *info,
					   int argc, char **argv)
{
	const char *path = NULL;
	int i;

	for (i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "out=", 4)) {
			path = argv[i] + 4;
		} else {
			fprintf(stderr, "insn_count: unknown argument '%s' (out=FILE)\n",
				argv[i]);
			return -1;
		}
	}
	if (!path || !*path) {
		fprintf(stderr, "insn_count: needs out=FILE\n");
		return -1;
	}
	if (!info->system_emulation || strcmp(info->target_name, "x86_64")) {
		fprintf(stderr, "insn_count: counts x86_64 system guests only\n");
		return -1;
	}
	ncpus = info->system.max_vcpus;
	counts = calloc(ncpus, sizeof(*counts));
	if (!counts)
		return -1;
	out = fopen(path, "w");
	if (!out) {
		fprintf(stderr, "insn_count: %s: %m\n", path);
		free(counts);
		return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
	qemu_plugin_register_atexit_cb(id, at_exit, NULL);
	return 0;
}
