// SPDX-License-Identifier: GPL-2.0
/*
 * vbp_mark start|end [FILE...]: set a mark for the TCG plugin insn_count.c
 * (vbp_mark.h), then print one JSON line with the mark, the time
 * (CLOCK_MONOTONIC, ns) and the contents of each FILE read right after it (a
 * device's I/O counters, say), so that a benchmark can divide the
 * instructions between two marks by the requests served between them.
 * Without the plugin the mark is a no-op.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vbp_mark.h"

static int print_file(const char *path, int first)
{
	char buf[4096];
	ssize_t n, i;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "vbp_mark: %s: %s\n", path, strerror(errno));
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0) {
		fprintf(stderr, "vbp_mark: %s: %s\n", path, strerror(errno));
		return -1;
	}
	printf("%s\"%s\": \"", first ? "" : ", ", path);
	for (i = 0; i < n; i++) {
		if (buf[i] == '"' || buf[i] == '\\')
			printf("\\%c", buf[i]);
		else if (buf[i] == '\n')
			printf("\\n");
		else if ((unsigned char)buf[i] >= 0x20)
			putchar(buf[i]);
	}
	printf("\"");
	return 0;
}

int main(int argc, char **argv)
{
	struct timespec ts;
	int i, rc = 0;

	if (argc < 2 || (strcmp(argv[1], "start") && strcmp(argv[1], "end"))) {
		fprintf(stderr, "usage: vbp_mark start|end [FILE...]\n");
		return 2;
	}
	if (!strcmp(argv[1], "start"))
		vbp_mark_start();
	else
		vbp_mark_end();
	clock_gettime(CLOCK_MONOTONIC, &ts);
	printf("{\"mark\": \"%s\", \"ns\": %lld, \"files\": {", argv[1],
	       ts.tv_sec * 1000000000LL + ts.tv_nsec);
	for (i = 2; i < argc; i++)
		if (print_file(argv[i], i == 2))
			rc = 1;
	printf("}}\n");
	return rc;
}
