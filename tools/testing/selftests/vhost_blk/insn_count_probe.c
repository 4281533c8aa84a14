// SPDX-License-Identifier: GPL-2.0
/*
 * What the instruction counts of make bench-host rest on, for check.sh's
 * plugin suite: between two marks (vbp_mark.h), a loop of LOOPS rounds of
 * two instructions (2 * LOOPS + 1 user-mode instructions: the loop and the
 * end mark), then between two more marks SYSCALLS system calls.  Run it on
 * one CPU; the TCG plugin insn_count.c must count exactly that.
 */

#include <stdio.h>
#include <sys/syscall.h>

#include "vbp_mark.h"

#define LOOPS		1000000UL
#define SYSCALLS	1000

int main(void)
{
	unsigned long n = LOOPS;
	long ret;
	int i;

	vbp_mark_start();
	asm volatile("1: dec %0; jnz 1b" : "+r" (n));
	vbp_mark_end();

	vbp_mark_start();
	for (i = 0; i < SYSCALLS; i++)
		asm volatile("syscall" : "=a" (ret) : "0" ((long)SYS_getppid)
			     : "rcx", "r11", "memory");
	vbp_mark_end();

	printf("insn_count_probe: loops %lu syscalls %d\n", LOOPS, SYSCALLS);
	return 0;
}
