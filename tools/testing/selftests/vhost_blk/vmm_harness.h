/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the mini-VMM's tests and its fuzzer share (vhost_blk_vmm_test.c,
 * vhost_blk_fuzz_test.c): the backing store and its checks, data patterns,
 * and synchronous virtio-blk requests that assert what they get.
 *
 * Environment:
 *   VBP_TEST_DIR   directory for the 64 MiB backing file (default /tmp)
 *   VBP_TEST_BDEV  a block device the tests may overwrite (32 MiB at least)
 */

#ifndef VHOST_BLK_VMM_HARNESS_H
#define VHOST_BLK_VMM_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <linux/fs.h>

#include "../kselftest_harness.h"
#include "vmm.h"

#define MAX_DATA	(IND_MAX - 2)	/* data segments of one request */

#define FILE_SIZE	(64ULL << 20)
#define MIN_BDEV_SIZE	(32ULL << 20)

#define WAIT_MS		5000	/* longest wait for a completion */
#define QUIET_MS	500	/* how long a stopped ring is watched */
#define RD_MAX		(64 << 10)	/* largest check_dev() read */

/* Where check_alive() writes. */
#define ALIVE_SECTOR	9000

/* Asserts that a call of the library returned 0, naming it and the error. */
#define ASSERT_OK(call) do {						\
	int _ret = (call);						\
									\
	ASSERT_EQ(0, _ret) TH_LOG("%s: %s", #call, strerror(-_ret));	\
} while (0)

/*
 * Adds a request to queue q (through an indirect table when negotiated),
 * kicks and waits for its completion; returns the used length.
 */
static inline uint32_t run_req(struct __test_metadata *_metadata,
			       struct vmm *v, unsigned int q,
			       const struct seg *s, unsigned int n)
{
	struct used u = { 0 };
	int head;

	head = vq_add(v, q, s, n, v->indirect && n <= IND_MAX, 0);
	ASSERT_LE(0, head) TH_LOG("no room for %u descriptors", n);
	vq_kick(v, q);
	ASSERT_TRUE(vmm_wait(v, 1u << q, WAIT_MS))
		TH_LOG("queue %u: no completion within %d ms", q, WAIT_MS);
	ASSERT_EQ(1, vq_get_used(v, q, &u))
		TH_LOG("queue %u: used entry with a bad head", q);
	EXPECT_EQ(head, u.head);
	return u.len;
}

/* ------------------------------------------------------------------ */
/* Backing store, data patterns                                         */
/* ------------------------------------------------------------------ */

struct backend {
	bool bdev;
	bool direct;	/* chk is O_DIRECT: aligned I/O only */
	int fd;		/* O_RDWR, for the device */
	int rofd;	/* O_RDONLY, for the device */
	int chk;	/* what the test reads and writes the store through */
	uint64_t size;
	bool discard;	/* the store can discard (punch holes) */
};

/* Pseudo-random bytes, the same for the same seed. */
static inline void fill_rand(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t r;
	size_t i;

	for (i = 0; i < len; i += sizeof(r)) {
		seed += 0x9e3779b97f4a7c15ULL;
		r = mix64(seed);
		memcpy(p + i, &r, len - i < sizeof(r) ? len - i : sizeof(r));
	}
}

/* Offset of the first byte that differs, -1 when none does. */
static inline long first_diff(const void *a, const void *b, size_t len)
{
	const uint8_t *x = a, *y = b;
	size_t i;

	for (i = 0; i < len; i++) {
		if (x[i] != y[i])
			return i;
	}
	return -1;
}

static inline int full_io(int fd, bool wr, void *buf, size_t len, uint64_t off)
{
	char *p = buf;
	ssize_t n;

	while (len) {
		n = wr ? pwrite(fd, p, len, off) : pread(fd, p, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

/*
 * Reads or writes the backing store behind the device's back.  A block
 * device (and a vhost-user back-end's image) goes through O_DIRECT and an
 * aligned bounce buffer, so that neither side sees a stale page cache.
 */
static inline int be_io(struct backend *be, bool wr, uint64_t off, void *buf,
			size_t len)
{
	uint64_t start = off & ~4095ULL;
	uint64_t end = (off + len + 4095) & ~4095ULL;
	void *b;
	int ret;

	if (!be->direct)
		return full_io(be->chk, wr, buf, len, off);
	if (posix_memalign(&b, 4096, end - start))
		return -ENOMEM;
	ret = full_io(be->chk, false, b, end - start, start);
	if (!ret && wr) {
		memcpy((char *)b + (off - start), buf, len);
		ret = full_io(be->chk, true, b, end - start, start);
	} else if (!ret) {
		memcpy(buf, (char *)b + (off - start), len);
	}
	free(b);
	return ret;
}

static inline void be_close(struct backend *be)
{
	if (be->fd >= 0)
		close(be->fd);
	if (be->rofd >= 0)
		close(be->rofd);
	if (be->chk >= 0)
		close(be->chk);
	be->fd = -1;
	be->rofd = -1;
	be->chk = -1;
}

/* Whether the queue of a block device (or of its disk) discards. */
static inline bool bdev_can_discard(const struct stat *st)
{
	static const char * const paths[] = {
		"/sys/dev/block/%u:%u/queue/discard_max_bytes",
		"/sys/dev/block/%u:%u/../queue/discard_max_bytes",
	};
	char path[128], buf[32] = "";
	unsigned int i;
	int fd, n;

	for (i = 0; i < ARRAY_SIZE(paths); i++) {
		snprintf(path, sizeof(path), paths[i], major(st->st_rdev),
			 minor(st->st_rdev));
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		return n > 0 && strtoull(buf, NULL, 10) > 0;
	}
	return false;
}

/*
 * The block device named by VBP_TEST_BDEV, or a new sparse file in
 * VBP_TEST_DIR that is unlinked at once (nothing is left behind).
 */
static inline void be_open(struct __test_metadata *_metadata,
			   struct backend *be, bool bdev)
{
	char path[PATH_MAX];
	const char *dir;
	struct stat st;

	be->bdev = bdev;
	be->direct = bdev;
	if (bdev) {
		snprintf(path, sizeof(path), "%s", getenv("VBP_TEST_BDEV"));
		ASSERT_EQ(0, stat(path, &st))
			TH_LOG("%s: %s", path, strerror(errno));
		ASSERT_TRUE(S_ISBLK(st.st_mode))
			TH_LOG("%s is not a block device", path);
		be->fd = open(path, O_RDWR | O_CLOEXEC);
		ASSERT_LE(0, be->fd) TH_LOG("%s: %s", path, strerror(errno));
		be->rofd = open(path, O_RDONLY | O_CLOEXEC);
		ASSERT_LE(0, be->rofd);
		be->chk = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
		ASSERT_LE(0, be->chk);
		ASSERT_EQ(0, ioctl(be->fd, BLKGETSIZE64, &be->size));
		be->discard = bdev_can_discard(&st);
		if (be->size < MIN_BDEV_SIZE)
			SKIP(return, "VBP_TEST_BDEV: smaller than %llu MiB",
			     MIN_BDEV_SIZE >> 20);
		return;
	}

	dir = getenv("VBP_TEST_DIR");
	snprintf(path, sizeof(path), "%s/vhost_blk_vmm.XXXXXX",
		 dir && *dir ? dir : "/tmp");
	be->fd = mkostemp(path, O_CLOEXEC);
	ASSERT_LE(0, be->fd) TH_LOG("%s: %s", path, strerror(errno));
	be->rofd = open(path, O_RDONLY | O_CLOEXEC);
	be->chk = open(path, O_RDWR | O_CLOEXEC);
	unlink(path);
	ASSERT_LE(0, be->rofd);
	ASSERT_LE(0, be->chk);
	ASSERT_EQ(0, ftruncate(be->fd, FILE_SIZE));
	be->size = FILE_SIZE;
	/* A hole in a hole: whether the file system can punch one. */
	be->discard = !fallocate(be->chk,
				 FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				 FILE_SIZE - 4096, 4096);
}

/*
 * The image file a vhost-user back-end serves, opened to check what the
 * device does: O_DIRECT where the file system has it, as the back-end's
 * I/O may bypass the page cache.  Only be->chk is open.
 */
static inline void be_open_image(struct __test_metadata *_metadata,
				 struct backend *be, const char *path)
{
	struct stat st;

	be->bdev = false;
	be->chk = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	be->direct = be->chk >= 0;
	if (be->chk < 0)
		be->chk = open(path, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, be->chk) TH_LOG("%s: %s", path, strerror(errno));
	ASSERT_EQ(0, fstat(be->chk, &st));
	be->size = st.st_size;
}

/* ------------------------------------------------------------------ */
/* Contexts and virtio-blk requests                                     */
/* ------------------------------------------------------------------ */

/* What a test works with. */
struct ctx {
	struct vmm v;
	struct backend be;
	uint64_t cap;		/* capacity in sectors */
	uint64_t hdr;		/* scratch header */
	uint64_t st;		/* scratch status byte */
	uint64_t dz;		/* scratch discard/write-zeroes ranges */
	uint64_t rd;		/* scratch read buffer, RD_MAX bytes */
	uint64_t alive;		/* 4 KiB for check_alive() */
	uint64_t seed;
};

/* A context whose descriptors are not open yet. */
static inline void ctx_init(struct ctx *c)
{
	c->be.fd = -1;
	c->be.rofd = -1;
	c->be.chk = -1;
}

/* The scratch buffers of a context, in the guest memory of c->v. */
static inline void ctx_scratch(struct ctx *c)
{
	struct vmm *v = &c->v;

	c->hdr = galloc(v, 0, HDR_SIZE, 64);
	c->st = galloc(v, 0, 1, 64);
	c->dz = galloc(v, 0, 4096, 4096);
	c->rd = galloc(v, 1, RD_MAX, 4096);
	c->alive = galloc(v, 0, 4096, 4096);
}

static inline uint64_t next_seed(struct ctx *c)
{
	return mix64(++c->seed);
}

/*
 * One synchronous request on queue q: the 16-byte header, the data
 * segments, the status byte.  Returns the status; *len gets the used
 * length.
 */
static inline uint8_t blk_req(struct __test_metadata *_metadata,
			      struct ctx *c, unsigned int q, uint32_t type,
			      uint64_t sector, const struct seg *data,
			      unsigned int ndata, uint32_t *len)
{
	struct vmm *v = &c->v;
	struct seg s[MAX_DATA + 2];
	uint32_t l;

	ASSERT_GE(MAX_DATA, ndata);
	s[0] = (struct seg){ c->hdr, HDR_SIZE, false };
	if (ndata)
		memcpy(&s[1], data, ndata * sizeof(*data));
	s[ndata + 1] = (struct seg){ c->st, 1, true };
	set_hdr(v, c->hdr, type, sector);
	*gptr(v, c->st) = 0xff;
	l = run_req(_metadata, v, q, s, ndata + 2);
	if (len)
		*len = l;
	return *gptr(v, c->st);
}

/*
 * Cuts [gpa, gpa + len) into n segments whose sizes are multiples of the
 * sector (the last takes the rest).  Returns the number of segments.
 */
static inline unsigned int split(struct seg *s, uint64_t gpa, uint32_t len,
				 unsigned int n, bool wr)
{
	uint32_t part = len / n / SECTOR * SECTOR;
	unsigned int i;

	if (!part) {
		part = len;
		n = 1;
	}
	for (i = 0; i < n; i++) {
		s[i].gpa = gpa + (uint64_t)i * part;
		s[i].len = i + 1 < n ? part : len - (n - 1) * part;
		s[i].wr = wr;
	}
	return n;
}

/* T_IN or T_OUT of len bytes at gpa, the data cut in nparts segments. */
static inline uint8_t blk_rw(struct __test_metadata *_metadata,
			     struct ctx *c, uint32_t type, uint64_t sector,
			     uint64_t gpa, uint32_t len, unsigned int nparts,
			     uint32_t *used_len)
{
	struct seg d[MAX_DATA];
	unsigned int n;

	n = split(d, gpa, len, nparts, type == VIRTIO_BLK_T_IN);
	return blk_req(_metadata, c, 0, type, sector, d, n, used_len);
}

/* A discard or write-zeroes request of nr ranges. */
static inline uint8_t blk_dwz(struct __test_metadata *_metadata,
			      struct ctx *c, uint32_t type,
			      const uint64_t *sector, const uint32_t *num,
			      const uint32_t *flags, unsigned int nr)
{
	struct virtio_blk_discard_write_zeroes *r;
	struct seg d;
	unsigned int i;
	uint32_t len;
	uint8_t st;

	r = gpa_to_hva(&c->v, c->dz, nr * sizeof(*r));
	for (i = 0; i < nr; i++) {
		r[i].sector = htole64(sector[i]);
		r[i].num_sectors = htole32(num[i]);
		r[i].flags = htole32(flags[i]);
	}
	d = (struct seg){ c->dz, nr * sizeof(*r), false };
	st = blk_req(_metadata, c, 0, type, 0, &d, 1, &len);
	if (st == VIRTIO_BLK_S_OK)
		EXPECT_EQ(1, len);
	return st;
}

static inline void store_write(struct __test_metadata *_metadata,
			       struct ctx *c, uint64_t sector,
			       void *buf, size_t len)
{
	int ret = be_io(&c->be, true, sector * SECTOR, buf, len);

	ASSERT_EQ(0, ret) TH_LOG("backing store write: %s", strerror(-ret));
}

/* The backing store holds expect at sector. */
static inline void check_store(struct __test_metadata *_metadata,
			       struct ctx *c, uint64_t sector,
			       const void *expect, size_t len)
{
	void *got = malloc(len);
	long off = -2;
	int ret;

	ASSERT_NE(NULL, got);
	ret = be_io(&c->be, false, sector * SECTOR, got, len);
	if (!ret)
		off = first_diff(expect, got, len);
	free(got);
	ASSERT_EQ(0, ret) TH_LOG("backing store read: %s", strerror(-ret));
	ASSERT_EQ(-1, off)
		TH_LOG("backing store differs at sector %llu byte %ld",
		       (unsigned long long)sector, off);
}

/* The device reads expect at sector (T_IN into two segments). */
static inline void check_dev(struct __test_metadata *_metadata,
			     struct ctx *c, uint64_t sector,
			     const void *expect, uint32_t len)
{
	uint32_t ulen = 0;
	uint8_t st;
	long off;

	ASSERT_GE(RD_MAX, len);
	memset(gpa_to_hva(&c->v, c->rd, len), 0xa5, len);
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, sector, c->rd, len,
		    2, &ulen);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	EXPECT_EQ(len + 1, ulen);
	off = first_diff(expect, gpa_to_hva(&c->v, c->rd, len), len);
	ASSERT_EQ(-1, off)
		TH_LOG("device read differs at sector %llu byte %ld",
		       (unsigned long long)sector, off);
}

static inline void check_both(struct __test_metadata *_metadata,
			      struct ctx *c, uint64_t sector,
			      const void *expect, uint32_t len)
{
	check_store(_metadata, c, sector, expect, len);
	check_dev(_metadata, c, sector, expect, len);
}

/* A write and a read of fresh data through the device, both verified. */
static inline void check_alive(struct __test_metadata *_metadata,
			       struct ctx *c)
{
	uint64_t buf = c->alive;
	uint8_t expect[4096];
	uint32_t len = 0;
	uint8_t st;

	fill_rand(expect, sizeof(expect), next_seed(c));
	memcpy(gpa_to_hva(&c->v, buf, sizeof(expect)), expect,
	       sizeof(expect));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, ALIVE_SECTOR, buf,
		    sizeof(expect), 3, &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st) TH_LOG("device not working");
	EXPECT_EQ(1, len);
	check_both(_metadata, c, ALIVE_SECTOR, expect, sizeof(expect));
}

/* VHOST_RESET_OWNER, a complete new setup, and a request that works. */
static inline void reset_and_check(struct __test_metadata *_metadata,
				   struct ctx *c)
{
	ASSERT_EQ(0, ioctl(c->v.fd, VHOST_RESET_OWNER))
		TH_LOG("VHOST_RESET_OWNER: %s", strerror(errno));
	ASSERT_OK(vmm_start(&c->v, c->be.fd));
	check_alive(_metadata, c);
}

#endif /* VHOST_BLK_VMM_HARNESS_H */
