/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Marks for the instruction counts of make bench-host: a mark is the
 * instruction "nopl 0x5642nnnn(%rax,%rax,1)", a no-op for the CPU, which the
 * TCG plugin insn_count.c recognises and answers with a snapshot of every
 * vCPU's counters.  The mark number nnnn is part of the instruction.
 */
#ifndef VBP_MARK_H
#define VBP_MARK_H

/* The instruction, with the mark number's two bytes (4 and 5) zero. */
#define VBP_MARK_BYTES	{ 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x42, 0x56 }
#define VBP_MARK_LEN	8

/* The marks the benchmark sets: its measured windows begin and end. */
#define VBP_MARK_START	1
#define VBP_MARK_END	2

#define VBP_MARK_STR(n)	#n
#define VBP_MARK_ASM(n) \
	".byte 0x0f, 0x1f, 0x84, 0x00, " VBP_MARK_STR(n) ", 0x00, 0x42, 0x56"

static inline void vbp_mark_start(void)
{
	asm volatile(VBP_MARK_ASM(VBP_MARK_START) : : : "memory");
}

static inline void vbp_mark_end(void)
{
	asm volatile(VBP_MARK_ASM(VBP_MARK_END) : : : "memory");
}

#endif
