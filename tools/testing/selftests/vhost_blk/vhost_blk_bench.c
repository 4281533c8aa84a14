// SPDX-License-Identifier: GPL-2.0
/*
 * The host-side benchmark (make bench-host, bench_host.sh; make bench-hol,
 * bench_hol.sh): the mini-VMM (vmm.h) as a guest doing 4 KiB random I/O on
 * /dev/vhost-blk-poll or on a vhost-user back-end, one thread per queue.
 * Measures, asserts nothing.
 * Set by the environment:
 *   VBP_BENCH_MODE     poll (the guest polls and asks for no interrupts, the
 *                      vrings poll for VBP_BENCH_POLL_US, default 100) or
 *                      notify (kicks, interrupts, no polling)
 *   VBP_BENCH_RW       randread or randwrite
 *   VBP_BENCH_QD       requests in flight per queue (default 1); 0: one
 *                      request, then the rings poll with nothing to do (the
 *                      cost of an idle pass, for make bench-host)
 *   VBP_BENCH_QUEUES   queues (default 1)
 *   VBP_BENCH_FLUSH    1: one flush in flight on each queue beside the
 *                      reads or writes, made again as soon as it is
 *                      answered (bench_hol.sh); the latencies stay those
 *                      of the reads or writes, and the result adds the
 *                      flushes answered in the window and their mean
 *                      latency over the run
 *   VBP_BENCH_WARMUP   seconds of I/O before the measured window (default 0)
 *   VBP_BENCH_SECONDS  length of the measured window (default 5)
 *   VBP_BENCH_CPUS     MAIN,GUEST,HOST: the CPUs of this program's main
 *                      thread (which sets the marks), of the queues'
 *                      threads and of the vrings' workers; default: no
 *                      pinning but vring q's worker on CPU q + 1
 *   VBP_BENCH_OUT      file the result is appended to, one JSON object
 *   VBP_TEST_BDEV      the block device or regular file the device serves
 *   VBP_BENCH_VHOST_USER  the socket of a vhost-user back-end to use
 *                      instead of /dev/vhost-blk-poll (and VBP_TEST_BDEV):
 *                      its configuration space gives the capacity; the
 *                      module's operations (workers, pinning, poll budgets,
 *                      counters) are not there, the host side is the
 *                      back-end's, and a poll run's guest polls alone
 * Each vring gets a worker of its own.  The window lies between two marks
 * for the TCG plugin insn_count.c (vbp_mark.h); the result has the
 * transport, the window's requests, the guest's empty polls of its used
 * ring (spins), its kicks and interrupts, and the module's counters (null
 * over vhost-user).
 *
 * Exits 0 with the result written, 1 when the run fails, 2 when it is not
 * configured (a variable missing or wrong).
 */

#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>

#include "vbp_mark.h"
#include "vmm.h"

#define BENCH_MAX_LAT	(1024 * 1024)	/* latencies kept per queue */

struct bench_q {
	struct vmm *v;
	unsigned int q;
	unsigned int qd;
	bool write;
	bool poll;		/* the guest polls and wants no interrupts */
	bool flush;		/* a flush in flight, in slot qd */
	int cpu;		/* of the thread, or -1 */
	bool stop;		/* set by the main thread */
	uint64_t hdrs, sts, data;
	uint64_t nblocks;	/* 4 KiB blocks of the device */
	uint64_t seed;
	int64_t start_ns[QSIZE];
	/* Results, read by the main thread while the queue runs. */
	uint64_t done;
	uint64_t spins;		/* polls of the used ring that found none */
	uint64_t kicks;
	uint64_t calls;
	uint64_t flushes;
	uint64_t flush_ns;	/* their latencies' sum */
	uint64_t *lat;		/* ns */
	size_t nlat;
	int err;
};

/* The run, as the environment sets it. */
struct bench {
	const char *out;
	const char *mode;
	const char *rw;
	const char *bdev;	/* a block device or a regular file */
	const char *vu;		/* the vhost-user socket, or NULL */
	bool poll;
	bool write;
	bool flush;
	unsigned int qd;
	unsigned int nq;
	unsigned int warmup;
	unsigned int secs;
	unsigned int poll_us;
	int cpu_main, cpu_guest, cpu_host;	/* -1: not pinned */
};

static void print_usage(FILE *f)
{
	fprintf(f,
		"usage: VBP_BENCH_MODE=poll|notify VBP_BENCH_RW=randread|randwrite \\\n"
		"       VBP_BENCH_OUT=FILE VBP_TEST_BDEV=DEV|FILE [VBP_BENCH_QD=N] \\\n"
		"       [VBP_BENCH_QUEUES=N] [VBP_BENCH_SECONDS=N] [VBP_BENCH_POLL_US=N] \\\n"
		"       [VBP_BENCH_WARMUP=N] [VBP_BENCH_CPUS=MAIN,GUEST,HOST] \\\n"
		"       [VBP_BENCH_FLUSH=1] \\\n"
		"       [VBP_BENCH_VHOST_USER=SOCKET (instead of VBP_TEST_BDEV)] \\\n"
		"       vhost_blk_bench\n"
		"One run of the host-side benchmark; bench_host.sh (make bench-host)\n"
		"and bench_hol.sh (make bench-hol) run it.  Appends one JSON object\n"
		"to VBP_BENCH_OUT.\n");
}

/* Exits 2 when the environment does not make a run. */
static void bench_config(struct bench *b)
{
	const char *missing = NULL, *cpus;
	char end;

	b->out = getenv("VBP_BENCH_OUT");
	b->mode = getenv("VBP_BENCH_MODE");
	b->rw = getenv("VBP_BENCH_RW");
	b->bdev = getenv("VBP_TEST_BDEV");
	b->vu = getenv("VBP_BENCH_VHOST_USER");
	if (b->vu && !*b->vu)
		b->vu = NULL;
	if (!b->out || !*b->out)
		missing = "VBP_BENCH_OUT";
	else if (!b->mode || !*b->mode)
		missing = "VBP_BENCH_MODE";
	else if (!b->rw || !*b->rw)
		missing = "VBP_BENCH_RW";
	else if (!b->vu && (!b->bdev || !*b->bdev))
		missing = "VBP_TEST_BDEV (or VBP_BENCH_VHOST_USER)";
	if (missing) {
		fprintf(stderr, "vhost_blk_bench: not configured: %s is not set\n",
			missing);
		print_usage(stderr);
		exit(2);
	}
	b->poll = !strcmp(b->mode, "poll");
	b->write = !strcmp(b->rw, "randwrite");
	b->qd = env_uint("VBP_BENCH_QD", 1);
	b->nq = env_uint("VBP_BENCH_QUEUES", 1);
	b->flush = env_uint("VBP_BENCH_FLUSH", 0);
	b->warmup = env_uint("VBP_BENCH_WARMUP", 0);
	b->secs = env_uint("VBP_BENCH_SECONDS", 5);
	b->cpu_main = -1;
	b->cpu_guest = -1;
	b->cpu_host = -1;
	cpus = getenv("VBP_BENCH_CPUS");
	if (cpus && *cpus &&
	    sscanf(cpus, "%d,%d,%d%c", &b->cpu_main, &b->cpu_guest,
		   &b->cpu_host, &end) != 3) {
		fprintf(stderr, "vhost_blk_bench: VBP_BENCH_CPUS=%s: MAIN,GUEST,HOST\n",
			cpus);
		exit(2);
	}
	b->poll_us = env_uint("VBP_BENCH_POLL_US", 100);
	if (!b->poll && strcmp(b->mode, "notify")) {
		fprintf(stderr, "vhost_blk_bench: VBP_BENCH_MODE=%s: poll or notify\n",
			b->mode);
		exit(2);
	}
	if (!b->write && strcmp(b->rw, "randread")) {
		fprintf(stderr, "vhost_blk_bench: VBP_BENCH_RW=%s: randread or randwrite\n",
			b->rw);
		exit(2);
	}
	if (b->qd > QSIZE / 3) {
		fprintf(stderr, "vhost_blk_bench: VBP_BENCH_QD=%u: 0 to %u\n",
			b->qd, QSIZE / 3);
		exit(2);
	}
	/* The flush takes a slot of its own. */
	if (b->flush && (!b->qd || b->qd >= QSIZE / 3)) {
		fprintf(stderr, "vhost_blk_bench: VBP_BENCH_QD=%u: 1 to %u with VBP_BENCH_FLUSH\n",
			b->qd, QSIZE / 3 - 1);
		exit(2);
	}
	if (!b->nq || b->nq > MAX_QUEUES) {
		fprintf(stderr, "vhost_blk_bench: VBP_BENCH_QUEUES=%u: 1 to %u\n",
			b->nq, MAX_QUEUES);
		exit(2);
	}
}

/* Says what failed and exits 1. */
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "vhost_blk_bench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* The bytes of the backend open at fd: a block device or a regular file. */
static uint64_t backend_size(int fd, const char *path)
{
	uint64_t size;
	struct stat st;

	if (fstat(fd, &st))
		die("%s: %s", path, strerror(errno));
	if (S_ISREG(st.st_mode))
		return st.st_size;
	if (!S_ISBLK(st.st_mode))
		die("%s: not a block device or regular file", path);
	if (ioctl(fd, BLKGETSIZE64, &size))
		die("%s: BLKGETSIZE64: %s", path, strerror(errno));
	return size;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void bench_submit(struct bench_q *b, unsigned int slot)
{
	struct vmm *v = b->v;
	uint64_t sector;
	struct seg sg[3] = {
		{ b->hdrs + HDR_SIZE * slot, HDR_SIZE, false },
		{ b->data + 4096ULL * slot, 4096, !b->write },
		{ b->sts + slot, 1, true },
	};

	b->seed = mix64(b->seed);
	sector = (b->seed % b->nblocks) * 8;
	set_hdr(v, sg[0].gpa, b->write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
		sector);
	b->start_ns[slot] = now_ns();
	if (vq_add(v, b->q, sg, 3, false, slot) < 0)
		b->err = ENOSPC;
}

/* The queue's flush, in the slot after those of the reads or writes. */
static void bench_flush(struct bench_q *b)
{
	unsigned int slot = b->qd;
	struct seg sg[2] = {
		{ b->hdrs + HDR_SIZE * slot, HDR_SIZE, false },
		{ b->sts + slot, 1, true },
	};

	set_hdr(b->v, sg[0].gpa, VIRTIO_BLK_T_FLUSH, 0);
	b->start_ns[slot] = now_ns();
	if (vq_add(b->v, b->q, sg, 2, false, slot) < 0)
		b->err = ENOSPC;
}

/* A counter of the queue's thread, which the main thread reads. */
static void count(uint64_t *c, uint64_t n)
{
	__atomic_store_n(c, *c + n, __ATOMIC_RELAXED);
}

static void *bench_queue(void *arg)
{
	struct bench_q *b = arg;
	struct vmm *v = b->v;
	struct vq *vq = &v->vq[b->q];
	struct pollfd pfd = { .fd = vq->call, .events = POLLIN };
	unsigned int i, got;
	uint64_t cnt;
	struct used u;

	if (b->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(b->cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set)) {
			b->err = errno;
			return NULL;
		}
	}
	/* Queue depth 0: one request, to start the ring's polling. */
	for (i = 0; i < (b->qd ? b->qd : 1); i++)
		bench_submit(b, i);
	if (b->flush)
		bench_flush(b);
	count(&b->kicks, vq_kick(v, b->q));
	while (!b->err && !__atomic_load_n(&b->stop, __ATOMIC_RELAXED)) {
		got = 0;
		while (vq_get_used(v, b->q, &u) == 1) {
			if (*gptr(v, b->sts + u.tag) != VIRTIO_BLK_S_OK)
				b->err = EIO;
			got++;
			if (b->flush && u.tag == b->qd) {
				count(&b->flushes, 1);
				b->flush_ns += now_ns() - b->start_ns[u.tag];
				bench_flush(b);
				continue;
			}
			if (b->nlat < BENCH_MAX_LAT)
				b->lat[b->nlat++] = now_ns() -
						    b->start_ns[u.tag];
			count(&b->done, 1);
			if (b->qd)
				bench_submit(b, u.tag);
		}
		if (got) {
			count(&b->kicks, vq_kick(v, b->q));
			continue;
		}
		if (b->poll) {
			count(&b->spins, 1);
			continue;
		}
		/* Ask for an interrupt and sleep on it. */
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (vq_has_used(vq))
			continue;
		if (poll(&pfd, 1, 10) == 1 &&
		    read(vq->call, &cnt, sizeof(cnt)) == sizeof(cnt))
			count(&b->calls, cnt);
	}
	/* Interrupts the device sent that nobody waited for. */
	if (read(vq->call, &cnt, sizeof(cnt)) == sizeof(cnt))
		count(&b->calls, cnt);
	return NULL;
}

/* The queues' counters at one end of the measured window. */
struct window {
	int64_t ns;
	uint64_t done, spins, kicks, calls, flushes;
};

static void snap(struct bench_q *b, unsigned int nq, struct window *w)
{
	unsigned int q;

	memset(w, 0, sizeof(*w));
	for (q = 0; q < nq; q++) {
		w->done += __atomic_load_n(&b[q].done, __ATOMIC_RELAXED);
		w->spins += __atomic_load_n(&b[q].spins, __ATOMIC_RELAXED);
		w->kicks += __atomic_load_n(&b[q].kicks, __ATOMIC_RELAXED);
		w->calls += __atomic_load_n(&b[q].calls, __ATOMIC_RELAXED);
		w->flushes += __atomic_load_n(&b[q].flushes, __ATOMIC_RELAXED);
	}
	w->ns = now_ns();
}

/*
 * What only /dev/vhost-blk-poll has, for vring q: a worker of its own,
 * pinned to a CPU of its own, and the poll budget.
 */
static void kernel_vring(struct vmm *v, const struct bench *cfg,
			 unsigned int q)
{
	int ret;

	ret = vmm_new_worker(v, q);
	if (ret)
		die("vring %u: a worker: %s", q, strerror(-ret));
	ret = vmm_set_vring_cpu(v, q, cfg->cpu_host >= 0 ? cfg->cpu_host :
				(q + 1) % sysconf(_SC_NPROCESSORS_ONLN));
	if (ret)
		die("vring %u: pinning: %s", q, strerror(-ret));
	ret = vmm_set_poll_us(v, q, cfg->poll ? cfg->poll_us : 0);
	if (ret)
		die("vring %u: poll budget: %s", q, strerror(-ret));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	struct bench cfg;
	struct vmm v = { 0 };
	struct bench_q b[MAX_QUEUES] = { 0 };
	struct vq_stats st0[MAX_QUEUES], st1[MAX_QUEUES], mod = { 0 };
	struct window w0, w1;
	uint64_t done, sum = 0, size = 0, *all, flushes = 0, flush_ns = 0;
	pthread_t th[MAX_QUEUES];
	size_t nlat = 0, k;
	int64_t t0, t1;
	unsigned int q;
	int fd = -1, ret;
	FILE *f;

	if (argc > 1) {
		bool help = !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help");

		print_usage(help ? stdout : stderr);
		return help ? 0 : 2;
	}
	bench_config(&cfg);

	if (cfg.vu) {
		ret = vmm_open_vhost_user(&v, cfg.vu, false, false);
		if (ret)
			die("vhost-user %s: %s", cfg.vu, strerror(-ret));
	} else {
		fd = open(cfg.bdev, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			die("%s: %s", cfg.bdev, strerror(errno));
		size = backend_size(fd, cfg.bdev);
		ret = vmm_open_kernel(&v, false, false);
		if (ret)
			die("vmm_open_kernel: %s", strerror(-ret));
	}
	if (cfg.nq > v.nq)
		die("VBP_BENCH_QUEUES=%u: the device has %u queues", cfg.nq,
		    v.nq);
	v.nq = cfg.nq;
	ret = vmm_start(&v, fd);
	if (ret)
		die("vmm_start: %s", strerror(-ret));
	if (cfg.vu) {
		struct virtio_blk_config c;

		ret = vmm_get_config(&v, &c, sizeof(c.capacity));
		if (ret)
			die("vhost-user %s: the capacity: %s", cfg.vu,
			    strerror(-ret));
		size = le64toh(c.capacity) * SECTOR;
	}
	if (size < 4096)
		die("a device of %llu bytes", (unsigned long long)size);

	for (q = 0; q < cfg.nq; q++) {
		if (!cfg.vu)
			kernel_vring(&v, &cfg, q);
		if (cfg.poll)
			v.vq[q].avail->flags =
				htole16(VRING_AVAIL_F_NO_INTERRUPT);

		b[q].v = &v;
		b[q].q = q;
		b[q].qd = cfg.qd;
		b[q].write = cfg.write;
		b[q].poll = cfg.poll;
		b[q].flush = cfg.flush;
		b[q].cpu = cfg.cpu_guest;
		b[q].nblocks = size / 4096;
		b[q].seed = mix64(q + 1);
		b[q].hdrs = galloc(&v, 0, HDR_SIZE * QSIZE / 3, 64);
		b[q].sts = galloc(&v, 0, QSIZE / 3, 64);
		b[q].data = galloc(&v, q & 1, 4096ULL * QSIZE / 3, 4096);
		b[q].lat = calloc(BENCH_MAX_LAT, sizeof(uint64_t));
		if (!b[q].lat)
			die("out of memory");
	}

	if (cfg.cpu_main >= 0) {
		cpu_set_t set;

		/* After pinning the workers: the caller's CPUs bound those. */
		CPU_ZERO(&set);
		CPU_SET(cfg.cpu_main, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			die("CPU %d: %s", cfg.cpu_main, strerror(errno));
	}
	t0 = now_us();
	for (q = 0; q < cfg.nq; q++) {
		ret = pthread_create(&th[q], NULL, bench_queue, &b[q]);
		if (ret)
			die("pthread_create: %s", strerror(ret));
	}
	sleep(cfg.warmup);
	for (q = 0; q < cfg.nq && !cfg.vu; q++) {
		ret = vmm_read_stats(&v, q, &st0[q]);
		if (ret)
			die("vring %u: statistics: %s", q, strerror(-ret));
	}
	snap(b, cfg.nq, &w0);
	vbp_mark_start();
	sleep(cfg.secs);
	vbp_mark_end();
	snap(b, cfg.nq, &w1);
	for (q = 0; q < cfg.nq; q++) {
		ret = cfg.vu ? 0 : vmm_read_stats(&v, q, &st1[q]);
		if (ret)
			die("vring %u: statistics: %s", q, strerror(-ret));
		__atomic_store_n(&b[q].stop, true, __ATOMIC_RELAXED);
	}
	for (q = 0; q < cfg.nq; q++)
		pthread_join(th[q], NULL);
	t1 = now_us();

	all = malloc(cfg.nq * BENCH_MAX_LAT * sizeof(uint64_t));
	if (!all)
		die("out of memory");
	for (q = 0; q < cfg.nq; q++) {
		if (b[q].err)
			die("queue %u: %s", q, strerror(b[q].err));
		memcpy(all + nlat, b[q].lat, b[q].nlat * sizeof(uint64_t));
		nlat += b[q].nlat;
		flushes += b[q].flushes;
		flush_ns += b[q].flush_ns;
		free(b[q].lat);
		if (cfg.vu)
			continue;
		mod.requests += st1[q].requests - st0[q].requests;
		mod.kicks += st1[q].kicks - st0[q].kicks;
		mod.signals += st1[q].signals - st0[q].signals;
		mod.busy += st1[q].busy - st0[q].busy;
		mod.idle += st1[q].idle - st0[q].idle;
		mod.polled += st1[q].polled - st0[q].polled;
	}
	if (!nlat)
		die("no request completed");
	qsort(all, nlat, sizeof(*all), cmp_u64);
	for (k = 0; k < nlat; k++)
		sum += all[k];
	done = w1.done - w0.done;

	f = fopen(cfg.out, "a");
	if (!f)
		die("%s: %s", cfg.out, strerror(errno));
	fprintf(f, "{\"transport\": \"%s\", ", v.t->name);
	fprintf(f, "\"mode\": \"%s\", \"rw\": \"%s\", ", cfg.mode, cfg.rw);
	fprintf(f, "\"qd\": %u, \"queues\": %u, ", cfg.qd, cfg.nq);
	fprintf(f, "\"seconds\": %.3f, ", (t1 - t0) / 1e6);
	fprintf(f, "\"window_ns\": %lld, ", (long long)(w1.ns - w0.ns));
	fprintf(f, "\"requests\": %llu, ", (unsigned long long)done);
	fprintf(f, "\"spins\": %llu, ",
		(unsigned long long)(w1.spins - w0.spins));
	fprintf(f, "\"lat_mean_us\": %.2f, ", sum / 1e3 / nlat);
	fprintf(f, "\"lat_p99_us\": %.2f, ", all[nlat * 99 / 100] / 1e3);
	fprintf(f, "\"kicks_per_req\": %.4f, ",
		done ? (double)(w1.kicks - w0.kicks) / done : 0.0);
	fprintf(f, "\"signals_per_req\": %.4f, ",
		done ? (double)(w1.calls - w0.calls) / done : 0.0);
	fprintf(f, "\"flush\": %s, \"flushes\": %llu, ",
		cfg.flush ? "true" : "false",
		(unsigned long long)(w1.flushes - w0.flushes));
	if (flushes)
		fprintf(f, "\"flush_lat_mean_us\": %.2f, ",
			flush_ns / 1e3 / flushes);
	else
		fprintf(f, "\"flush_lat_mean_us\": null, ");
	if (cfg.vu) {
		fprintf(f, "\"module\": null}\n");
	} else {
		fprintf(f, "\"module\": {\"requests\": %llu, \"kicks\": %llu, ",
			mod.requests, mod.kicks);
		fprintf(f, "\"signals\": %llu, \"busy_passes\": %llu, ",
			mod.signals, mod.busy);
		fprintf(f, "\"idle_passes\": %llu, \"polled\": %llu}}\n",
			mod.idle, mod.polled);
	}
	if (fclose(f))
		die("%s: %s", cfg.out, strerror(errno));
	free(all);
	vmm_close(&v);
	if (fd >= 0)
		close(fd);
	return 0;
}
