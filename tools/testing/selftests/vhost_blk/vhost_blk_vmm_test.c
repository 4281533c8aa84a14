// SPDX-License-Identifier: GPL-2.0
/*
 * The mini-VMM's functional tests (vmm.h) against /dev/vhost-blk-poll: the
 * test lays split virtqueues out in guest memory, negotiates the features,
 * attaches a backing file or block device and checks what the device does
 * with well-formed and malformed requests, byte for byte against the
 * backing store.  The same guest side over vhost-user (fixture vhost_user),
 * and sockets that are no vhost-user back-end (vhost_user_bad).
 *
 * Needs root and the module loaded (not the vhost_user tests).  Environment:
 *   VBP_TEST_DIR   directory for the 64 MiB backing file (default /tmp)
 *   VBP_TEST_BDEV  a block device the tests may overwrite (32 MiB at least);
 *                  without it the block-device variants are skipped
 *   VBP_TEST_VHOST_USER, VBP_TEST_VHOST_USER_IMG
 *                  the socket of a vhost-user-blk back-end and the file it
 *                  serves; without them the vhost_user tests are skipped
 */

#define _GNU_SOURCE
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#include "vmm_harness.h"

/* A free sector range for each test that needs one (in sectors). */
#define DZ_SECTOR	3000
#define DZ_LEN		64
#define PB_SECTOR	24576	/* 128 sectors */

/* The queues x requests test. */
#define BIG_REQS	1000
#define BIG_BATCH	128
#define BIG_LEN		4096
#define BIG_BASE	32768	/* first sector; queues follow each other */

FIXTURE(vmm) {
	struct ctx c;
};

FIXTURE_VARIANT(vmm) {
	bool bdev;
	bool event_idx;
	bool indirect;
};

FIXTURE_VARIANT_ADD(vmm, file) {
	.bdev = false, .event_idx = false, .indirect = false,
};

FIXTURE_VARIANT_ADD(vmm, file_event_idx) {
	.bdev = false, .event_idx = true, .indirect = false,
};

FIXTURE_VARIANT_ADD(vmm, file_indirect) {
	.bdev = false, .event_idx = false, .indirect = true,
};

FIXTURE_VARIANT_ADD(vmm, file_event_idx_indirect) {
	.bdev = false, .event_idx = true, .indirect = true,
};

FIXTURE_VARIANT_ADD(vmm, bdev) {
	.bdev = true, .event_idx = false, .indirect = false,
};

FIXTURE_VARIANT_ADD(vmm, bdev_event_idx) {
	.bdev = true, .event_idx = true, .indirect = false,
};

FIXTURE_VARIANT_ADD(vmm, bdev_indirect) {
	.bdev = true, .event_idx = false, .indirect = true,
};

FIXTURE_VARIANT_ADD(vmm, bdev_event_idx_indirect) {
	.bdev = true, .event_idx = true, .indirect = true,
};

FIXTURE_SETUP(vmm)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;

	ctx_init(c);
	if (variant->bdev && !getenv("VBP_TEST_BDEV"))
		SKIP(return, "VBP_TEST_BDEV names no block device");
	be_open(_metadata, &c->be, variant->bdev);
	if (_metadata->exit_code)
		return;
	c->cap = c->be.size / SECTOR;
	c->seed = mix64(now_us() ^ ((uint64_t)getpid() << 32));

	ASSERT_OK(vmm_open_kernel(v, variant->event_idx,
				  variant->indirect));
	ASSERT_EQ(REGION1_GPA + 5,
		  hva_to_gpa(v, gpa_to_hva(v, REGION1_GPA + 5, 1)));
	ctx_scratch(c);
	ASSERT_OK(vmm_start(v, c->be.fd));
}

FIXTURE_TEARDOWN(vmm)
{
	struct ctx *c = &self->c;

	vmm_close(&c->v);
	be_close(&c->be);
}

/* ------------------------------------------------------------------ */
/* Data path                                                            */
/* ------------------------------------------------------------------ */

/*
 * Random data written and read back at several sectors, with sizes from
 * one sector to 64 KiB; 4 KiB goes in three descriptors and is read back
 * through five.
 */
TEST_F(vmm, write_read)
{
	struct ctx *c = &self->c;
	static const uint32_t sizes[] = { 512, 4096, 65536 };
	static const unsigned int wparts[] = { 1, 3, 16 };
	static const unsigned int rparts[] = { 1, 5, 9 };
	uint64_t sectors[] = { 0, 1, 7, 4095, 77777, c->cap - 128,
			       c->cap - 8, c->cap - 1 };
	struct vmm *v = &c->v;
	uint8_t expect[RD_MAX];
	uint64_t wbuf, rbuf;
	unsigned int i, j;
	uint32_t len;
	uint8_t st;

	wbuf = galloc(v, 0, RD_MAX, 4096);
	rbuf = galloc(v, 1, RD_MAX, 4096);

	for (i = 0; i < ARRAY_SIZE(sectors); i++) {
		for (j = 0; j < ARRAY_SIZE(sizes); j++) {
			if (sectors[i] + sizes[j] / SECTOR > c->cap)
				continue;
			fill_rand(expect, sizes[j], next_seed(c));
			memcpy(gpa_to_hva(v, wbuf, sizes[j]), expect,
			       sizes[j]);
			st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT,
				    sectors[i], wbuf, sizes[j], wparts[j],
				    &len);
			ASSERT_EQ(VIRTIO_BLK_S_OK, st)
				TH_LOG("write of %u at sector %llu", sizes[j],
				       (unsigned long long)sectors[i]);
			EXPECT_EQ(1, len);
			check_store(_metadata, c, sectors[i], expect,
				    sizes[j]);

			memset(gpa_to_hva(v, rbuf, sizes[j]), 0x5a, sizes[j]);
			st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN,
				    sectors[i], rbuf, sizes[j], rparts[j],
				    &len);
			ASSERT_EQ(VIRTIO_BLK_S_OK, st)
				TH_LOG("read of %u at sector %llu", sizes[j],
				       (unsigned long long)sectors[i]);
			EXPECT_EQ(sizes[j] + 1, len);
			ASSERT_EQ(-1, first_diff(expect,
						 gpa_to_hva(v, rbuf, sizes[j]),
						 sizes[j]));
		}
	}
}

/*
 * Indirect tables: a request of 62 one-sector segments each way, and an
 * indirect and a direct request in flight together.
 */
TEST_F(vmm, indirect)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct seg s[IND_MAX], s2[3];
	uint32_t dlen = MAX_DATA * SECTOR;
	uint8_t *expect, *expect2;
	uint64_t buf, buf2, hdr2, st2;
	struct used u;
	unsigned int i, got;
	uint32_t len;
	uint8_t st;

	if (!v->indirect)
		SKIP(return, "indirect descriptors not negotiated");

	buf = galloc(v, 1, dlen, 4096);
	expect = malloc(dlen);
	ASSERT_NE(NULL, expect);
	fill_rand(expect, dlen, next_seed(c));
	memcpy(gpa_to_hva(v, buf, dlen), expect, dlen);
	split(s, buf, dlen, MAX_DATA, false);
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_OUT, 200, s, MAX_DATA,
		     &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	EXPECT_EQ(1, len);
	check_store(_metadata, c, 200, expect, dlen);

	memset(gpa_to_hva(v, buf, dlen), 0, dlen);
	split(s, buf, dlen, MAX_DATA, true);
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_IN, 200, s, MAX_DATA,
		     &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	EXPECT_EQ(dlen + 1, len);
	ASSERT_EQ(-1, first_diff(expect, gpa_to_hva(v, buf, dlen), dlen));

	/* One indirect and one direct write, kicked together. */
	expect2 = malloc(4096);
	ASSERT_NE(NULL, expect2);
	buf2 = galloc(v, 0, 4096, 4096);
	hdr2 = galloc(v, 0, HDR_SIZE, 64);
	st2 = galloc(v, 0, 1, 64);
	fill_rand(expect, 4096, next_seed(c));
	fill_rand(expect2, 4096, next_seed(c));
	memcpy(gpa_to_hva(v, buf, 4096), expect, 4096);
	memcpy(gpa_to_hva(v, buf2, 4096), expect2, 4096);
	set_hdr(v, c->hdr, VIRTIO_BLK_T_OUT, 400);
	set_hdr(v, hdr2, VIRTIO_BLK_T_OUT, 408);
	*gptr(v, c->st) = 0xff;
	*gptr(v, st2) = 0xff;
	s[0] = (struct seg){ c->hdr, HDR_SIZE, false };
	s[1] = (struct seg){ buf, 4096, false };
	s[2] = (struct seg){ c->st, 1, true };
	s2[0] = (struct seg){ hdr2, HDR_SIZE, false };
	s2[1] = (struct seg){ buf2, 4096, false };
	s2[2] = (struct seg){ st2, 1, true };
	ASSERT_LE(0, vq_add(v, 0, s, 3, true, 1));
	ASSERT_LE(0, vq_add(v, 0, s2, 3, false, 2));
	vq_kick(v, 0);
	for (got = 0; got < 2;) {
		ASSERT_TRUE(vmm_wait(v, 1, WAIT_MS));
		while (vq_get_used(v, 0, &u) == 1) {
			EXPECT_EQ(1, u.len);
			got++;
		}
	}
	EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, c->st));
	EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, st2));
	check_store(_metadata, c, 400, expect, 4096);
	check_store(_metadata, c, 408, expect2, 4096);
	for (i = 0; i < 2; i++)
		check_dev(_metadata, c, 400 + 8 * i,
			  i ? expect2 : expect, 4096);
	free(expect);
	free(expect2);
}

/*
 * Data that crosses from the end of region 0 to the start of region 1 (two
 * descriptors: one descriptor must lie in one region), split in the middle
 * and one sector from either end.
 */
TEST_F(vmm, region_crossing)
{
	struct ctx *c = &self->c;
	static const uint32_t before[] = { 2048, 512, 3584 };
	struct vmm *v = &c->v;
	uint8_t expect[4096];
	unsigned int i;
	struct seg d[2];
	uint32_t len;
	uint8_t st;

	for (i = 0; i < ARRAY_SIZE(before); i++) {
		d[0] = (struct seg){ REGION_SIZE - before[i], before[i], false };
		d[1] = (struct seg){ REGION1_GPA, 4096 - before[i], false };
		fill_rand(expect, sizeof(expect), next_seed(c));
		memcpy(gpa_to_hva(v, d[0].gpa, d[0].len), expect, d[0].len);
		memcpy(gpa_to_hva(v, d[1].gpa, d[1].len), expect + d[0].len,
		       d[1].len);
		st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_OUT, 2048 + 8 * i,
			     d, 2, &len);
		ASSERT_EQ(VIRTIO_BLK_S_OK, st);
		EXPECT_EQ(1, len);
		check_store(_metadata, c, 2048 + 8 * i, expect, 4096);

		memset(gpa_to_hva(v, d[0].gpa, d[0].len), 0, d[0].len);
		memset(gpa_to_hva(v, d[1].gpa, d[1].len), 0, d[1].len);
		d[0].wr = true;
		d[1].wr = true;
		st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_IN, 2048 + 8 * i,
			     d, 2, &len);
		ASSERT_EQ(VIRTIO_BLK_S_OK, st);
		EXPECT_EQ(4097, len);
		ASSERT_EQ(-1, first_diff(expect,
					 gpa_to_hva(v, d[0].gpa, d[0].len),
					 d[0].len));
		ASSERT_EQ(-1, first_diff(expect + d[0].len,
					 gpa_to_hva(v, d[1].gpa, d[1].len),
					 d[1].len));
	}
}

/*
 * The framing of a request is free (VIRTIO_F_VERSION_1): data and status in
 * one descriptor, the header in two, header and data in one (which leaves
 * the data at an offset of 16 bytes).
 */
TEST_F(vmm, any_layout)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint8_t expect[4096];
	uint64_t hbuf, dbuf;
	struct seg s[4];
	uint8_t *h, *d;
	uint32_t len;

	hbuf = galloc(v, 0, HDR_SIZE + 4096, 4096);
	dbuf = galloc(v, 1, 4096 + 1, 4096);
	h = gpa_to_hva(v, hbuf, HDR_SIZE + 4096);
	d = gpa_to_hva(v, dbuf, 4096 + 1);
	fill_rand(expect, sizeof(expect), next_seed(c));
	store_write(_metadata, c, 600, expect, sizeof(expect));

	/* [header] [data + status] */
	set_hdr(v, c->hdr, VIRTIO_BLK_T_IN, 600);
	memset(d, 0, 4096);
	d[4096] = 0xff;
	s[0] = (struct seg){ c->hdr, HDR_SIZE, false };
	s[1] = (struct seg){ dbuf, 4096 + 1, true };
	len = run_req(_metadata, v, 0, s, 2);
	ASSERT_EQ(VIRTIO_BLK_S_OK, d[4096]) TH_LOG("data + status");
	EXPECT_EQ(4097, len);
	ASSERT_EQ(-1, first_diff(expect, d, 4096));

	/* [8 bytes of header] [8 bytes of header] [data] [status] */
	set_hdr(v, hbuf, VIRTIO_BLK_T_IN, 600);
	memset(d, 0, 512);
	*gptr(v, c->st) = 0xff;
	s[0] = (struct seg){ hbuf, 8, false };
	s[1] = (struct seg){ hbuf + 8, 8, false };
	s[2] = (struct seg){ dbuf, 512, true };
	s[3] = (struct seg){ c->st, 1, true };
	len = run_req(_metadata, v, 0, s, 4);
	ASSERT_EQ(VIRTIO_BLK_S_OK, *gptr(v, c->st)) TH_LOG("split header");
	EXPECT_EQ(513, len);
	ASSERT_EQ(-1, first_diff(expect, d, 512));

	/* [header + data] [status] */
	fill_rand(expect, sizeof(expect), next_seed(c));
	set_hdr(v, hbuf, VIRTIO_BLK_T_OUT, 600);
	memcpy(h + HDR_SIZE, expect, 4096);
	*gptr(v, c->st) = 0xff;
	s[0] = (struct seg){ hbuf, HDR_SIZE + 4096, false };
	s[1] = (struct seg){ c->st, 1, true };
	len = run_req(_metadata, v, 0, s, 2);
	ASSERT_EQ(VIRTIO_BLK_S_OK, *gptr(v, c->st))
		TH_LOG("header + data: data not 512-byte aligned in memory");
	EXPECT_EQ(1, len);
	check_both(_metadata, c, 600, expect, 4096);
}

/*
 * 4 KiB written at sector 800 in nseg segments, then a flush: OK, a used
 * length of 1, the data in the store and read back through the device.
 */
static void write_then_flush(struct __test_metadata *_metadata,
			     struct ctx *c, unsigned int nseg)
{
	uint8_t expect[4096];
	uint64_t buf;
	uint32_t len;
	uint8_t st;

	buf = galloc(&c->v, 0, sizeof(expect), 4096);
	fill_rand(expect, sizeof(expect), next_seed(c));
	memcpy(gpa_to_hva(&c->v, buf, sizeof(expect)), expect,
	       sizeof(expect));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 800, buf,
		    sizeof(expect), nseg, NULL);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	EXPECT_EQ(1, len);
	check_both(_metadata, c, 800, expect, sizeof(expect));
}

/*
 * Segments of any byte length at any address, as long as the total is a
 * multiple of the sector.
 */
TEST_F(vmm, unaligned_segments)
{
	struct ctx *c = &self->c;
	static const uint32_t wlen[] = { 1, 511, 1000, 2584 };
	static const uint32_t rlen[] = { 3, 4000, 93 };
	struct vmm *v = &c->v;
	struct seg d[4];
	uint8_t expect[4096];
	uint64_t buf, gpa;
	unsigned int i;
	uint32_t len;
	uint8_t st;

	buf = galloc(v, 1, 8192, 4096);
	fill_rand(expect, sizeof(expect), next_seed(c));
	gpa = buf + 1;
	memcpy(gpa_to_hva(v, gpa, 4096), expect, 4096);
	for (i = 0; i < ARRAY_SIZE(wlen); i++) {
		d[i] = (struct seg){ gpa, wlen[i], false };
		gpa += wlen[i];
	}
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_OUT, 700, d,
		     ARRAY_SIZE(wlen), &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st)
		TH_LOG("write from segments of 1, 511, 1000, 2584 bytes");
	EXPECT_EQ(1, len);
	check_store(_metadata, c, 700, expect, 4096);

	gpa = buf + 7;
	memset(gpa_to_hva(v, gpa, 4096), 0, 4096);
	for (i = 0; i < ARRAY_SIZE(rlen); i++) {
		d[i] = (struct seg){ gpa, rlen[i], true };
		gpa += rlen[i];
	}
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_IN, 700, d,
		     ARRAY_SIZE(rlen), &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st)
		TH_LOG("read into segments of 3, 4000, 93 bytes");
	EXPECT_EQ(4097, len);
	ASSERT_EQ(-1, first_diff(expect, gpa_to_hva(v, buf + 7, 4096), 4096));
}

TEST_F(vmm, flush)
{
	struct ctx *c = &self->c;
	uint32_t len;
	uint8_t st;

	write_then_flush(_metadata, c, 1);
	/* A flush with nothing to write back. */
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
}

/*
 * GET_ID: all NUL bytes by default, then the serial set, NUL-padded to 20
 * bytes, or all 20 bytes of it.
 */
TEST_F(vmm, get_id)
{
	struct ctx *c = &self->c;
	static const char * const serials[] = {
		"vbp-serial-1",
		"ABCDEFGHIJ0123456789",
		"x",
	};
	char want[VIRTIO_BLK_ID_BYTES];
	struct vmm *v = &c->v;
	unsigned int i;
	uint64_t id;
	struct seg d;
	uint32_t len;
	uint8_t st;

	id = galloc(v, 0, VIRTIO_BLK_ID_BYTES, 64);
	/* Before any VHOST_BLK_SET_SERIAL: all NUL bytes. */
	memset(want, 0, sizeof(want));
	memset(gpa_to_hva(v, id, sizeof(want)), 0xff, sizeof(want));
	d = (struct seg){ id, VIRTIO_BLK_ID_BYTES, true };
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_GET_ID, 0, &d, 1, &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	EXPECT_EQ(VIRTIO_BLK_ID_BYTES + 1, len);
	ASSERT_EQ(-1, first_diff(want, gpa_to_hva(v, id, sizeof(want)),
				 sizeof(want)));

	for (i = 0; i < ARRAY_SIZE(serials); i++) {
		memset(want, 0, sizeof(want));
		memcpy(want, serials[i], strlen(serials[i]));
		ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_SERIAL, want))
			TH_LOG("VHOST_BLK_SET_SERIAL: %s", strerror(errno));
		memset(gpa_to_hva(v, id, sizeof(want)), 0xff, sizeof(want));
		d = (struct seg){ id, VIRTIO_BLK_ID_BYTES, true };
		st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_GET_ID, 0, &d, 1,
			     &len);
		ASSERT_EQ(VIRTIO_BLK_S_OK, st);
		EXPECT_EQ(VIRTIO_BLK_ID_BYTES + 1, len);
		ASSERT_EQ(-1, first_diff(want, gpa_to_hva(v, id, sizeof(want)),
					 sizeof(want)))
			TH_LOG("serial \"%s\"", serials[i]);
	}
}

/* DZ_LEN sectors of random data at DZ_SECTOR, in expect. */
static void dz_prefill(struct __test_metadata *_metadata,
		       struct ctx *c, uint8_t *expect)
{
	fill_rand(expect, DZ_LEN * SECTOR, next_seed(c));
	store_write(_metadata, c, DZ_SECTOR, expect, DZ_LEN * SECTOR);
	check_dev(_metadata, c, DZ_SECTOR, expect, DZ_LEN * SECTOR);
}

/*
 * Discard of the middle half: the rest is untouched; a discarded range of
 * a file reads as zeroes (a hole), one of a block device is undefined.  A
 * store that cannot discard answers UNSUPP and keeps its data.
 */
TEST_F(vmm, discard)
{
	struct ctx *c = &self->c;
	uint64_t sector = DZ_SECTOR + 16;
	uint32_t num = 32, flags = 0;
	uint8_t expect[DZ_LEN * SECTOR];
	uint8_t st;

	dz_prefill(_metadata, c, expect);
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_DISCARD, &sector, &num,
		     &flags, 1);
	if (!c->be.discard) {
		ASSERT_EQ(VIRTIO_BLK_S_UNSUPP, st);
		check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
		return;
	}
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	if (c->be.bdev) {
		check_both(_metadata, c, DZ_SECTOR, expect, 16 * SECTOR);
		check_both(_metadata, c, DZ_SECTOR + 48,
			   expect + 48 * SECTOR, 16 * SECTOR);
		return;
	}
	memset(expect + 16 * SECTOR, 0, 32 * SECTOR);
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
}

static void write_zeroes(struct __test_metadata *_metadata,
			 struct ctx *c, uint32_t flags)
{
	uint64_t sector = DZ_SECTOR + 16;
	uint32_t num = 32;
	uint8_t expect[DZ_LEN * SECTOR];
	uint8_t st;

	dz_prefill(_metadata, c, expect);
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, &sector,
		     &num, &flags, 1);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	memset(expect + 16 * SECTOR, 0, 32 * SECTOR);
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
}

TEST_F(vmm, write_zeroes)
{
	write_zeroes(_metadata, &self->c, 0);
}

TEST_F(vmm, write_zeroes_unmap)
{
	write_zeroes(_metadata, &self->c, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
}

/*
 * One write-zeroes request of two ranges, one with UNMAP: done when the
 * device takes that many segments, else refused with UNSUPP.
 */
TEST_F(vmm, write_zeroes_two_ranges)
{
	struct ctx *c = &self->c;
	uint64_t sector[2] = { DZ_SECTOR + 4, DZ_SECTOR + 40 };
	uint32_t num[2] = { 8, 16 };
	uint32_t flags[2] = { 0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
	uint8_t expect[DZ_LEN * SECTOR];
	uint8_t st;

	dz_prefill(_metadata, c, expect);
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, sector, num,
		     flags, 2);
	if (VHOST_BLK_MAX_DISCARD_SEG < 2) {
		ASSERT_EQ(VIRTIO_BLK_S_UNSUPP, st);
	} else {
		ASSERT_EQ(VIRTIO_BLK_S_OK, st);
		memset(expect + 4 * SECTOR, 0, 8 * SECTOR);
		memset(expect + 40 * SECTOR, 0, 16 * SECTOR);
	}
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
}

/* UNMAP is a write-zeroes flag: a discard carrying it is refused. */
TEST_F(vmm, discard_unmap_refused)
{
	struct ctx *c = &self->c;
	uint64_t sector = DZ_SECTOR + 16;
	uint32_t num = 32, flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
	uint8_t expect[DZ_LEN * SECTOR];
	uint8_t st;

	dz_prefill(_metadata, c, expect);
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_DISCARD, &sector, &num,
		     &flags, 1);
	ASSERT_TRUE(st == VIRTIO_BLK_S_UNSUPP || st == VIRTIO_BLK_S_IOERR)
		TH_LOG("status %u", st);
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
}

/* ------------------------------------------------------------------ */
/* Malformed requests                                                   */
/* ------------------------------------------------------------------ */

TEST_F(vmm, unknown_type)
{
	struct ctx *c = &self->c;
	static const uint32_t types[] = { 3, 0x7f, 0x12345678 };
	struct vmm *v = &c->v;
	unsigned int i;
	struct seg d;
	uint32_t len;
	uint8_t st;

	d = (struct seg){ galloc(v, 0, 512, 512), 512, true };
	for (i = 0; i < ARRAY_SIZE(types); i++) {
		st = blk_req(_metadata, c, 0, types[i], 0, &d, 1, &len);
		ASSERT_EQ(VIRTIO_BLK_S_UNSUPP, st)
			TH_LOG("type %#x", types[i]);
		EXPECT_EQ(0, len);
	}
	check_alive(_metadata, c);
}

/* Every sector of a request must be below the capacity. */
TEST_F(vmm, out_of_range)
{
	struct ctx *c = &self->c;
	uint64_t last = c->cap - 1, wrap = 1ULL << 55;
	struct vmm *v = &c->v;
	uint8_t tail[4 * SECTOR], buf[2 * SECTOR];
	uint64_t dsec[1];
	uint32_t dnum[1] = { 8 }, dflags[1] = { 0 };
	uint64_t gbuf;
	uint8_t st;

	gbuf = galloc(v, 0, sizeof(buf), 4096);
	fill_rand(tail, sizeof(tail), next_seed(c));
	store_write(_metadata, c, c->cap - 4, tail, sizeof(tail));

	/* The last sector is in range. */
	check_dev(_metadata, c, last, tail + 3 * SECTOR, SECTOR);

	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, c->cap, gbuf, SECTOR,
		    1, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read at the capacity");
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, last, gbuf, 2 * SECTOR,
		    1, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read across the end");
	/* sector * 512 wraps to 0 */
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, wrap, gbuf, SECTOR,
		    1, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read at 2^55");
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, ~0ULL, gbuf, SECTOR,
		    1, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read at 2^64 - 1");

	fill_rand(buf, sizeof(buf), next_seed(c));
	memcpy(gpa_to_hva(v, gbuf, sizeof(buf)), buf, sizeof(buf));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, last, gbuf, 2 * SECTOR,
		    2, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write across the end");
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, wrap, gbuf, SECTOR,
		    1, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write at 2^55");

	dsec[0] = c->cap - 4;
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, dsec, dnum,
		     dflags, 1);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write zeroes across the end");
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_DISCARD, dsec, dnum,
		     dflags, 1);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("discard across the end");
	dsec[0] = wrap;
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, dsec, dnum,
		     dflags, 1);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write zeroes at 2^55");

	/* Nothing of the refused requests reached the store. */
	check_store(_metadata, c, c->cap - 4, tail, sizeof(tail));
}

/* Data of a length that is not a multiple of 512. */
TEST_F(vmm, bad_length)
{
	struct ctx *c = &self->c;
	static const uint32_t lens[] = { 1000, 513, 100, 1 };
	struct vmm *v = &c->v;
	uint8_t expect[1024];
	unsigned int i;
	struct seg d[2];
	uint64_t gbuf;
	uint8_t st;

	gbuf = galloc(v, 0, sizeof(expect), 4096);
	fill_rand(expect, sizeof(expect), next_seed(c));
	store_write(_metadata, c, 900, expect, sizeof(expect));
	memset(gpa_to_hva(v, gbuf, sizeof(expect)), 0x33, sizeof(expect));

	for (i = 0; i < ARRAY_SIZE(lens); i++) {
		st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 900, gbuf,
			    lens[i], 1, NULL);
		EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write of %u", lens[i]);
		st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, 900, gbuf,
			    lens[i], 1, NULL);
		EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read of %u", lens[i]);
	}
	/* 512 + 488 in two segments */
	d[0] = (struct seg){ gbuf, 512, false };
	d[1] = (struct seg){ gbuf + 512, 488, false };
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_OUT, 900, d, 2, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write of 512 + 488");
	check_store(_metadata, c, 900, expect, sizeof(expect));
	check_alive(_metadata, c);
}

/* A header shorter than 16 bytes, or none at all. */
TEST_F(vmm, short_header)
{
	struct ctx *c = &self->c;
	static const uint32_t hlen[] = { 8, 15, 0 };
	struct vmm *v = &c->v;
	uint64_t data;
	struct seg s[3];
	unsigned int i, n;
	uint32_t len;

	data = galloc(v, 0, 512, 512);
	for (i = 0; i < ARRAY_SIZE(hlen); i++) {
		set_hdr(v, c->hdr, VIRTIO_BLK_T_IN, 0);
		*gptr(v, c->st) = 0xff;
		n = 0;
		if (hlen[i])
			s[n++] = (struct seg){ c->hdr, hlen[i], false };
		s[n++] = (struct seg){ data, 512, true };
		s[n++] = (struct seg){ c->st, 1, true };
		len = run_req(_metadata, v, 0, s, n);
		EXPECT_EQ(VIRTIO_BLK_S_IOERR, *gptr(v, c->st))
			TH_LOG("header of %u bytes", hlen[i]);
		EXPECT_EQ(0, len);
	}
	check_alive(_metadata, c);
}

/* Data buffers in the wrong direction for the type: IOERR, nothing moves. */
TEST_F(vmm, wrong_direction)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint8_t expect[4096], junk[4096];
	struct seg d;
	uint32_t len;
	uint64_t gbuf;
	uint8_t st;

	fill_rand(expect, sizeof(expect), next_seed(c));
	store_write(_metadata, c, 1500, expect, sizeof(expect));
	gbuf = galloc(v, 0, sizeof(junk), 4096);
	fill_rand(junk, sizeof(junk), next_seed(c));
	memcpy(gpa_to_hva(v, gbuf, sizeof(junk)), junk, sizeof(junk));

	/* A write whose data the device may write. */
	d = (struct seg){ gbuf, sizeof(junk), true };
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_OUT, 1500, &d, 1, &len);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write into writable data");
	EXPECT_EQ(0, len);
	/* A read into data the device may only read. */
	d.wr = false;
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_IN, 1500, &d, 1, &len);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read into readable data");
	EXPECT_EQ(1, len);

	ASSERT_EQ(-1, first_diff(junk, gpa_to_hva(v, gbuf, sizeof(junk)),
				 sizeof(junk)));
	check_both(_metadata, c, 1500, expect, sizeof(expect));
}

/*
 * Adds a request of raw segments to queue 0 and kicks.  Returns whether a
 * used entry showed up within QUIET_MS (and takes it, its length in *len).
 */
static bool submit_watch(struct __test_metadata *_metadata,
			 struct ctx *c, const struct seg *s,
			 unsigned int n, uint32_t *len)
{
	struct vmm *v = &c->v;
	struct used u = { 0 };

	ASSERT_LE(0, vq_add(v, 0, s, n, v->indirect, 0));
	vq_kick(v, 0);
	if (!vmm_wait(v, 1, QUIET_MS))
		return false;
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
	*len = u.len;
	return true;
}

/*
 * A status descriptor the device may not write.  The device can stop the
 * ring or complete with an error, but must keep working after a reset.
 */
TEST_F(vmm, status_not_writable)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint64_t data;
	struct seg s[3];
	uint32_t len = 0;
	uint8_t *p;

	data = galloc(v, 0, 512, 512);
	p = gpa_to_hva(v, data, 512);

	/* A write, every descriptor device-readable: no room for a status. */
	set_hdr(v, c->hdr, VIRTIO_BLK_T_OUT, 1000);
	*gptr(v, c->st) = 0xff;
	s[0] = (struct seg){ c->hdr, HDR_SIZE, false };
	s[1] = (struct seg){ data, 512, false };
	s[2] = (struct seg){ c->st, 1, false };
	if (submit_watch(_metadata, c, s, 3, &len)) {
		EXPECT_EQ(0, len) TH_LOG("nothing was writable");
		EXPECT_EQ(0xff, *gptr(v, c->st));
	} else {
		EXPECT_TRUE(vq_err_signalled(&v->vq[0], 100))
			TH_LOG("write: ring stopped, no error reported");
	}
	reset_and_check(_metadata, c);

	/* A read with its status readable, after the writable data. */
	set_hdr(v, c->hdr, VIRTIO_BLK_T_IN, 1000);
	*gptr(v, c->st) = 0xff;
	memset(p, 0, 512);
	s[1].wr = true;
	if (submit_watch(_metadata, c, s, 3, &len)) {
		/* The status went to the last writable byte. */
		EXPECT_EQ(VIRTIO_BLK_S_IOERR, p[511]);
		EXPECT_EQ(0xff, *gptr(v, c->st));
	} else {
		EXPECT_TRUE(vq_err_signalled(&v->vq[0], 100))
			TH_LOG("read: ring stopped, no error reported");
	}
	reset_and_check(_metadata, c);
}

/*
 * Data outside guest memory: in the hole between the regions, and one
 * descriptor running off the end of region 0.  The device may stop the ring
 * or fail the request, and must work after a reset.
 */
TEST_F(vmm, unmapped_gpa)
{
	struct ctx *c = &self->c;
	static const uint64_t gpas[] = { HOLE_GPA, REGION_SIZE - 256 };
	struct vmm *v = &c->v;
	unsigned int i, wr;
	struct seg s[3];
	uint32_t len = 0;

	for (i = 0; i < ARRAY_SIZE(gpas); i++) {
		for (wr = 0; wr < 2; wr++) {
			set_hdr(v, c->hdr, wr ? VIRTIO_BLK_T_IN :
				VIRTIO_BLK_T_OUT, 1100);
			*gptr(v, c->st) = 0xff;
			s[0] = (struct seg){ c->hdr, HDR_SIZE, false };
			s[1] = (struct seg){ gpas[i], 512, wr };
			s[2] = (struct seg){ c->st, 1, true };
			if (submit_watch(_metadata, c, s, 3, &len)) {
				/* Failed, or dropped unparsed with len 0. */
				if (*gptr(v, c->st) != 0xff || len)
					EXPECT_EQ(VIRTIO_BLK_S_IOERR,
						  *gptr(v, c->st))
						TH_LOG("GPA %#llx, %s",
						       (unsigned long long)gpas[i],
						       wr ? "read" : "write");
			} else {
				EXPECT_TRUE(vq_err_signalled(&v->vq[0], 100))
					TH_LOG("GPA %#llx, %s: no error report",
					       (unsigned long long)gpas[i],
					       wr ? "read" : "write");
			}
			reset_and_check(_metadata, c);
		}
	}
}

/* Queue 0 stopped: no used entry appears and the error eventfd fires. */
static void assert_stopped(struct __test_metadata *_metadata,
			   struct ctx *c, const char *what)
{
	ASSERT_FALSE(vmm_wait(&c->v, 1, QUIET_MS))
		TH_LOG("%s completed", what);
	EXPECT_TRUE(vq_err_signalled(&c->v.vq[0], 100))
		TH_LOG("%s: no report on the error eventfd", what);
}

/*
 * Chains that never end: a descriptor loop, a next beyond the ring and, with
 * indirect descriptors, a loop in an indirect table.  The ring stops (no
 * used entry appears, the error eventfd fires) and the device works after a
 * reset.
 */
TEST_F(vmm, descriptor_loop)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq *vq = &v->vq[0];
	struct vring_desc *tbl;
	uint16_t a, b;
	uint64_t data, tgpa;

	data = galloc(v, 0, 512, 512);
	set_hdr(v, c->hdr, VIRTIO_BLK_T_OUT, 1200);

	/* a -> b -> a */
	a = vq_pop_desc(vq);
	b = vq_pop_desc(vq);
	desc_set(&vq->desc[a], c->hdr, HDR_SIZE, VRING_DESC_F_NEXT, b);
	desc_set(&vq->desc[b], data, 512, VRING_DESC_F_NEXT, a);
	vq->next[a] = b;
	vq->next[b] = a;
	vq_push(vq, a, 2, 0);
	vq_kick(v, 0);
	assert_stopped(_metadata, c, "a looped chain");
	reset_and_check(_metadata, c);

	/* next out of the ring */
	a = vq_pop_desc(vq);
	desc_set(&vq->desc[a], c->hdr, HDR_SIZE, VRING_DESC_F_NEXT,
		 QSIZE + 5);
	vq->next[a] = 0;
	vq_push(vq, a, 1, 0);
	vq_kick(v, 0);
	assert_stopped(_metadata, c, "a chain leaving the ring");
	reset_and_check(_metadata, c);

	if (!v->indirect)
		return;
	/* table[0] -> table[1] -> table[0] */
	a = vq_pop_desc(vq);
	tgpa = vq->ind_gpa + 16ULL * IND_MAX * a;
	tbl = gpa_to_hva(v, tgpa, 32);
	desc_set(&tbl[0], c->hdr, HDR_SIZE, VRING_DESC_F_NEXT, 1);
	desc_set(&tbl[1], data, 512, VRING_DESC_F_NEXT, 0);
	desc_set(&vq->desc[a], hva_to_gpa(v, tbl), 32, VRING_DESC_F_INDIRECT,
		 0);
	vq->next[a] = 0;
	vq_push(vq, a, 1, 0);
	vq_kick(v, 0);
	assert_stopped(_metadata, c, "a looped indirect table");
	reset_and_check(_metadata, c);
}

/* ------------------------------------------------------------------ */
/* Backend changes, notifications, load, teardown                       */
/* ------------------------------------------------------------------ */

/*
 * A backend opened O_RDONLY: reads work, every kind of write fails with
 * IOERR and leaves the store as it was.
 */
TEST_F(vmm, read_only_backend)
{
	struct ctx *c = &self->c;
	uint64_t sector = DZ_SECTOR + 16;
	uint32_t num = 32, flags = 0, unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
	uint8_t expect[DZ_LEN * SECTOR], junk[4096];
	struct vmm *v = &c->v;
	uint64_t gbuf;
	uint8_t st;

	fill_rand(expect, sizeof(expect), next_seed(c));
	store_write(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
	ASSERT_OK(vmm_reopen(v, c->be.rofd));

	check_dev(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
	gbuf = galloc(v, 0, sizeof(junk), 4096);
	fill_rand(junk, sizeof(junk), next_seed(c));
	memcpy(gpa_to_hva(v, gbuf, sizeof(junk)), junk, sizeof(junk));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, DZ_SECTOR, gbuf,
		    sizeof(junk), 2, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write");
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_DISCARD, &sector, &num,
		     &flags, 1);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("discard");
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, &sector,
		     &num, &flags, 1);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write zeroes");
	st = blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, &sector,
		     &num, &unmap, 1);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("write zeroes with unmap");
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
}

/*
 * VHOST_BLK_SET_BACKEND refuses what is neither a block device nor a
 * regular file, or not readable (EINVAL), and a closed descriptor (EBADF);
 * the old backend stays.  Without an owner it is EPERM.
 */
TEST_F(vmm, set_backend_refused)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	char path[64];
	int fd, ret;

	fd = eventfd(0, EFD_CLOEXEC);
	ASSERT_LE(0, fd);
	ret = vmm_set_backend(v, fd);
	EXPECT_EQ(-EINVAL, ret) TH_LOG("an eventfd: %s", strerror(-ret));
	close(fd);
	ret = vmm_set_backend(v, fd);
	EXPECT_EQ(-EBADF, ret) TH_LOG("a closed fd: %s", strerror(-ret));

	fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ASSERT_LE(0, fd);
	ret = vmm_set_backend(v, fd);
	EXPECT_EQ(-EINVAL, ret) TH_LOG("a directory: %s", strerror(-ret));
	close(fd);

	snprintf(path, sizeof(path), "/proc/self/fd/%d", c->be.fd);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ASSERT_LE(0, fd) TH_LOG("%s: %s", path, strerror(errno));
	ret = vmm_set_backend(v, fd);
	EXPECT_EQ(-EINVAL, ret) TH_LOG("write-only: %s", strerror(-ret));
	close(fd);

	check_alive(_metadata, c);

	fd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, fd);
	ret = ioctl(fd, VHOST_BLK_SET_BACKEND, &c->be.fd);
	EXPECT_EQ(-1, ret);
	EXPECT_EQ(EPERM, errno);
	close(fd);
}

/*
 * The capacity is read at attach: sectors a file gains afterwards are out
 * of range until it is attached again, under the running rings.
 */
TEST_F(vmm, capacity_at_attach)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint8_t expect[SECTOR];
	uint64_t gbuf;
	uint8_t st;
	int ret;

	if (c->be.bdev)
		SKIP(return, "a block device does not grow");
	gbuf = galloc(v, 0, SECTOR, SECTOR);
	fill_rand(expect, sizeof(expect), next_seed(c));
	memcpy(gpa_to_hva(v, gbuf, SECTOR), expect, SECTOR);
	ASSERT_EQ(0, ftruncate(c->be.chk, FILE_SIZE + (1 << 20)));

	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, c->cap, gbuf, SECTOR, 1,
		    NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("before the reattach");
	ret = vmm_set_backend(v, c->be.fd);
	ASSERT_EQ(0, ret) TH_LOG("reattach: %s", strerror(-ret));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, c->cap, gbuf, SECTOR, 1,
		    NULL);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st) TH_LOG("after the reattach");
	check_both(_metadata, c, c->cap, expect, SECTOR);
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, c->cap + 2048, gbuf,
		    SECTOR, 1, NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("past the new end");
}

/*
 * VHOST_GET_VRING_BASE returns how many requests the device took from the
 * ring and stops it: a new request waits until a backend is set again.
 */
TEST_F(vmm, get_vring_base)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vhost_vring_state s = { .index = 0 };
	struct used u = { 0 };
	struct seg d[2];
	unsigned int i;
	uint8_t st;
	int ret;

	for (i = 0; i < 3; i++) {
		st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0,
			     NULL);
		ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	}
	ASSERT_EQ(0, ioctl(v->fd, VHOST_GET_VRING_BASE, &s))
		TH_LOG("VHOST_GET_VRING_BASE: %s", strerror(errno));
	EXPECT_EQ(3, s.num);

	set_hdr(v, c->hdr, VIRTIO_BLK_T_FLUSH, 0);
	*gptr(v, c->st) = 0xff;
	d[0] = (struct seg){ c->hdr, HDR_SIZE, false };
	d[1] = (struct seg){ c->st, 1, true };
	ASSERT_LE(0, vq_add(v, 0, d, 2, v->indirect, 0));
	vq_kick(v, 0);
	ASSERT_FALSE(vmm_wait(v, 1, QUIET_MS))
		TH_LOG("served after VHOST_GET_VRING_BASE");

	ret = vmm_set_backend(v, c->be.fd);
	ASSERT_EQ(0, ret) TH_LOG("reattach: %s", strerror(-ret));
	ASSERT_TRUE(vmm_wait(v, 1, WAIT_MS)) TH_LOG("not served after reattach");
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
	EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, c->st));
	check_alive(_metadata, c);
}

/*
 * Detach (-1) with writes in flight: the ones the device took complete
 * before the ioctl returns, the others and one added while detached stay
 * in the ring until a backend is attached again, then all complete.
 */
TEST_F(vmm, detach_reattach)
{
	struct ctx *c = &self->c;
	enum { N = 16 };
	struct vmm *v = &c->v;
	uint64_t hdrs, sts, data, gbuf;
	uint8_t first[4096], *expect;
	unsigned int i, done = 0;
	struct used u;
	struct seg s[3];
	uint8_t st;
	int ret;

	/* One write before anything else. */
	gbuf = galloc(v, 0, sizeof(first), 4096);
	fill_rand(first, sizeof(first), next_seed(c));
	memcpy(gpa_to_hva(v, gbuf, sizeof(first)), first, sizeof(first));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 1300, gbuf,
		    sizeof(first), 3, NULL);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);

	hdrs = galloc(v, 0, HDR_SIZE * (N + 1), 64);
	sts = galloc(v, 0, N + 1, 64);
	data = galloc(v, 1, 4096 * (N + 1), 4096);
	expect = malloc(4096 * (N + 1));
	ASSERT_NE(NULL, expect);
	fill_rand(expect, 4096 * (N + 1), next_seed(c));
	memcpy(gpa_to_hva(v, data, 4096 * (N + 1)), expect, 4096 * (N + 1));
	for (i = 0; i <= N; i++) {
		set_hdr(v, hdrs + HDR_SIZE * i, VIRTIO_BLK_T_OUT,
			1400 + 8 * i);
		*gptr(v, sts + i) = 0xff;
		s[0] = (struct seg){ hdrs + HDR_SIZE * i, HDR_SIZE, false };
		s[1] = (struct seg){ data + 4096 * i, 4096, false };
		s[2] = (struct seg){ sts + i, 1, true };
		if (i == N)
			break;
		ASSERT_LE(0, vq_add(v, 0, s, 3, v->indirect, i));
	}
	vq_kick(v, 0);
	ret = vmm_set_backend(v, -1);
	ASSERT_EQ(0, ret) TH_LOG("detach: %s", strerror(-ret));
	while (vq_get_used(v, 0, &u) == 1) {
		EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, sts + u.tag));
		done++;
	}
	TH_LOG("%u of %u writes completed before the detach returned",
	       done, N);

	/* s[] is request N now: added while detached. */
	ASSERT_LE(0, vq_add(v, 0, s, 3, v->indirect, N));
	vq_kick(v, 0);
	ASSERT_FALSE(vmm_wait(v, 1, QUIET_MS))
		TH_LOG("a request completed without a backend");

	ret = vmm_set_backend(v, c->be.fd);
	ASSERT_EQ(0, ret) TH_LOG("reattach: %s", strerror(-ret));
	/* Start the device again as a VMM would: one kick. */
	vq_notify(&v->vq[0]);
	while (done < N + 1) {
		ASSERT_TRUE(vmm_wait(v, 1, WAIT_MS))
			TH_LOG("%u of %u writes done after the reattach",
			       done, N + 1);
		while (vq_get_used(v, 0, &u) == 1) {
			ASSERT_EQ(VIRTIO_BLK_S_OK, *gptr(v, sts + u.tag))
				TH_LOG("write %u", u.tag);
			EXPECT_EQ(1, u.len);
			done++;
		}
	}
	check_both(_metadata, c, 1300, first, sizeof(first));
	for (i = 0; i <= N; i++)
		check_both(_metadata, c, 1400 + 8 * i, expect + 4096 * i,
			   4096);
	free(expect);
}

/*
 * With interrupts suppressed (VRING_AVAIL_F_NO_INTERRUPT, or used_event
 * behind the used index with EVENT_IDX) a completion does not signal the
 * call eventfd; with them enabled it does.
 */
TEST_F(vmm, interrupt_suppression)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq *vq = &v->vq[0];
	struct pollfd pfd = { .events = POLLIN };
	struct used u = { 0 };
	int64_t deadline;
	uint64_t hdr, st, data;
	struct seg s[3];

	/* EVENT_IDX: the device signals its first completion regardless. */
	check_alive(_metadata, c);
	hdr = galloc(v, 0, HDR_SIZE, 64);
	st = galloc(v, 0, 1, 64);
	data = galloc(v, 0, 4096, 4096);
	set_hdr(v, hdr, VIRTIO_BLK_T_IN, ALIVE_SECTOR);
	s[0] = (struct seg){ hdr, HDR_SIZE, false };
	s[1] = (struct seg){ data, 4096, true };
	s[2] = (struct seg){ st, 1, true };

	drain(vq->call);
	if (v->event_idx)
		__atomic_store_n(vq->used_event, htole16(vq->last_used - 1),
				 __ATOMIC_RELAXED);
	else
		__atomic_store_n(&vq->avail->flags,
				 htole16(VRING_AVAIL_F_NO_INTERRUPT),
				 __ATOMIC_RELAXED);
	ASSERT_LE(0, vq_add(v, 0, s, 3, v->indirect, 0));
	vq_kick(v, 0);
	deadline = now_us() + WAIT_MS * 1000LL;
	while (!vq_has_used(vq) && now_us() < deadline)
		usleep(100);
	ASSERT_EQ(1, vq_get_used(v, 0, &u)) TH_LOG("no completion");
	EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, st));
	usleep(50000);
	pfd.fd = vq->call;
	EXPECT_EQ(0, poll(&pfd, 1, 0))
		TH_LOG("call signalled with interrupts suppressed");

	drain(vq->call);
	__atomic_store_n(&vq->avail->flags, 0, __ATOMIC_RELAXED);
	__atomic_store_n(vq->used_event, htole16(vq->last_used),
			 __ATOMIC_RELAXED);
	ASSERT_LE(0, vq_add(v, 0, s, 3, v->indirect, 0));
	vq_kick(v, 0);
	EXPECT_EQ(1, poll(&pfd, 1, WAIT_MS))
		TH_LOG("no call signal with interrupts enabled");
	ASSERT_TRUE(vmm_wait(v, 1, WAIT_MS));
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
	EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, st));
}

/* The queues x requests test: BIG_BATCH request slots per queue. */
struct big_q {
	uint64_t hdr;		/* BIG_BATCH headers */
	uint64_t st;		/* BIG_BATCH status bytes */
	uint64_t data;		/* BIG_BATCH buffers of BIG_LEN */
	unsigned int nfree;
	uint8_t free[BIG_BATCH];
	unsigned int next;	/* next request to submit */
	unsigned int done;
	unsigned int max_inflight;
};

static uint64_t big_sector(unsigned int q, unsigned int i)
{
	return BIG_BASE + ((uint64_t)q * BIG_REQS + i) * (BIG_LEN / SECTOR);
}

static uint64_t big_seed(struct ctx *c, unsigned int q,
			 unsigned int i)
{
	return mix64(c->seed ^ ((uint64_t)q << 40) ^ i);
}

/*
 * BIG_REQS requests of one type on each queue, up to BIG_BATCH in flight
 * per queue (fewer when the ring runs out of descriptors), refilled as
 * they complete.  Reads are checked against the written pattern.  Returns
 * the time taken in microseconds.
 */
static int64_t big_pass(struct __test_metadata *_metadata,
			struct ctx *c, struct big_q *bq,
			uint32_t type, unsigned int *kicks)
{
	struct vmm *v = &c->v;
	uint8_t expect[BIG_LEN];
	int64_t start = now_us();
	unsigned int q, slot, idx, mask;
	struct seg s[3];
	struct used u;
	bool added;
	uint8_t *p;
	int ret;

	for (q = 0; q < v->nq; q++) {
		bq[q].next = 0;
		bq[q].done = 0;
		bq[q].nfree = BIG_BATCH;
		for (slot = 0; slot < BIG_BATCH; slot++)
			bq[q].free[slot] = slot;
	}
	for (;;) {
		mask = 0;
		for (q = 0; q < v->nq; q++) {
			struct big_q *b = &bq[q];

			added = false;
			while (b->next < BIG_REQS && b->nfree) {
				slot = b->free[b->nfree - 1];
				idx = b->next;
				p = gpa_to_hva(v, b->data + BIG_LEN * slot,
					       BIG_LEN);
				if (type == VIRTIO_BLK_T_OUT)
					fill_rand(p, BIG_LEN,
						  big_seed(c, q, idx));
				else
					memset(p, 0, BIG_LEN);
				set_hdr(v, b->hdr + HDR_SIZE * slot, type,
					big_sector(q, idx));
				*gptr(v, b->st + slot) = 0xff;
				s[0] = (struct seg){ b->hdr + HDR_SIZE * slot,
						     HDR_SIZE, false };
				s[1] = (struct seg){ b->data + BIG_LEN * slot,
						     BIG_LEN,
						     type == VIRTIO_BLK_T_IN };
				s[2] = (struct seg){ b->st + slot, 1, true };
				if (vq_add(v, q, s, 3, v->indirect,
					   idx * BIG_BATCH + slot) < 0)
					break;
				b->nfree--;
				b->next++;
				added = true;
			}
			if (v->vq[q].inflight > b->max_inflight)
				b->max_inflight = v->vq[q].inflight;
			if (added && vq_kick(v, q))
				(*kicks)++;
			if (b->done < BIG_REQS)
				mask |= 1u << q;
		}
		if (!mask)
			break;
		ASSERT_TRUE(vmm_wait(v, mask, WAIT_MS))
			TH_LOG("no completion within %d ms (queue 0: %u done)",
			       WAIT_MS, bq[0].done);
		for (q = 0; q < v->nq; q++) {
			struct big_q *b = &bq[q];

			while ((ret = vq_get_used(v, q, &u)) == 1) {
				idx = u.tag / BIG_BATCH;
				slot = u.tag % BIG_BATCH;
				ASSERT_EQ(VIRTIO_BLK_S_OK,
					  *gptr(v, b->st + slot))
					TH_LOG("queue %u request %u", q, idx);
				p = gpa_to_hva(v, b->data + BIG_LEN * slot,
					       BIG_LEN);
				if (type == VIRTIO_BLK_T_IN) {
					EXPECT_EQ(BIG_LEN + 1, u.len);
					fill_rand(expect, BIG_LEN,
						  big_seed(c, q, idx));
					ASSERT_EQ(-1, first_diff(expect, p,
								 BIG_LEN))
						TH_LOG("queue %u read %u", q,
						       idx);
				} else {
					EXPECT_EQ(1, u.len);
				}
				b->free[b->nfree++] = slot;
				b->done++;
			}
			ASSERT_EQ(0, ret) TH_LOG("queue %u: bad used entry", q);
		}
	}
	return now_us() - start;
}

/* The backing store holds what big_pass() wrote. */
static void big_check_store(struct __test_metadata *_metadata,
			    struct ctx *c)
{
	size_t qlen = (size_t)BIG_REQS * BIG_LEN;
	uint8_t expect[BIG_LEN], *store;
	unsigned int q, i;
	long off = -1;
	int ret = 0;

	store = malloc(qlen);
	ASSERT_NE(NULL, store);
	for (q = 0; q < MAX_QUEUES; q++) {
		ret = be_io(&c->be, false, big_sector(q, 0) * SECTOR,
			    store, qlen);
		if (ret)
			break;
		for (i = 0; i < BIG_REQS; i++) {
			fill_rand(expect, BIG_LEN, big_seed(c, q, i));
			off = first_diff(expect, store + (size_t)i * BIG_LEN,
					 BIG_LEN);
			if (off != -1)
				break;
		}
		if (off != -1)
			break;
	}
	free(store);
	ASSERT_EQ(0, ret) TH_LOG("backing store read: %s", strerror(-ret));
	ASSERT_EQ(-1, off)
		TH_LOG("backing store: queue %u write %u differs at byte %ld",
		       q, i, off);
}

TEST_F_TIMEOUT(vmm, four_queues_1000, 300)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct big_q bq[MAX_QUEUES] = { 0 };
	unsigned int q, kicks = 0, maxin = 0;
	int64_t wus, rus;

	if (v->nq < MAX_QUEUES)
		SKIP(return, "the device has %u queues", v->nvqs);
	ASSERT_LE(big_sector(MAX_QUEUES, 0), c->cap);
	for (q = 0; q < MAX_QUEUES; q++) {
		bq[q].hdr = galloc(v, 0, HDR_SIZE * BIG_BATCH, 64);
		bq[q].st = galloc(v, 0, BIG_BATCH, 64);
		bq[q].data = galloc(v, q & 1, (uint64_t)BIG_LEN * BIG_BATCH,
				    4096);
	}

	wus = big_pass(_metadata, c, bq, VIRTIO_BLK_T_OUT, &kicks);
	big_check_store(_metadata, c);
	rus = big_pass(_metadata, c, bq, VIRTIO_BLK_T_IN, &kicks);
	for (q = 0; q < MAX_QUEUES; q++) {
		EXPECT_EQ(0, v->vq[q].inflight);
		if (bq[q].max_inflight > maxin)
			maxin = bq[q].max_inflight;
	}
	TH_LOG("%u queues x %u requests of %u bytes, up to %u in flight",
	       MAX_QUEUES, BIG_REQS, BIG_LEN, maxin);
	TH_LOG("write %.0f IOPS, read %.0f IOPS, %u kicks",
	       MAX_QUEUES * BIG_REQS * 1e6 / (wus ? wus : 1),
	       MAX_QUEUES * BIG_REQS * 1e6 / (rus ? rus : 1), kicks);
}

/*
 * Close the device with 200 writes just kicked: the close returns, the
 * device writes no used entry after it, and a new device works.
 */
TEST_F_TIMEOUT(vmm, close_in_flight, 60)
{
	struct ctx *c = &self->c;
	enum { N = 200 };
	struct vmm *v = &c->v;
	uint64_t hdrs, sts, data;
	uint16_t idx[MAX_QUEUES];
	unsigned int i, q, tries, added = 0;
	struct seg s[3];
	int64_t t;

	hdrs = galloc(v, 0, HDR_SIZE * N, 64);
	sts = galloc(v, 0, N, 64);
	data = galloc(v, 1, 4096ULL * N, 4096);
	fill_rand(gpa_to_hva(v, data, 4096ULL * N), 4096ULL * N,
		  next_seed(c));
	for (i = 0, q = 0; i < N; i++) {
		set_hdr(v, hdrs + HDR_SIZE * i, VIRTIO_BLK_T_OUT, 4096 + 8 * i);
		s[0] = (struct seg){ hdrs + HDR_SIZE * i, HDR_SIZE, false };
		s[1] = (struct seg){ data + 4096ULL * i, 4096, false };
		s[2] = (struct seg){ sts + i, 1, true };
		/* Round robin over the queues, skipping full rings. */
		for (tries = 0; tries < v->nq; tries++, q = (q + 1) % v->nq) {
			if (vq_add(v, q, s, 3, v->indirect, i) >= 0)
				break;
		}
		if (tries == v->nq)
			break;
		q = (q + 1) % v->nq;
		added++;
	}
	for (q = 0; q < v->nq; q++)
		vq_kick(v, q);

	t = now_us();
	ASSERT_EQ(0, close(v->fd));
	v->fd = -1;
	t = now_us() - t;
	for (q = 0; q < v->nq; q++)
		idx[q] = vq_used_idx(&v->vq[q]);
	TH_LOG("close with %u writes in flight took %lld us", added,
	       (long long)t);
	EXPECT_LT(t, 10000000LL);

	usleep(200000);
	for (q = 0; q < v->nq; q++)
		EXPECT_EQ(idx[q], vq_used_idx(&v->vq[q]))
			TH_LOG("queue %u: used ring written after close", q);

	ASSERT_OK(vmm_reopen(v, c->be.fd));
	check_alive(_metadata, c);
}

/* ------------------------------------------------------------------ */
/* Workers, migration, faults, lifecycle                                */
/* ------------------------------------------------------------------ */

#define MAX_THREADS	64

/*
 * The thread ids of this process's vhost workers (named "vhost-<pid>"), at
 * most max of them; -1 when /proc cannot be read.
 */
static int vhost_threads(pid_t *tids, unsigned int max)
{
	char path[PATH_MAX], comm[32], want[32];
	unsigned int n = 0;
	struct dirent *d;
	DIR *dir;
	FILE *f;

	snprintf(want, sizeof(want), "vhost-%d\n", getpid());
	dir = opendir("/proc/self/task");
	if (!dir)
		return -1;
	while ((d = readdir(dir)) && n < max) {
		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 d->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strcmp(comm, want))
			tids[n++] = atoi(d->d_name);
		fclose(f);
	}
	closedir(dir);
	return n;
}

/*
 * Each vring gets a worker of its own (VHOST_NEW_WORKER and
 * VHOST_ATTACH_VRING_WORKER), then every queue has 64 writes in flight at
 * once; all complete and land in the backing store.
 */
TEST_F(vmm, per_queue_workers)
{
	enum { N = 64, LEN = 4096, BASE = 20480 };
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vhost_worker_state w;
	struct vhost_vring_worker vw;
	uint32_t ids[MAX_QUEUES];
	unsigned int q, i, j, done = 0;
	uint64_t hdrs, sts, data;
	struct used u;
	struct seg sg[3];
	pid_t tids[MAX_THREADS];
	uint8_t *buf;

	if (v->nq < 2)
		SKIP(return, "the device has %u queue", v->nvqs);
	for (q = 0; q < v->nq; q++) {
		memset(&w, 0, sizeof(w));
		ASSERT_EQ(0, ioctl(v->fd, VHOST_NEW_WORKER, &w))
			TH_LOG("VHOST_NEW_WORKER: %s", strerror(errno));
		vw.index = q;
		vw.worker_id = w.worker_id;
		ASSERT_EQ(0, ioctl(v->fd, VHOST_ATTACH_VRING_WORKER, &vw))
			TH_LOG("VHOST_ATTACH_VRING_WORKER: %s",
			       strerror(errno));
		ids[q] = w.worker_id;
		for (j = 0; j < q; j++)
			ASSERT_NE(ids[j], ids[q]);
	}
	for (q = 0; q < v->nq; q++) {
		vw.index = q;
		vw.worker_id = ~0u;
		ASSERT_EQ(0, ioctl(v->fd, VHOST_GET_VRING_WORKER, &vw));
		EXPECT_EQ(ids[q], vw.worker_id);
	}
	/* The default worker and one per queue, as threads of the owner. */
	EXPECT_LE((int)v->nq + 1, vhost_threads(tids, MAX_THREADS));

	hdrs = galloc(v, 0, HDR_SIZE * N * v->nq, 64);
	sts = galloc(v, 0, N * v->nq, 64);
	data = galloc(v, 1, (uint64_t)LEN * N * v->nq, 4096);
	buf = gpa_to_hva(v, data, (uint64_t)LEN * N * v->nq);
	fill_rand(buf, (size_t)LEN * N * v->nq, next_seed(c));
	for (q = 0; q < v->nq; q++) {
		for (i = 0; i < N; i++) {
			j = q * N + i;
			set_hdr(v, hdrs + HDR_SIZE * j, VIRTIO_BLK_T_OUT,
				BASE + (uint64_t)j * (LEN / SECTOR));
			sg[0] = (struct seg){ hdrs + HDR_SIZE * j, HDR_SIZE,
					      false };
			sg[1] = (struct seg){ data + (uint64_t)LEN * j, LEN,
					      false };
			sg[2] = (struct seg){ sts + j, 1, true };
			*gptr(v, sts + j) = 0xff;
			ASSERT_LE(0, vq_add(v, q, sg, 3, v->indirect, j));
		}
	}
	for (q = 0; q < v->nq; q++)
		vq_kick(v, q);
	while (done < N * v->nq) {
		ASSERT_TRUE(vmm_wait(v, (1u << v->nq) - 1, WAIT_MS))
			TH_LOG("%u of %u writes done", done, N * v->nq);
		for (q = 0; q < v->nq; q++) {
			while (vq_get_used(v, q, &u) == 1) {
				EXPECT_EQ(VIRTIO_BLK_S_OK,
					  *gptr(v, sts + u.tag));
				EXPECT_EQ(1, u.len);
				done++;
			}
		}
	}
	check_store(_metadata, c, BASE, buf, (size_t)LEN * N * v->nq);
}

/* Whether the dirty log has the bit of the 4 KiB page at gpa. */
static bool logged(const uint8_t *bitmap, uint64_t gpa)
{
	uint64_t page = gpa / 4096;

	return bitmap[page / 8] & (1 << (page % 8));
}

/* Logging on, as a VMM starts it for migration: log base, features, ring. */
static uint8_t *log_start(struct __test_metadata *_metadata, struct vmm *v,
			  size_t *size)
{
	const uint64_t pages = (REGION1_GPA + REGION_SIZE) / 4096;
	struct vhost_vring_addr a = { .index = 0 };
	uint64_t feat, logbase;
	uint8_t *bitmap;

	*size = pages / 8 + 8;
	bitmap = calloc(1, *size);
	ASSERT_NE(NULL, bitmap);
	logbase = (uintptr_t)bitmap;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_LOG_BASE, &logbase))
		TH_LOG("VHOST_SET_LOG_BASE: %s", strerror(errno));
	feat = v->features | (1ULL << VHOST_F_LOG_ALL);
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_FEATURES, &feat))
		TH_LOG("VHOST_SET_FEATURES with LOG_ALL: %s", strerror(errno));
	a.flags = 1 << VHOST_VRING_F_LOG;
	a.desc_user_addr = (uintptr_t)v->vq[0].desc;
	a.avail_user_addr = (uintptr_t)v->vq[0].avail;
	a.used_user_addr = (uintptr_t)v->vq[0].used;
	a.log_guest_addr = hva_to_gpa(v, v->vq[0].used);
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_ADDR, &a))
		TH_LOG("VHOST_SET_VRING_ADDR with logging: %s",
		       strerror(errno));
	return bitmap;
}

/*
 * Dirty logging for live migration (VHOST_F_LOG_ALL): a read marks the
 * pages the device wrote (data, status byte, used ring) in the log, and a
 * write marks the status and used pages but not the data it only read.
 */
TEST_F(vmm, dirty_log)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint64_t used = hva_to_gpa(v, v->vq[0].used), buf, other;
	uint8_t *bitmap;
	uint32_t len = 0;
	size_t size;

	bitmap = log_start(_metadata, v, &size);

	buf = galloc(v, 1, 8192, 4096);
	other = galloc(v, 1, 4096, 4096);
	memset(bitmap, 0, size);
	ASSERT_EQ(VIRTIO_BLK_S_OK,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_IN, 0, buf, 8192, 2, &len));
	EXPECT_EQ(8193, len);
	EXPECT_TRUE(logged(bitmap, buf));
	EXPECT_TRUE(logged(bitmap, buf + 4096));
	EXPECT_TRUE(logged(bitmap, c->st));
	EXPECT_TRUE(logged(bitmap, used));
	EXPECT_FALSE(logged(bitmap, other));

	memset(bitmap, 0, size);
	ASSERT_EQ(VIRTIO_BLK_S_OK,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 0, other, 4096, 1,
			 &len));
	EXPECT_FALSE(logged(bitmap, other));
	EXPECT_TRUE(logged(bitmap, c->st));
	EXPECT_TRUE(logged(bitmap, used));
	free(bitmap);
}

/*
 * What the device writes where the request fails or writes less than its
 * buffers hold is logged too: the status byte (the last writable byte,
 * here on a page of its own) of a read past the end, of a read of the
 * wrong direction and of a GET_ID into a larger buffer, and the data
 * GET_ID wrote.  The used length never counts bytes the device did not
 * write from the start of the writable buffers (virtio 1.2, 2.7.8).
 */
TEST_F(vmm, dirty_log_errors)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint64_t buf, st, hdr;
	struct seg s[3];
	uint8_t *bitmap;
	size_t size;
	uint32_t len;

	buf = galloc(v, 1, 8192, 4096);
	st = galloc(v, 1, 4096, 4096);
	hdr = galloc(v, 0, 4096, 4096);
	bitmap = log_start(_metadata, v, &size);

	/* A read past the end: IOERR, nothing written but the status. */
	memset(bitmap, 0, size);
	set_hdr(v, hdr, VIRTIO_BLK_T_IN, c->cap);
	s[0] = (struct seg){ hdr, HDR_SIZE, false };
	s[1] = (struct seg){ buf, 4096, true };
	s[2] = (struct seg){ st, 1, true };
	*gptr(v, st) = 0xff;
	len = run_req(_metadata, v, 0, s, 3);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, *gptr(v, st));
	EXPECT_EQ(0, len);
	EXPECT_TRUE(logged(bitmap, st));

	/* GET_ID into 8 KiB: 20 bytes and the status written. */
	memset(bitmap, 0, size);
	set_hdr(v, hdr, VIRTIO_BLK_T_GET_ID, 0);
	s[1] = (struct seg){ buf, 8192, true };
	*gptr(v, st) = 0xff;
	len = run_req(_metadata, v, 0, s, 3);
	EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, st));
	EXPECT_EQ(VIRTIO_BLK_ID_BYTES, len);
	EXPECT_TRUE(logged(bitmap, buf));
	EXPECT_TRUE(logged(bitmap, st));

	/* A write with a writable data buffer: IOERR, only the status. */
	memset(bitmap, 0, size);
	set_hdr(v, hdr, VIRTIO_BLK_T_OUT, 0);
	s[1] = (struct seg){ buf, 4096, true };
	*gptr(v, st) = 0xff;
	len = run_req(_metadata, v, 0, s, 3);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, *gptr(v, st));
	EXPECT_EQ(0, len);
	EXPECT_TRUE(logged(bitmap, st));
	free(bitmap);
}

/*
 * Logging switched on while reads are in flight: every read that was not
 * answered when VHOST_SET_FEATURES returned has its data and status pages
 * in the log (the device lets the requests it took end first).
 */
TEST_F(vmm, dirty_log_in_flight)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	enum { N = 48, LEN = 16384 };
	uint64_t hdrs, sts, data;
	unsigned int i, round, late = 0, missed = 0, done;
	bool answered[N];
	struct used u;
	struct seg s[3];
	uint8_t *bitmap = NULL;
	size_t size;

	/* Unpolled: the requests wait for their completions. */
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 0));
	hdrs = galloc(v, 0, HDR_SIZE * N, 64);
	sts = galloc(v, 1, 4096ULL * N, 4096);
	data = galloc(v, 1, (uint64_t)LEN * N, 4096);
	for (round = 0; round < 4; round++) {
		struct vhost_vring_addr a = { .index = 0 };
		uint64_t feat = v->features;

		/* Logging off again, for the next round. */
		a.desc_user_addr = (uintptr_t)v->vq[0].desc;
		a.avail_user_addr = (uintptr_t)v->vq[0].avail;
		a.used_user_addr = (uintptr_t)v->vq[0].used;
		ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_ADDR, &a));
		ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_FEATURES, &feat));
		free(bitmap);

		for (i = 0; i < N; i++) {
			set_hdr(v, hdrs + HDR_SIZE * i, VIRTIO_BLK_T_IN,
				(uint64_t)i * (LEN / SECTOR));
			*gptr(v, sts + 4096ULL * i) = 0xff;
			s[0] = (struct seg){ hdrs + HDR_SIZE * i, HDR_SIZE,
					     false };
			s[1] = (struct seg){ data + (uint64_t)LEN * i, LEN,
					     true };
			s[2] = (struct seg){ sts + 4096ULL * i, 1, true };
			ASSERT_LE(0, vq_add(v, 0, s, 3, v->indirect, i));
			answered[i] = false;
		}
		vq_kick(v, 0);
		bitmap = log_start(_metadata, v, &size);
		ASSERT_NE(NULL, bitmap);
		/* What was answered before logging started. */
		for (i = 0; i < N; i++)
			answered[i] = *gptr(v, sts + 4096ULL * i) != 0xff;
		done = 0;
		while (done < N) {
			ASSERT_TRUE(vmm_wait(v, 1, WAIT_MS));
			while (vq_get_used(v, 0, &u) == 1) {
				done++;
				EXPECT_EQ(VIRTIO_BLK_S_OK,
					  *gptr(v, sts + 4096ULL * u.tag));
				if (answered[u.tag])
					continue;
				late++;
				if (!logged(bitmap, sts + 4096ULL * u.tag) ||
				    !logged(bitmap, data + (uint64_t)LEN * u.tag))
					missed++;
			}
		}
	}
	TH_LOG("%u of %u reads answered after logging started", late, 4 * N);
	EXPECT_EQ(0, missed) TH_LOG("%u of them not logged", missed);
	free(bitmap);
}

/*
 * Discard and write zeroes are served only when negotiated (QEMU's
 * discard=off, write-zeroes=off): UNSUPP otherwise, the data untouched.
 * With VIRTIO_BLK_F_RO negotiated, writes fail with IOERR.
 */
TEST_F(vmm, unnegotiated_commands)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint64_t sector = DZ_SECTOR + 16, offered = 0, feat;
	uint32_t num = 32, flags = 0, len;
	uint8_t expect[DZ_LEN * SECTOR];
	uint64_t buf;

	dz_prefill(_metadata, c, expect);
	feat = v->features & ~((1ULL << VIRTIO_BLK_F_DISCARD) |
			       (1ULL << VIRTIO_BLK_F_WRITE_ZEROES));
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_FEATURES, &feat));
	EXPECT_EQ(VIRTIO_BLK_S_UNSUPP,
		  blk_dwz(_metadata, c, VIRTIO_BLK_T_DISCARD, &sector, &num,
			  &flags, 1));
	EXPECT_EQ(VIRTIO_BLK_S_UNSUPP,
		  blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, &sector,
			  &num, &flags, 1));
	flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
	EXPECT_EQ(VIRTIO_BLK_S_UNSUPP,
		  blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, &sector,
			  &num, &flags, 1));
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));

	ASSERT_EQ(0, ioctl(v->fd, VHOST_GET_FEATURES, &offered));
	if (!(offered & (1ULL << VIRTIO_BLK_F_RO)))
		return;
	feat = v->features | (1ULL << VIRTIO_BLK_F_RO);
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_FEATURES, &feat));
	buf = galloc(v, 1, 4096, 4096);
	memset(gpa_to_hva(v, buf, 4096), 0x5a, 4096);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, DZ_SECTOR, buf, 4096,
			 1, &len));
	flags = 0;
	EXPECT_EQ(VIRTIO_BLK_S_IOERR,
		  blk_dwz(_metadata, c, VIRTIO_BLK_T_WRITE_ZEROES, &sector,
			  &num, &flags, 1));
	check_both(_metadata, c, DZ_SECTOR, expect, sizeof(expect));
	feat = v->features;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_FEATURES, &feat));
	check_alive(_metadata, c);
}

/*
 * A read or write carries at most 1024 segments of VHOST_BLK_SIZE_MAX:
 * one of more (65 aliased 16 MiB buffers over a 2 GiB sparse file) fails
 * at once with IOERR and writes nothing into the guest.
 */
TEST_F(vmm, oversized_request)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	enum { NSEG = 65 };
	struct seg s[NSEG + 2];
	char path[PATH_MAX];
	const char *dir;
	uint64_t hdr, st;
	int fd, i;

	if (c->be.bdev)
		SKIP(return, "a file backend test");
	dir = getenv("VBP_TEST_DIR");
	snprintf(path, sizeof(path), "%s/vhost_blk_big.XXXXXX",
		 dir && *dir ? dir : "/tmp");
	fd = mkostemp(path, O_CLOEXEC);
	ASSERT_LE(0, fd);
	unlink(path);
	ASSERT_EQ(0, ftruncate(fd, 2ULL << 30));
	ASSERT_EQ(0, vmm_set_backend(v, fd));

	hdr = galloc(v, 0, HDR_SIZE, 64);
	st = galloc(v, 0, 1, 64);
	set_hdr(v, hdr, VIRTIO_BLK_T_IN, 0);
	s[0] = (struct seg){ hdr, HDR_SIZE, false };
	for (i = 0; i < NSEG; i++)
		s[i + 1] = (struct seg){ REGION1_GPA, REGION_SIZE, true };
	s[NSEG + 1] = (struct seg){ st, 1, true };
	memset(gptr(v, REGION1_GPA), 0x77, 4096);
	*gptr(v, st) = 0xff;
	run_req(_metadata, v, 0, s, NSEG + 2);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, *gptr(v, st));
	EXPECT_EQ(0x77, *gptr(v, REGION1_GPA));
	ASSERT_EQ(0, vmm_set_backend(v, c->be.fd));
	close(fd);
	check_alive(_metadata, c);
}

/*
 * A file opened for appending is refused as a backend: the guest writes
 * anywhere, and O_APPEND is how a chattr +a file is opened for writing.
 */
TEST_F(vmm, append_only_refused)
{
	struct ctx *c = &self->c;
	char path[PATH_MAX];
	int fd;

	if (c->be.bdev)
		SKIP(return, "a file backend test");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", c->be.fd);
	fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC);
	ASSERT_LE(0, fd);
	EXPECT_EQ(-EINVAL, vmm_set_backend(&c->v, fd));
	close(fd);
	check_alive(_metadata, c);
}

/*
 * Reads and writes go through the VFS's checks and notifications, as
 * read(2) and write(2) do: a watcher of the backing file sees the guest's
 * write (IN_MODIFY) and read (IN_ACCESS).
 */
TEST_F(vmm, backend_notified)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	char path[PATH_MAX], ev[4096];
	uint32_t mask = 0;
	uint64_t buf;
	ssize_t n, off;
	int in;

	if (c->be.bdev)
		SKIP(return, "a file backend test");
	in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	ASSERT_LE(0, in);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", c->be.fd);
	ASSERT_LE(0, inotify_add_watch(in, path, IN_MODIFY | IN_ACCESS));
	buf = galloc(v, 1, 4096, 4096);
	memset(gpa_to_hva(v, buf, 4096), 0x3c, 4096);
	ASSERT_EQ(VIRTIO_BLK_S_OK,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 64, buf, 4096, 1,
			 NULL));
	ASSERT_EQ(VIRTIO_BLK_S_OK,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_IN, 64, buf, 4096, 1,
			 NULL));
	n = read(in, ev, sizeof(ev));
	for (off = 0; n > 0 && off < n;) {
		struct inotify_event *e = (struct inotify_event *)(ev + off);

		mask |= e->mask;
		off += sizeof(*e) + e->len;
	}
	close(in);
	EXPECT_TRUE(mask & IN_MODIFY) TH_LOG("no IN_MODIFY for the write");
	EXPECT_TRUE(mask & IN_ACCESS) TH_LOG("no IN_ACCESS for the read");
}

/* One request of many in flight at once (xreq_run()). */
struct xreq {
	uint32_t type;
	uint64_t sector;
	uint32_t len;		/* data bytes */
	uint64_t data, hdr, st;	/* guest memory of its parts */
	uint8_t status;		/* the answer */
	uint32_t used_len;
};

/*
 * Guest memory for n requests of up to len bytes each: r[i].data, .hdr and
 * .st.  The regions' space is used up by the tests, so keep n * len small.
 */
static void xreq_alloc(struct vmm *v, struct xreq *r, unsigned int n,
		       uint32_t len)
{
	uint64_t hdrs = galloc(v, 0, HDR_SIZE * n, 64);
	uint64_t sts = galloc(v, 0, n, 64);
	uint64_t data = galloc(v, 1, (uint64_t)len * n, 4096);
	unsigned int i;

	for (i = 0; i < n; i++) {
		r[i].hdr = hdrs + HDR_SIZE * i;
		r[i].st = sts + i;
		r[i].data = data + (uint64_t)len * i;
	}
}

/* Adds request r to queue q, tagged tag; the head or a negative errno. */
static int xreq_add(struct vmm *v, unsigned int q, struct xreq *r,
		    uint32_t tag)
{
	struct seg s[3];

	set_hdr(v, r->hdr, r->type, r->sector);
	*gptr(v, r->st) = 0xff;
	s[0] = (struct seg){ r->hdr, HDR_SIZE, false };
	s[1] = (struct seg){ r->data, r->len, r->type == VIRTIO_BLK_T_IN };
	s[2] = (struct seg){ r->st, 1, true };
	if (!r->len)
		s[1] = s[2];
	return vq_add(v, q, s, r->len ? 3 : 2, v->indirect, tag);
}

/*
 * Adds n requests to queue (round robin over the queues when it is
 * negative), kicks them all, and waits for every answer (false after
 * WAIT_MS without one).
 */
static bool xreq_run_on(struct __test_metadata *_metadata, struct ctx *c,
			struct xreq *r, unsigned int n, int queue)
{
	struct vmm *v = &c->v;
	unsigned int i, q, done = 0;
	struct used u;

	for (i = 0; i < n; i++) {
		q = queue < 0 ? i % v->nq : (unsigned int)queue;
		ASSERT_LE(0, xreq_add(v, q, &r[i], i));
	}
	for (q = 0; q < v->nq; q++)
		vq_kick(v, q);
	while (done < n) {
		if (!vmm_wait(v, (1u << v->nq) - 1, WAIT_MS))
			return false;
		for (q = 0; q < v->nq; q++) {
			while (vq_get_used(v, q, &u) == 1) {
				r[u.tag].status = *gptr(v, r[u.tag].st);
				r[u.tag].used_len = u.len;
				done++;
			}
		}
	}
	return true;
}

static bool xreq_run(struct __test_metadata *_metadata, struct ctx *c,
		     struct xreq *r, unsigned int n)
{
	return xreq_run_on(_metadata, c, r, n, -1);
}

/* A request of r for one 4 KiB page. */
static void xreq_page(struct xreq *r, uint32_t type, uint64_t sector)
{
	r->type = type;
	r->sector = sector;
	r->len = type == VIRTIO_BLK_T_FLUSH ? 0 : 4096;
}

/*
 * A backend whose sectors VBP_TEST_BAD_SECTOR to + VBP_TEST_BAD_COUNT - 1
 * (default 8) fail: of writes, then reads, all in flight at once in pieces
 * of one to 16 sectors around them, exactly the pieces that touch the bad
 * sectors fail, with IOERR; the others work, and what they wrote reads
 * back.  With VBP_TEST_BAD_WRITES set, only writes fail there.
 */
TEST_F(vmm, backend_io_errors)
{
	struct ctx *c = &self->c;
	const char *bad_env = getenv("VBP_TEST_BAD_SECTOR");
	const char *count_env = getenv("VBP_TEST_BAD_COUNT");
	const char *wo = getenv("VBP_TEST_BAD_WRITES");
	bool writes_only = wo && *wo;
	enum { MAXN = 64, PIECE = 16 * SECTOR };
	struct xreq r[MAXN];
	uint8_t *expect[MAXN];
	uint64_t bad, nbad, sector, end;
	unsigned int i, n = 0, nfail = 0;
	bool hit;

	if (!bad_env || !c->be.bdev)
		SKIP(return, "VBP_TEST_BAD_SECTOR names no failing sector");
	bad = strtoull(bad_env, NULL, 0);
	nbad = count_env ? strtoull(count_env, NULL, 0) : 8;
	ASSERT_LE(64, bad);
	sector = bad - 64;
	end = bad + nbad + 64;
	xreq_alloc(&c->v, r, MAXN, PIECE);
	while (sector < end && n < MAXN) {
		r[n].sector = sector;
		r[n].len = SECTOR * (1 + next_seed(c) % 16);
		if (sector + r[n].len / SECTOR > end)
			r[n].len = (end - sector) * SECTOR;
		sector += r[n].len / SECTOR;
		r[n].type = VIRTIO_BLK_T_OUT;
		expect[n] = malloc(r[n].len);
		ASSERT_NE(NULL, expect[n]);
		fill_rand(expect[n], r[n].len, next_seed(c));
		memcpy(gpa_to_hva(&c->v, r[n].data, r[n].len), expect[n],
		       r[n].len);
		n++;
	}
	ASSERT_TRUE(xreq_run(_metadata, c, r, n)) TH_LOG("writes not answered");
	for (i = 0; i < n; i++) {
		hit = r[i].sector < bad + nbad &&
		      r[i].sector + r[i].len / SECTOR > bad;
		EXPECT_EQ(hit ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK,
			  r[i].status)
			TH_LOG("write of sectors %llu+%u",
			       (unsigned long long)r[i].sector,
			       r[i].len / SECTOR);
		nfail += hit;
		r[i].type = VIRTIO_BLK_T_IN;
		memset(gpa_to_hva(&c->v, r[i].data, r[i].len), 0, r[i].len);
	}
	ASSERT_TRUE(xreq_run(_metadata, c, r, n)) TH_LOG("reads not answered");
	for (i = 0; i < n; i++) {
		hit = r[i].sector < bad + nbad &&
		      r[i].sector + r[i].len / SECTOR > bad;
		EXPECT_EQ(hit && !writes_only ? VIRTIO_BLK_S_IOERR :
			  VIRTIO_BLK_S_OK, r[i].status)
			TH_LOG("read of sectors %llu+%u",
			       (unsigned long long)r[i].sector,
			       r[i].len / SECTOR);
		if (!hit)
			EXPECT_EQ(0, memcmp(expect[i],
					    gpa_to_hva(&c->v, r[i].data,
						       r[i].len), r[i].len))
				TH_LOG("sectors %llu+%u read back wrong",
				       (unsigned long long)r[i].sector,
				       r[i].len / SECTOR);
		free(expect[i]);
	}
	TH_LOG("%u requests of each kind, %u touching the bad sectors", n,
	       nfail);
	check_alive(_metadata, c);
}

/* Writes val to the file at path (sysfs, configfs, tracefs): 0 or -1. */
static int write_str(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, val, strlen(val));
	close(fd);
	return n == (ssize_t)strlen(val) ? 0 : -1;
}

/* Sets attribute name of a fault injection directory (configfs). */
static int fault_set(const char *dir, const char *name, long value)
{
	char path[PATH_MAX], val[32];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	snprintf(val, sizeof(val), "%ld", value);
	return write_str(path, val);
}

/* Reads the number in attribute name of a sysfs or configfs directory, or -1. */
static long fault_get(const char *dir, const char *name)
{
	char path[PATH_MAX];
	long value = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &value) != 1)
		value = -1;
	fclose(f);
	return value;
}

/*
 * Arms the fault injection directory dir: each request fails with
 * probability percent, at most times in all, quietly.
 */
static void fault_arm(struct __test_metadata *_metadata, const char *dir,
		      long probability, long times)
{
	ASSERT_EQ(0, fault_set(dir, "verbose", 0));
	ASSERT_EQ(0, fault_set(dir, "interval", 1));
	ASSERT_EQ(0, fault_set(dir, "times", times));
	ASSERT_EQ(0, fault_set(dir, "probability", probability))
		TH_LOG("cannot arm %s", dir);
}

/* Where the fault injection tests write: 32 pages, 16 sectors apart. */
#define FI_SECTOR	28672
#define FI_REQS		32

/*
 * Writes of FI_REQS pages, apart so that none merges, all in flight on
 * the notification-driven rings; what each should read back in expect.
 */
static void fi_writes(struct __test_metadata *_metadata, struct ctx *c,
		      struct xreq *r, uint8_t (*expect)[4096])
{
	unsigned int i;

	for (i = 0; i < FI_REQS; i++) {
		xreq_page(&r[i], VIRTIO_BLK_T_OUT, FI_SECTOR + 16 * i);
		fill_rand(expect[i], 4096, next_seed(c));
		memcpy(gpa_to_hva(&c->v, r[i].data, 4096), expect[i], 4096);
	}
	ASSERT_TRUE(xreq_run(_metadata, c, r, FI_REQS))
		TH_LOG("writes not answered");
}

/*
 * The backend loses requests, which the block layer then times out:
 * null_blk's timeout fault injection (VBP_TEST_TIMEOUT_INJECT, its
 * configfs directory; the device's io_timeout set short), armed for 5 of
 * 32 writes in flight.  Exactly 5 fail, with IOERR, once timed out; the
 * others work and read back, and so does every request after them.
 */
TEST_F_TIMEOUT(vmm, backend_timeouts, 300)
{
	const char *dir = getenv("VBP_TEST_TIMEOUT_INJECT");
	struct ctx *c = &self->c;
	uint8_t (*expect)[4096];
	struct xreq r[FI_REQS];
	unsigned int i, q, failed = 0;
	enum { LOST = 5 };

	if (!dir || !c->be.bdev)
		SKIP(return, "VBP_TEST_TIMEOUT_INJECT names no fault injection");
	expect = calloc(FI_REQS, sizeof(*expect));
	ASSERT_NE(NULL, expect);
	for (q = 0; q < c->v.nq; q++)
		ASSERT_EQ(0, vmm_set_poll_us(&c->v, q, 0));
	xreq_alloc(&c->v, r, FI_REQS, 4096);
	fault_arm(_metadata, dir, 100, LOST);
	fi_writes(_metadata, c, r, expect);
	EXPECT_EQ(0, fault_get(dir, "times"));
	ASSERT_EQ(0, fault_set(dir, "probability", 0));
	for (i = 0; i < FI_REQS; i++) {
		EXPECT_GE(VIRTIO_BLK_S_IOERR, r[i].status);
		if (r[i].status != VIRTIO_BLK_S_OK)
			failed++;
		else
			check_store(_metadata, c, r[i].sector, expect[i], 4096);
		r[i].type = VIRTIO_BLK_T_IN;
	}
	EXPECT_EQ(LOST, failed);
	ASSERT_TRUE(xreq_run(_metadata, c, r, FI_REQS))
		TH_LOG("reads not answered");
	for (i = 0; i < FI_REQS; i++)
		EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status) TH_LOG("read %u", i);
	TH_LOG("%u of %u writes lost by the backend failed with IOERR",
	       failed, FI_REQS);
	free(expect);
	check_alive(_metadata, c);
}

/*
 * The backend sends requests back to the block layer to be dispatched
 * again (null_blk's requeue fault injection, VBP_TEST_REQUEUE_INJECT: half
 * of the dispatches, either "busy" or a requeue), with the rings polling
 * the device and with notifications: every request works, and the data
 * reads back.
 */
TEST_F_TIMEOUT(vmm, backend_requeues, 300)
{
	const char *dir = getenv("VBP_TEST_REQUEUE_INJECT");
	struct ctx *c = &self->c;
	uint8_t (*expect)[4096];
	struct xreq r[FI_REQS];
	unsigned int i, q, mode;
	long injected = 0;
	enum { TIMES = 100000 };

	if (!dir || !c->be.bdev)
		SKIP(return, "VBP_TEST_REQUEUE_INJECT names no fault injection");
	expect = calloc(FI_REQS, sizeof(*expect));
	ASSERT_NE(NULL, expect);
	xreq_alloc(&c->v, r, FI_REQS, 4096);
	for (mode = 0; mode < 2; mode++) {
		for (q = 0; q < c->v.nq; q++)
			ASSERT_EQ(0, vmm_set_poll_us(&c->v, q, mode ? 100000 : 0));
		fault_arm(_metadata, dir, 50, TIMES);
		fi_writes(_metadata, c, r, expect);
		for (i = 0; i < FI_REQS; i++) {
			EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status)
				TH_LOG("write %u", i);
			r[i].type = VIRTIO_BLK_T_IN;
			memset(gpa_to_hva(&c->v, r[i].data, 4096), 0, 4096);
		}
		ASSERT_TRUE(xreq_run(_metadata, c, r, FI_REQS))
			TH_LOG("reads not answered");
		injected += TIMES - fault_get(dir, "times");
		ASSERT_EQ(0, fault_set(dir, "probability", 0));
		for (i = 0; i < FI_REQS; i++) {
			EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status)
				TH_LOG("read %u", i);
			EXPECT_EQ(0, memcmp(expect[i],
					    gpa_to_hva(&c->v, r[i].data, 4096),
					    4096))
				TH_LOG("read %u read back wrong", i);
		}
	}
	TH_LOG("%ld dispatches sent back, every request answered OK",
	       injected);
	EXPECT_LT(0, injected);
	free(expect);
	check_alive(_metadata, c);
}

/*
 * The backend disappears while attached (VBP_TEST_REMOVE, a shell command
 * that removes the block device): every request is still answered, those
 * after it with IOERR; the backend can be detached and the device closed.
 */
TEST_F_TIMEOUT(vmm, backend_removed, 120)
{
	struct ctx *c = &self->c;
	const char *cmd = getenv("VBP_TEST_REMOVE");
	enum { N = 32 };
	struct xreq r[N];
	unsigned int i, round, ok, failed = 0;

	if (!cmd || !c->be.bdev)
		SKIP(return, "VBP_TEST_REMOVE names no way to remove the device");
	xreq_alloc(&c->v, r, N, 4096);
	for (round = 0; round < 8; round++) {
		if (round == 3)
			ASSERT_EQ(0, system(cmd)) TH_LOG("%s failed", cmd);
		for (i = 0; i < N; i++) {
			r[i].type = (i + round) % 2 ? VIRTIO_BLK_T_IN :
						      VIRTIO_BLK_T_OUT;
			r[i].sector = 8 * (i + N * round);
			r[i].len = 4096;
		}
		ASSERT_TRUE(xreq_run(_metadata, c, r, N))
			TH_LOG("round %u: requests not answered", round);
		for (i = 0, ok = 0; i < N; i++) {
			ASSERT_GE(VIRTIO_BLK_S_IOERR, r[i].status);
			ok += r[i].status == VIRTIO_BLK_S_OK;
		}
		/* Before the removal all work, soon after it none does. */
		if (round < 3)
			ASSERT_EQ(N, ok);
		if (round >= 5)
			ASSERT_EQ(0, ok) TH_LOG("round %u: %u worked", round, ok);
		failed += N - ok;
	}
	TH_LOG("%u requests failed after the removal", failed);
	ASSERT_EQ(0, vmm_set_backend(&c->v, -1));
	ASSERT_EQ(0, close(c->v.fd));
	c->v.fd = -1;
}

/* Where the durability test's rounds write: 64 KiB each. */
#define DUR_BASE	40960
#define DUR_ROUNDS	128
#define DUR_LEN		(16 * SECTOR)
#define DUR_PIECES	8

struct freezer {
	char path[PATH_MAX];
	unsigned int rounds;
	long long max_us;
	int err;
};

/* Writes a queue attribute again and again: each write freezes the queue. */
static void *freezer_run(void *arg)
{
	struct freezer *f = arg;
	unsigned int i;
	int64_t t0;

	for (i = 0; i < f->rounds; i++) {
		t0 = now_us();
		if (write_str(f->path, i & 1 ? "128" : "256")) {
			f->err = errno;
			break;
		}
		if (now_us() - t0 > f->max_us)
			f->max_us = now_us() - t0;
	}
	return NULL;
}

/*
 * A write to a queue attribute of the backend in sysfs freezes its queue
 * (as udev and tuned do), and the freeze waits for the requests in flight,
 * the polled ones too.  A polling worker that slept in the block layer
 * (an unpolled submission once the frozen queue refused a polled one, a
 * flush) with polled requests outstanding would never poll them: the
 * freeze and the ring stalled until the block layer's timeout.  Writes and
 * flushes on a polling ring meanwhile are all answered OK, in time, and
 * every sysfs write ends well before that timeout (half of it: a slow,
 * debug or emulated kernel takes seconds for a freeze, a stall the whole
 * timeout).
 */
TEST_F_TIMEOUT(vmm, queue_freeze_while_polling, 300)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	enum { N = 32 };
	struct freezer f = { .rounds = 200 };
	struct xreq r[N];
	unsigned int i, batches = 0;
	char queue[PATH_MAX];
	long timeout_ms;
	const char *bdev;
	pthread_t th;
	void *ret;

	if (!c->be.bdev)
		SKIP(return, "needs a block device");
	bdev = strrchr(getenv("VBP_TEST_BDEV"), '/') + 1;
	snprintf(f.path, sizeof(f.path), "/sys/block/%s/queue/read_ahead_kb",
		 bdev);
	if (access(f.path, W_OK))
		SKIP(return, "%s has no writable read_ahead_kb", bdev);
	snprintf(queue, sizeof(queue), "/sys/block/%s/queue", bdev);
	timeout_ms = fault_get(queue, "io_timeout");
	if (timeout_ms <= 0)
		timeout_ms = 30000;
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 100000));
	xreq_alloc(v, r, N, 4096);
	ASSERT_EQ(0, pthread_create(&th, NULL, freezer_run, &f));
	do {
		for (i = 0; i < N; i++) {
			xreq_page(&r[i], i % 8 == 7 ? VIRTIO_BLK_T_FLUSH :
				  VIRTIO_BLK_T_OUT, 1024 + 8 * i);
			fill_rand(gptr(v, r[i].data), 4096, next_seed(c));
		}
		if (!xreq_run_on(_metadata, c, r, N, 0)) {
			pthread_join(th, &ret);
			ASSERT_TRUE(false) TH_LOG("batch %u: no answer within %d ms",
						  batches, WAIT_MS);
		}
		for (i = 0; i < N; i++)
			EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status)
				TH_LOG("batch %u request %u", batches, i);
		batches++;
	} while (pthread_tryjoin_np(th, &ret));
	TH_LOG("%u batches of %u requests, longest sysfs write %lld ms, timeout %ld ms",
	       batches, N, f.max_us / 1000, timeout_ms);
	EXPECT_EQ(0, f.err);
	EXPECT_GT(timeout_ms / 2, f.max_us / 1000);
	for (i = 0; i < N; i++) {
		if (r[i].type == VIRTIO_BLK_T_OUT)
			check_both(_metadata, c, r[i].sector, gptr(v, r[i].data),
				   4096);
	}
}

static uint64_t dur_seed(uint64_t base, unsigned int round, unsigned int k)
{
	return mix64(base ^ ((uint64_t)round << 16) ^ k);
}

/* The child: rounds of writes and a flush, each reported once flushed. */
static void dur_child(struct __test_metadata *_metadata, struct ctx *c,
		      int report, uint64_t seed)
{
	struct xreq r[DUR_PIECES], fl;
	struct vmm *v = &c->v;
	unsigned int round, k;

	/* A VMM of its own: the parent's device belongs to the parent. */
	memset(v, 0, sizeof(*v));
	ASSERT_OK(vmm_open_kernel(v, false, true));
	ASSERT_OK(vmm_start(v, c->be.fd));
	xreq_alloc(v, r, DUR_PIECES, DUR_LEN);
	xreq_alloc(v, &fl, 1, SECTOR);
	for (round = 0; round < DUR_ROUNDS; round++) {
		for (k = 0; k < DUR_PIECES; k++) {
			r[k].type = VIRTIO_BLK_T_OUT;
			r[k].sector = DUR_BASE +
				      (round * DUR_PIECES + k) * DUR_LEN / SECTOR;
			r[k].len = DUR_LEN;
			fill_rand(gpa_to_hva(v, r[k].data, DUR_LEN), DUR_LEN,
				  dur_seed(seed, round, k));
		}
		if (!xreq_run(_metadata, c, r, DUR_PIECES))
			_exit(2);
		for (k = 0; k < DUR_PIECES; k++)
			if (r[k].status != VIRTIO_BLK_S_OK)
				_exit(3);
		fl = (struct xreq){ .type = VIRTIO_BLK_T_FLUSH, .hdr = fl.hdr,
				    .st = fl.st, .data = fl.data };
		if (!xreq_run(_metadata, c, &fl, 1) ||
		    fl.status != VIRTIO_BLK_S_OK)
			_exit(4);
		if (write(report, &round, sizeof(round)) != sizeof(round))
			_exit(5);
	}
	_exit(0);
}

/*
 * Durability: a VMM (a child process with its own device) writes rounds of
 * data and flushes after each, and is killed with SIGKILL in the middle of
 * a round.  Every round acknowledged before a completed flush is in the
 * store, read back through the store and through another device.
 */
TEST_F_TIMEOUT(vmm, durable_after_flush, 300)
{
	struct ctx *c = &self->c;
	uint64_t seed = next_seed(c), sector;
	unsigned int round, last = 0, kill_at, k, got = 0;
	uint8_t expect[DUR_LEN];
	int pipefd[2], status;
	pid_t pid;

	ASSERT_GE(c->cap, DUR_BASE + DUR_ROUNDS * DUR_PIECES * DUR_LEN / SECTOR);
	ASSERT_EQ(0, pipe(pipefd));
	kill_at = 3 + seed % 8;
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		close(pipefd[0]);
		dur_child(_metadata, c, pipefd[1], seed);
	}
	close(pipefd[1]);
	while (got <= kill_at &&
	       read(pipefd[0], &round, sizeof(round)) == sizeof(round)) {
		last = round;
		got++;
	}
	ASSERT_LT(kill_at, got) TH_LOG("the VMM died after %u rounds", got);
	/* Mid-round: the next round's writes are in flight. */
	usleep(seed % 3000);
	ASSERT_EQ(0, kill(pid, SIGKILL));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
		TH_LOG("the VMM ended by itself, status %#x", status);
	/* Rounds reported before it died are acknowledged too. */
	while (read(pipefd[0], &round, sizeof(round)) == sizeof(round))
		last = round;
	close(pipefd[0]);

	for (round = 0; round <= last; round++) {
		for (k = 0; k < DUR_PIECES; k++) {
			sector = DUR_BASE +
				 (round * DUR_PIECES + k) * DUR_LEN / SECTOR;
			fill_rand(expect, DUR_LEN, dur_seed(seed, round, k));
			check_store(_metadata, c, sector, expect, DUR_LEN);
			check_dev(_metadata, c, sector, expect, DUR_LEN);
		}
	}
	TH_LOG("killed in round %u: rounds 0-%u read back", last + 1, last);
	check_alive(_metadata, c);
}

/*
 * Requests behind a slow flush on their ring.  The backend takes
 * VBP_TEST_FLUSH_MS over each flush and no time over reads and writes (a
 * dm-delay target that delays only its flush class, or a file system on
 * one).  After a write, a flush goes on ring 0 and, once it is seen to be
 * in the device, reads and writes follow it on the same ring: they are all
 * answered while the flush is still there, then the flush is answered,
 * OK.  The outcome does not depend on timing: the flush lasts seconds, the
 * requests behind it take milliseconds, and only the order of the answers
 * is checked.
 */
#define HOL_SECTOR	12288
#define HOL_READS	8
#define HOL_WRITES	4
#define HOL_REQS	(1 + HOL_READS + HOL_WRITES)	/* the flush first */
/* How long the flush is watched alone. */
#define HOL_ALONE_MS	100

static void reads_pass_slow_flush(struct __test_metadata *_metadata,
				  struct ctx *c, unsigned int poll_us)
{
	const char *ms_env = getenv("VBP_TEST_FLUSH_MS");
	struct vmm *v = &c->v;
	struct xreq r[HOL_REQS] = { 0 };
	uint64_t seed[HOL_REQS];
	int64_t t0, t1, flush_us = -1, others_us = 0;
	unsigned int i, flush_ms, done = 0, before = 0;
	uint8_t expect[4096];
	struct used u;
	int got;

	if (!ms_env || !*ms_env)
		SKIP(return, "VBP_TEST_FLUSH_MS: the backend delays no flush");
	flush_ms = strtoul(ms_env, NULL, 10);
	ASSERT_LE(4 * HOL_ALONE_MS, flush_ms)
		TH_LOG("VBP_TEST_FLUSH_MS=%s: too short to watch", ms_env);
	ASSERT_OK(vmm_set_poll_us(v, 0, poll_us));

	xreq_alloc(v, r, HOL_REQS, 4096);
	xreq_page(&r[0], VIRTIO_BLK_T_FLUSH, 0);
	for (i = 1; i < HOL_REQS; i++) {
		seed[i] = next_seed(c);
		fill_rand(expect, sizeof(expect), seed[i]);
		if (i <= HOL_READS) {
			xreq_page(&r[i], VIRTIO_BLK_T_IN, HOL_SECTOR + 8 * i);
			store_write(_metadata, c, r[i].sector, expect,
				    sizeof(expect));
			memset(gpa_to_hva(v, r[i].data, 4096), 0xa5, 4096);
		} else {
			xreq_page(&r[i], VIRTIO_BLK_T_OUT, HOL_SECTOR + 8 * i);
			memcpy(gpa_to_hva(v, r[i].data, 4096), expect, 4096);
		}
	}
	/* Something for the flush to make durable. */
	check_alive(_metadata, c);

	ASSERT_LE(0, xreq_add(v, 0, &r[0], 0));
	vq_kick(v, 0);
	t0 = now_us();
	ASSERT_FALSE(vq_spin(&v->vq[0], HOL_ALONE_MS))
		TH_LOG("the flush was answered within %d ms: not delayed by %u ms",
		       HOL_ALONE_MS, flush_ms);
	for (i = 1; i < HOL_REQS; i++)
		ASSERT_LE(0, xreq_add(v, 0, &r[i], i));
	vq_kick(v, 0);
	t1 = now_us();

	while (done < HOL_REQS && vmm_wait(v, 1, flush_ms + WAIT_MS)) {
		while ((got = vq_get_used(v, 0, &u)) == 1) {
			ASSERT_GT(HOL_REQS, u.tag);
			r[u.tag].status = *gptr(v, r[u.tag].st);
			r[u.tag].used_len = u.len;
			if (!u.tag) {
				flush_us = now_us() - t0;
				before = done;
			} else {
				others_us = now_us() - t1;
			}
			done++;
		}
		ASSERT_EQ(0, got) TH_LOG("used entry with a bad head");
	}
	ASSERT_EQ(HOL_REQS, done)
		TH_LOG("%u of %u requests answered within %u ms", done,
		       HOL_REQS, flush_ms + WAIT_MS);
	ASSERT_EQ(HOL_REQS - 1, before)
		TH_LOG("%u of the %u requests behind the flush waited for it (%lld ms)",
		       HOL_REQS - 1 - before, HOL_REQS - 1,
		       (long long)flush_us / 1000);
	TH_LOG("%u reads and %u writes answered %lld ms after their kick, the flush after %lld ms",
	       HOL_READS, HOL_WRITES, (long long)others_us / 1000,
	       (long long)flush_us / 1000);
	EXPECT_EQ(VIRTIO_BLK_S_OK, r[0].status);
	EXPECT_EQ(1, r[0].used_len);
	/* That the backend delays flushes as the caller says. */
	EXPECT_LE(flush_ms * 1000LL / 2, flush_us)
		TH_LOG("the flush took %lld ms, not about VBP_TEST_FLUSH_MS=%u",
		       (long long)flush_us / 1000, flush_ms);

	for (i = 1; i < HOL_REQS; i++) {
		fill_rand(expect, sizeof(expect), seed[i]);
		ASSERT_EQ(VIRTIO_BLK_S_OK, r[i].status)
			TH_LOG("request %u, type %u", i, r[i].type);
		if (r[i].type == VIRTIO_BLK_T_OUT) {
			EXPECT_EQ(1, r[i].used_len);
			check_store(_metadata, c, r[i].sector, expect,
				    sizeof(expect));
			continue;
		}
		EXPECT_EQ(4097, r[i].used_len);
		ASSERT_EQ(-1, first_diff(expect, gpa_to_hva(v, r[i].data, 4096),
					 4096))
			TH_LOG("read %u: not the data at sector %llu", i,
			       (unsigned long long)r[i].sector);
	}
	check_alive(_metadata, c);
}

/* The ring polls: a budget far longer than the gaps between requests. */
TEST_F_TIMEOUT(vmm, reads_pass_slow_flush_polling, 120)
{
	reads_pass_slow_flush(_metadata, &self->c, 1500000);
}

/* No poll budget: the reads and writes are kicked, the answers signalled. */
TEST_F_TIMEOUT(vmm, reads_pass_slow_flush_notified, 120)
{
	reads_pass_slow_flush(_metadata, &self->c, 0);
}

/*
 * VHOST_RESET_OWNER with hundreds of writes just kicked: it waits for
 * them, and the device is set up again and works.
 */
TEST_F_TIMEOUT(vmm, reset_in_flight, 60)
{
	enum { N = 200 };
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	unsigned int i, q, tries, added = 0;
	uint64_t hdrs, sts, data;
	struct seg sg[3];

	hdrs = galloc(v, 0, HDR_SIZE * N, 64);
	sts = galloc(v, 0, N, 64);
	data = galloc(v, 1, 4096ULL * N, 4096);
	for (i = 0, q = 0; i < N; i++) {
		set_hdr(v, hdrs + HDR_SIZE * i, VIRTIO_BLK_T_OUT, 8192 + 8 * i);
		sg[0] = (struct seg){ hdrs + HDR_SIZE * i, HDR_SIZE, false };
		sg[1] = (struct seg){ data + 4096ULL * i, 4096, false };
		sg[2] = (struct seg){ sts + i, 1, true };
		for (tries = 0; tries < v->nq; tries++, q = (q + 1) % v->nq)
			if (vq_add(v, q, sg, 3, v->indirect, i) >= 0)
				break;
		if (tries == v->nq)
			break;
		q = (q + 1) % v->nq;
		added++;
	}
	for (q = 0; q < v->nq; q++)
		vq_kick(v, q);
	TH_LOG("reset with %u writes kicked", added);
	reset_and_check(_metadata, c);
}

/*
 * A backend replaced while the rings are stopped (VHOST_GET_VRING_BASE on
 * each): the next requests go to the new one, the old one is left alone.
 */
TEST_F(vmm, backend_replaced_while_stopped)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vhost_vring_state s;
	uint8_t old_data[4096], new_data[4096], got[4096];
	char path[PATH_MAX];
	const char *dir = getenv("VBP_TEST_DIR");
	uint64_t buf;
	unsigned int q;
	int nfd, ret;

	buf = galloc(v, 0, 4096, 4096);
	fill_rand(old_data, sizeof(old_data), next_seed(c));
	store_write(_metadata, c, 100, old_data, sizeof(old_data));

	snprintf(path, sizeof(path), "%s/vhost_blk_new.XXXXXX",
		 dir && *dir ? dir : "/tmp");
	nfd = mkostemp(path, O_CLOEXEC);
	ASSERT_LE(0, nfd);
	unlink(path);
	ASSERT_EQ(0, ftruncate(nfd, FILE_SIZE));
	fill_rand(new_data, sizeof(new_data), next_seed(c));
	ASSERT_EQ(sizeof(new_data), pwrite(nfd, new_data, sizeof(new_data),
					   100 * SECTOR));

	for (q = 0; q < v->nq; q++) {
		s.index = q;
		ASSERT_EQ(0, ioctl(v->fd, VHOST_GET_VRING_BASE, &s));
	}
	ret = vmm_set_backend(v, nfd);
	ASSERT_EQ(0, ret) TH_LOG("SET_BACKEND: %s", strerror(-ret));

	ASSERT_EQ(VIRTIO_BLK_S_OK,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_IN, 100, buf, 4096, 1,
			 NULL));
	EXPECT_EQ(-1, first_diff(new_data, gpa_to_hva(v, buf, 4096), 4096));
	/* A write lands in the new file only. */
	ASSERT_EQ(VIRTIO_BLK_S_OK,
		  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 200, buf, 4096, 1,
			 NULL));
	ASSERT_EQ(sizeof(got), pread(nfd, got, sizeof(got), 200 * SECTOR));
	EXPECT_EQ(-1, first_diff(new_data, got, sizeof(got)));
	check_store(_metadata, c, 100, old_data, sizeof(old_data));
	close(nfd);
}

/* ------------------------------------------------------------------ */
/* Polling workers, pinning, counters                                   */
/* ------------------------------------------------------------------ */

/* A 4 KiB write of queue q at sector, added and published but not kicked. */
static int add_write(struct ctx *c, unsigned int q, uint64_t sector,
		     uint64_t data)
{
	struct vmm *v = &c->v;
	struct seg sg[3] = {
		{ c->hdr, HDR_SIZE, false },
		{ data, 4096, false },
		{ c->st, 1, true },
	};

	set_hdr(v, c->hdr, VIRTIO_BLK_T_OUT, sector);
	*gptr(v, c->st) = 0xff;
	return vq_add(v, q, sg, 3, v->indirect, 0);
}

/*
 * A polling vring serves requests the guest never kicks for: after one
 * kick, 50 requests made available one after the other all complete, the
 * device asks for no kicks while it polls, and the module counts one kick.
 * Once the budget is spent without work, it asks for kicks again.
 */
TEST_F(vmm, polling_serves_without_kicks)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq *vq = &v->vq[0];
	struct vq_stats st0, st1;
	uint64_t data;
	struct used u;
	unsigned int i;
	bool kicked;

	data = galloc(v, 1, 4096, 4096);
	fill_rand(gpa_to_hva(v, data, 4096), 4096, next_seed(c));
	/*
	 * A budget far longer than the gap between two requests, even on a
	 * loaded machine under software emulation.
	 */
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 1500000));
	ASSERT_EQ(0, vmm_read_stats(v, 0, &st0))
		TH_LOG("no statistics in debugfs");
	EXPECT_EQ(1500000, st0.poll_us);

	ASSERT_LE(0, add_write(c, 0, 300, data));
	/*
	 * No kick is owed if the ring still polls after check_alive() (its
	 * worker may have yielded and come back with the new budget).
	 */
	kicked = vq_kick(v, 0);
	ASSERT_TRUE(vq_spin(vq, WAIT_MS));
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
	for (i = 0; i < 50; i++) {
		if (!v->event_idx)
			EXPECT_TRUE(le16toh(vq->used->flags) &
				    VRING_USED_F_NO_NOTIFY)
				TH_LOG("request %u: the device asks for kicks",
				       i);
		ASSERT_LE(0, add_write(c, 0, 300 + 8 * i, data));
		vq_publish(vq);
		ASSERT_TRUE(vq_spin(vq, WAIT_MS))
			TH_LOG("request %u not served without a kick", i);
		ASSERT_EQ(1, vq_get_used(v, 0, &u));
		EXPECT_EQ(VIRTIO_BLK_S_OK, *gptr(v, c->st));
	}
	ASSERT_EQ(0, vmm_read_stats(v, 0, &st1));
	EXPECT_EQ(kicked, st1.kicks - st0.kicks);
	EXPECT_EQ(51, st1.requests - st0.requests);
	EXPECT_LT(0, st1.busy - st0.busy);

	/* Budget spent: notifications are wanted again, and work. */
	usleep(2500000);
	if (!v->event_idx)
		EXPECT_FALSE(le16toh(vq->used->flags) & VRING_USED_F_NO_NOTIFY);
	check_alive(_metadata, c);
}

/* CPU time (user + system, in clock ticks) of the vhost worker threads. */
static long long vhost_threads_ticks(void)
{
	char path[PATH_MAX], buf[1024], *p;
	unsigned long long ut, st;
	pid_t tids[MAX_THREADS];
	long long sum = 0;
	int i, n;
	FILE *f;

	n = vhost_threads(tids, MAX_THREADS);
	if (n < 0)
		return -1;
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "/proc/self/task/%d/stat",
			 tids[i]);
		f = fopen(path, "r");
		if (!f)
			continue;
		p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
		fclose(f);
		/* Fields 14 and 15, counted after the comm. */
		if (p && sscanf(p + 2,
				"%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
				&ut, &st) == 2)
			sum += ut + st;
	}
	return sum;
}

/*
 * Under load, a polled ring whose guest asks for no interrupts takes no
 * kick and sends no signal: 256 requests made available in bursts are all
 * served.  Once idle, the worker stops using CPU time within its budget.
 */
TEST_F(vmm, polled_load_no_notifications)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq *vq = &v->vq[0];
	struct vq_stats st0, st1;
	long long t0, t1;
	uint64_t data;
	unsigned int i, j;
	struct used u;

	data = galloc(v, 1, 4096, 4096);
	fill_rand(gpa_to_hva(v, data, 4096), 4096, next_seed(c));
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 1500000));
	/* No interrupts: the flag, or a used_event the ring never passes. */
	if (v->event_idx)
		__atomic_store_n(vq->used_event, htole16(vq->last_used - 1),
				 __ATOMIC_RELEASE);
	else
		vq->avail->flags = htole16(VRING_AVAIL_F_NO_INTERRUPT);
	ASSERT_LE(0, add_write(c, 0, 700, data));
	/* The ring may still poll from the fixture's check: no kick owed. */
	vq_kick(v, 0);
	ASSERT_TRUE(vq_spin(vq, WAIT_MS));
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
	ASSERT_EQ(0, vmm_read_stats(v, 0, &st0));

	/* The same write 256 times: header and status are shared. */
	set_hdr(v, c->hdr, VIRTIO_BLK_T_OUT, 700);
	for (i = 0; i < 16; i++) {
		for (j = 0; j < 16; j++) {
			struct seg sg[3] = {
				{ c->hdr, HDR_SIZE, false },
				{ data, 4096, false },
				{ c->st, 1, true },
			};

			ASSERT_LE(0, vq_add(v, 0, sg, 3, v->indirect, j));
		}
		vq_publish(vq);
		for (j = 0; j < 16; j++) {
			ASSERT_TRUE(vq_spin(vq, WAIT_MS))
				TH_LOG("burst %u: %u of 16 served", i, j);
			ASSERT_EQ(1, vq_get_used(v, 0, &u));
		}
	}
	ASSERT_EQ(0, vmm_read_stats(v, 0, &st1));
	EXPECT_EQ(256, st1.requests - st0.requests);
	EXPECT_EQ(0, st1.kicks - st0.kicks);
	EXPECT_EQ(0, st1.signals - st0.signals);

	/* 1.5 s of budget, then sleep: no CPU time from then on. */
	usleep(2500000);
	t0 = vhost_threads_ticks();
	usleep(1000000);
	t1 = vhost_threads_ticks();
	ASSERT_LE(0, t0);
	EXPECT_GE(1, t1 - t0) TH_LOG("idle workers used %lld ticks", t1 - t0);
	if (!v->event_idx)
		EXPECT_FALSE(le16toh(vq->used->flags) & VRING_USED_F_NO_NOTIFY);
}

/*
 * On a block device with poll queues, a polling ring submits with
 * IOCB_HIPRI and reaps the completions by polling the device (counted as
 * "polled"); on other devices nothing is polled.  In notification mode
 * nothing is polled either.  Data is verified both ways.
 */
TEST_F(vmm, polled_completions)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq_stats st0, st1;
	char path[PATH_MAX];
	uint8_t expect[4096];
	unsigned long long n;
	const char *bdev;
	uint64_t data;
	int io_poll = 0, i, mode;
	FILE *f;

	if (!c->be.bdev)
		SKIP(return, "needs a block device");
	bdev = strrchr(getenv("VBP_TEST_BDEV"), '/') + 1;
	snprintf(path, sizeof(path), "/sys/block/%s/queue/io_poll", bdev);
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%d", &io_poll) != 1)
			io_poll = 0;
		fclose(f);
	}
	data = galloc(v, 1, 4096, 4096);
	for (mode = 0; mode < 2; mode++) {
		ASSERT_EQ(0, vmm_set_poll_us(v, 0, mode ? 100000 : 0));
		ASSERT_EQ(0, vmm_read_stats(v, 0, &st0));
		for (i = 0; i < 50; i++) {
			fill_rand(expect, sizeof(expect), next_seed(c));
			memcpy(gpa_to_hva(v, data, 4096), expect, 4096);
			ASSERT_EQ(VIRTIO_BLK_S_OK,
				  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT,
					 800 + 8 * (i % 16), data, 4096, 1,
					 NULL));
			check_dev(_metadata, c, 800 + 8 * (i % 16), expect,
				  4096);
		}
		ASSERT_EQ(0, vmm_read_stats(v, 0, &st1));
		n = st1.polled - st0.polled;
		TH_LOG("%s, %s: %llu of 100 completions polled", bdev,
		       mode ? "polling ring" : "notification mode", n);
		/* Writes and reads: 100 completions, all polled or none. */
		EXPECT_TRUE(mode && io_poll ? n >= 100 : n == 0);
	}
}

/*
 * One batch on a polling ring over a block device with poll queues: a
 * polled direct write and, on the next sectors, a write whose buffer
 * direct I/O cannot take (it goes to the page cache), then a flush, which
 * writes that page back and waits for it.  The page's bio must not join
 * the polled request while the worker holds both in its plug: the
 * request would then complete only when polled, by the worker that waits
 * for it (null_blk fails it after the block layer's timeout of 30 s; a
 * real controller would be reset).  Then the same with reads, the second
 * read through the page cache.  Every request is answered in time, with
 * OK, and the data is right.
 */
TEST_F(vmm, polled_beside_buffered)
{
	enum { PAIRS = 4 };
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint8_t expect[2 * PAIRS][4096];
	struct xreq r[3];
	uint64_t base, sector;
	unsigned int k, i;

	if (!c->be.bdev)
		SKIP(return, "needs a block device");
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 100000));
	xreq_alloc(v, r, 3, 4096);
	/* The second buffer of each batch is one byte off alignment. */
	r[1].data = galloc(v, 1, 4096 + 1, 4096) + 1;
	base = PB_SECTOR;
	for (k = 0; k < PAIRS; k++) {
		sector = base + 32 * k;
		for (i = 0; i < 2; i++) {
			fill_rand(expect[2 * k + i], 4096, next_seed(c));
			memcpy(gpa_to_hva(v, r[i].data, 4096),
			       expect[2 * k + i], 4096);
			xreq_page(&r[i], VIRTIO_BLK_T_OUT, sector + 8 * i);
		}
		xreq_page(&r[2], VIRTIO_BLK_T_FLUSH, 0);
		ASSERT_TRUE(xreq_run_on(_metadata, c, r, 3, 0))
			TH_LOG("pair %u: writes and flush not answered", k);
		for (i = 0; i < 3; i++)
			EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status)
				TH_LOG("pair %u: request %u", k, i);
		check_store(_metadata, c, sector, expect[2 * k], 4096);
		check_store(_metadata, c, sector + 8, expect[2 * k + 1], 4096);
	}
	for (k = 0; k < PAIRS; k++) {
		sector = base + 32 * k + 16;
		for (i = 0; i < 2; i++) {
			fill_rand(expect[2 * k + i], 4096, next_seed(c));
			store_write(_metadata, c, sector + 8 * i,
				    expect[2 * k + i], 4096);
			memset(gpa_to_hva(v, r[i].data, 4096), 0, 4096);
			xreq_page(&r[i], VIRTIO_BLK_T_IN, sector + 8 * i);
		}
		ASSERT_TRUE(xreq_run_on(_metadata, c, r, 2, 0))
			TH_LOG("pair %u: reads not answered", k);
		for (i = 0; i < 2; i++) {
			EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status)
				TH_LOG("pair %u: read %u", k, i);
			EXPECT_EQ(0, memcmp(expect[2 * k + i],
					    gpa_to_hva(v, r[i].data, 4096),
					    4096))
				TH_LOG("pair %u: read %u read wrong", k, i);
		}
	}
	check_alive(_metadata, c);
}

/* With no poll budget, a request that is not kicked is not served. */
TEST_F(vmm, no_budget_needs_kicks)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq *vq = &v->vq[0];
	uint64_t data;
	struct used u;

	data = galloc(v, 1, 4096, 4096);
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 0));
	check_alive(_metadata, c);
	/*
	 * The pass that answers the last request may look at the ring once
	 * more, which virtio allows; the claim is about an idle worker.
	 */
	usleep(200000);
	ASSERT_LE(0, add_write(c, 0, 400, data));
	vq_publish(vq);
	EXPECT_FALSE(vq_spin(vq, 300));
	vq_notify(vq);
	ASSERT_TRUE(vq_spin(vq, WAIT_MS));
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
}

/* Kicks the module counted on vring 0 of this process's device. */
static unsigned long long st_kicks(struct vmm *v)
{
	struct vq_stats st;

	return vmm_read_stats(v, 0, &st) ? 0 : st.kicks;
}

/* Waits up to ms for the module to count n kicks on vring 0. */
static bool kicks_counted(struct vmm *v, unsigned long long n, int ms)
{
	int64_t deadline = now_us() + ms * 1000LL;

	while (st_kicks(v) < n) {
		if (now_us() > deadline)
			return false;
		usleep(100);
	}
	return true;
}

/*
 * The module's counters agree with what the guest saw: kicks sent and
 * interrupts received (the call eventfd's count) over 20 requests in
 * notification mode.  A kick that comes while the worker is already due to
 * run wakes it once with the one before (the worker's pass that served
 * request n may take request n + 1 too, before the kick for n + 1 runs
 * it): each request waits for the kick before it to be counted.
 */
TEST_F(vmm, counters_match_the_guest)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq *vq = &v->vq[0];
	struct vq_stats st0, st1;
	uint64_t data, calls = 0;
	unsigned int i, agreed, kicks = 0;
	struct used u;

	data = galloc(v, 1, 4096, 4096);
	ASSERT_EQ(0, vmm_set_poll_us(v, 0, 0));
	check_alive(_metadata, c);
	/*
	 * The worker signals, then counts: a worker preempted in between
	 * counts later.  Start from counters that have settled.
	 */
	ASSERT_EQ(0, vmm_read_stats(v, 0, &st0));
	for (i = 0; i < WAIT_MS / 100; i++) {
		usleep(100000);
		ASSERT_EQ(0, vmm_read_stats(v, 0, &st1));
		if (st1.signals == st0.signals && st1.kicks == st0.kicks)
			break;
		st0 = st1;
	}
	drain(vq->call);
	for (i = 0; i < 20; i++) {
		if (v->event_idx)
			__atomic_store_n(vq->used_event,
					 htole16(vq->last_used), __ATOMIC_RELAXED);
		ASSERT_LE(0, add_write(c, 0, 500 + 8 * i, data));
		kicks += vq_kick(v, 0);
		ASSERT_TRUE(vq_spin(vq, WAIT_MS));
		ASSERT_EQ(1, vq_get_used(v, 0, &u));
		ASSERT_TRUE(kicks_counted(v, st0.kicks + kicks, WAIT_MS))
			TH_LOG("request %u: the module counted %llu of %u kicks",
			       i, st_kicks(v) - st0.kicks, kicks);
	}
	/*
	 * The interrupt follows the used entry, and the count follows the
	 * interrupt: wait until the guest's count and the module's agree
	 * twice in a row.  A batch of two used entries may share one
	 * interrupt, so there may be fewer than 20.
	 */
	for (i = 0, agreed = 0; i < WAIT_MS / 10 && agreed < 2; i++) {
		uint64_t n;

		usleep(10000);
		if (read(vq->call, &n, sizeof(n)) == sizeof(n))
			calls += n;
		ASSERT_EQ(0, vmm_read_stats(v, 0, &st1));
		if (calls && calls == st1.signals - st0.signals)
			agreed++;
		else
			agreed = 0;
	}
	EXPECT_EQ(20, st1.requests - st0.requests);
	EXPECT_EQ(kicks, st1.kicks - st0.kicks);
	EXPECT_EQ(calls, st1.signals - st0.signals);
	TH_LOG("20 requests: %u kicks, %llu signals", kicks,
	       (unsigned long long)calls);
}

/* The CPUs a thread of this process may run on, as a bit mask. */
static unsigned long thread_cpus(pid_t tid)
{
	cpu_set_t set;
	unsigned long mask = 0;
	int i;

	if (sched_getaffinity(tid, sizeof(set), &set))
		return 0;
	for (i = 0; i < 64; i++)
		if (CPU_ISSET(i, &set))
			mask |= 1UL << i;
	return mask;
}

/* The CPU masks of this process's vhost worker threads. */
static unsigned int vhost_thread_cpus(unsigned long *masks, unsigned int max)
{
	pid_t tids[MAX_THREADS];
	int i, n;

	n = vhost_threads(tids, max < MAX_THREADS ? max : MAX_THREADS);
	for (i = 0; i < n; i++)
		masks[i] = thread_cpus(tids[i]);
	return n < 0 ? 0 : n;
}

/*
 * VHOST_BLK_SET_VRING_CPU pins the worker of a vring to one CPU and -1
 * lets it run anywhere again; bad CPUs and vrings are refused.
 */
TEST_F(vmm, pin_worker)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	struct vhost_vring_state s;
	unsigned long masks[8], all;
	unsigned int n, i, pinned;
	int cpu = ncpus - 1;

	ASSERT_LE(1, ncpus);
	s.index = 0;
	s.num = cpu;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s))
		TH_LOG("VHOST_BLK_SET_VRING_CPU: %s", strerror(errno));
	n = vhost_thread_cpus(masks, 8);
	ASSERT_LE(1, n);
	for (i = 0, pinned = 0; i < n; i++)
		pinned += masks[i] == 1UL << cpu;
	EXPECT_EQ(1, pinned);
	check_alive(_metadata, c);
	ASSERT_EQ(0, vmm_read_stats(v, 0, &(struct vq_stats){ 0 }));

	s.num = -1;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
	all = ncpus >= 64 ? ~0UL : (1UL << ncpus) - 1;
	n = vhost_thread_cpus(masks, 8);
	for (i = 0; i < n; i++)
		EXPECT_EQ(all, masks[i] & all);

	s.num = ncpus + 100;
	ASSERT_EQ(-1, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
	EXPECT_EQ(EINVAL, errno);
	s.num = -2;
	ASSERT_EQ(-1, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
	EXPECT_EQ(EINVAL, errno);
	s.index = v->nvqs;
	s.num = 0;
	ASSERT_EQ(-1, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
	EXPECT_EQ(ENOBUFS, errno);
}

/*
 * The worker of a confined VMM stays within the VMM's CPUs: with the
 * caller's affinity (which its cpuset bounds) cut to CPU 0, pinning to
 * CPU 1 is refused with EINVAL, CPU 0 is taken, and -1 gives the worker
 * the caller's CPUs, not all of them.
 */
TEST_F(vmm, pin_within_affinity)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	struct vhost_vring_state s = { .index = 0 };
	unsigned long masks[8];
	cpu_set_t old, one;
	unsigned int n, i;

	if (ncpus < 2)
		SKIP(return, "needs two CPUs");
	ASSERT_EQ(0, sched_getaffinity(0, sizeof(old), &old));
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	ASSERT_EQ(0, sched_setaffinity(0, sizeof(one), &one));
	s.num = 1;
	EXPECT_EQ(-1, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
	EXPECT_EQ(EINVAL, errno);
	s.num = 0;
	EXPECT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s))
		TH_LOG("VHOST_BLK_SET_VRING_CPU 0: %s", strerror(errno));
	s.num = -1;
	EXPECT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
	n = vhost_thread_cpus(masks, 8);
	EXPECT_LE(1, n);
	for (i = 0; i < n; i++)
		EXPECT_EQ(1UL, masks[i]) TH_LOG("worker %u may run on %#lx",
						i, masks[i]);
	ASSERT_EQ(0, sched_setaffinity(0, sizeof(old), &old));
	check_alive(_metadata, c);
}

#define TRACING	"/sys/kernel/tracing"

/* Lines of the trace buffer of one CPU. */
static long trace_lines(int cpu)
{
	char path[PATH_MAX], line[512];
	long n = 0;
	FILE *f;

	snprintf(path, sizeof(path), TRACING "/per_cpu/cpu%d/trace", cpu);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += line[0] != '#';
	fclose(f);
	return n;
}

/* The hardware queue of a block device that serves a CPU, or -1. */
static int hctx_of_cpu(const char *bdev, int cpu)
{
	char path[PATH_MAX], list[256], *tok, *save;
	int n, a, b;
	FILE *f;

	for (n = 0; n < 64; n++) {
		snprintf(path, sizeof(path), "/sys/block/%s/mq/%d/cpu_list",
			 bdev, n);
		f = fopen(path, "r");
		if (!f)
			return -1;
		if (!fgets(list, sizeof(list), f))
			list[0] = 0;
		fclose(f);
		for (tok = strtok_r(list, ",\n ", &save); tok;
		     tok = strtok_r(NULL, ",\n ", &save)) {
			if (sscanf(tok, "%d-%d", &a, &b) == 2 ?
			    cpu >= a && cpu <= b : atoi(tok) == cpu)
				return n;
		}
	}
	return -1;
}

/*
 * I/O from a pinned worker is issued from its CPU, so blk-mq puts it on
 * that CPU's hardware queue: with the vring pinned to each CPU in turn, the
 * block_rq_issue events of 100 writes are all on that CPU, and each CPU has
 * a hardware queue of its own.
 */
TEST_F(vmm, pinned_io_lands_on_cpu_hctx)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	struct vhost_vring_state s = { .index = 0 };
	char filter[64];
	struct stat st;
	const char *bdev;
	uint64_t data;
	int cpu, other, i;
	long n;

	if (!c->be.bdev)
		SKIP(return, "needs a block device");
	bdev = strrchr(getenv("VBP_TEST_BDEV"), '/') + 1;
	if (ncpus < 2 || hctx_of_cpu(bdev, 0) == hctx_of_cpu(bdev, 1))
		SKIP(return, "%s: no hardware queue per CPU", bdev);
	if (access(TRACING "/events/block/block_rq_issue/enable", W_OK))
		SKIP(return, "no tracefs");
	ASSERT_EQ(0, fstat(c->be.fd, &st));
	/* The kernel's dev_t: major << 20 | minor. */
	snprintf(filter, sizeof(filter), "dev == %u",
		 major(st.st_rdev) << 20 | minor(st.st_rdev));
	ASSERT_EQ(0, write_str(TRACING "/events/block/block_rq_issue/filter",
			       filter));
	data = galloc(v, 1, 4096, 4096);
	fill_rand(gpa_to_hva(v, data, 4096), 4096, next_seed(c));

	/*
	 * Enabling an event patches the kernel's text on every CPU, which an
	 * emulated CPU running the patched code may not survive: patch once,
	 * while the device is idle, and not the scheduler's tracepoints that
	 * recording task names would enable.
	 */
	write_str(TRACING "/options/record-cmd", "0");
	ASSERT_EQ(0, write_str(TRACING "/events/block/block_rq_issue/enable",
			       "1"));
	for (cpu = 0; cpu < 2; cpu++) {
		s.num = cpu;
		ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
		ASSERT_EQ(0, write_str(TRACING "/trace", ""));
		for (i = 0; i < 100; i++)
			ASSERT_EQ(VIRTIO_BLK_S_OK,
				  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT,
					 600 + 8 * (i % 64), data, 4096, 1,
					 NULL));
		other = 1 - cpu;
		n = trace_lines(cpu);
		EXPECT_LE(100, n) TH_LOG("cpu %d issued %ld requests", cpu, n);
		n = trace_lines(other);
		EXPECT_EQ(0, n) TH_LOG("cpu %d issued %ld requests", other, n);
	}
	write_str(TRACING "/events/block/block_rq_issue/enable", "0");
	write_str(TRACING "/events/block/block_rq_issue/filter", "0");
	write_str(TRACING "/options/record-cmd", "1");
	s.num = -1;
	EXPECT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s));
}

/* The write-through test's writes: WT_WRITES of 4 KiB from WT_SECTOR on. */
#define WT_SECTOR	2048
#define WT_WRITES	8

/*
 * The writes among the block_bio_queue events in the trace buffer that
 * fall in the write-through test's sectors, and in *fua those sent with
 * REQ_FUA (a 'W' then an 'F' in rwbs: "WFS"; a leading F is a preflush).
 */
static int trace_wt_writes(unsigned int *fua)
{
	char line[512], rwbs[16], *ev, *w;
	unsigned long long sector;
	unsigned int maj, min;
	int n = 0;
	FILE *f;

	*fua = 0;
	f = fopen(TRACING "/trace", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		ev = strstr(line, "block_bio_queue: ");
		if (!ev || sscanf(ev, "block_bio_queue: %u,%u %15s %llu", &maj,
				  &min, rwbs, &sector) != 4)
			continue;
		w = strchr(rwbs, 'W');
		if (!w || sector < WT_SECTOR ||
		    sector >= WT_SECTOR + 8 * 2 * WT_WRITES)
			continue;
		n++;
		*fua += !!strchr(w, 'F');
	}
	fclose(f);
	return n;
}

/*
 * Write-through: every write of a backend opened O_DSYNC reaches a block
 * device with a volatile write cache as a FUA bio, as a write(2) on that
 * descriptor would, so that it is durable when the guest has its answer;
 * the backend as opened before (write-back) sends none.  The backend is
 * switched with the rings running, as a VMM does when the guest changes
 * its cache mode; writes polled and notified, the block_bio_queue events
 * counted.
 */
TEST_F(vmm, write_through_fua)
{
	static const unsigned int budget[] = { 0, 1500000 };
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint8_t expect[4096];
	char filter[64], path[PATH_MAX], cache[32] = "";
	unsigned int i, k, fua, pass;
	uint64_t data, sector;
	struct stat st;
	int fd, n;
	FILE *f;

	if (!c->be.bdev)
		SKIP(return, "needs a block device: a file's O_DSYNC is its file system's");
	ASSERT_EQ(0, fstat(c->be.fd, &st));
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/write_cache",
		 major(st.st_rdev), minor(st.st_rdev));
	f = fopen(path, "r");
	if (f) {
		if (!fgets(cache, sizeof(cache), f))
			cache[0] = 0;
		fclose(f);
	}
	if (strncmp(cache, "write back", 10))
		SKIP(return, "%s: no volatile write cache, so no FUA is sent",
		     getenv("VBP_TEST_BDEV"));
	if (access(TRACING "/events/block/block_bio_queue/enable", W_OK))
		SKIP(return, "no tracefs");
	fd = open(getenv("VBP_TEST_BDEV"), O_RDWR | O_DSYNC | O_CLOEXEC);
	ASSERT_LE(0, fd);
	snprintf(filter, sizeof(filter), "dev == %u",
		 major(st.st_rdev) << 20 | minor(st.st_rdev));
	ASSERT_EQ(0, write_str(TRACING "/events/block/block_bio_queue/filter",
			       filter));
	data = galloc(v, 1, sizeof(expect), 4096);

	/* Patched once, on an idle device: see pinned_io_lands_on_cpu_hctx. */
	write_str(TRACING "/options/record-cmd", "0");
	ASSERT_EQ(0, write_str(TRACING "/events/block/block_bio_queue/enable",
			       "1"));
	for (pass = 0; pass < 2; pass++) {
		/* O_DSYNC first, then back to the write-back descriptor. */
		int be = pass ? c->be.fd : fd;

		ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_BACKEND, &be))
			TH_LOG("VHOST_BLK_SET_BACKEND: %s", strerror(errno));
		ASSERT_EQ(0, write_str(TRACING "/trace", ""));
		for (k = 0; k < ARRAY_SIZE(budget); k++) {
			ASSERT_OK(vmm_set_poll_us(v, 0, budget[k]));
			for (i = 0; i < WT_WRITES; i++) {
				sector = WT_SECTOR + 8 * (k * WT_WRITES + i);
				fill_rand(expect, sizeof(expect), next_seed(c));
				memcpy(gpa_to_hva(v, data, sizeof(expect)),
				       expect, sizeof(expect));
				ASSERT_EQ(VIRTIO_BLK_S_OK,
					  blk_rw(_metadata, c, VIRTIO_BLK_T_OUT,
						 sector, data, sizeof(expect),
						 1, NULL));
				check_store(_metadata, c, sector, expect,
					    sizeof(expect));
			}
		}
		n = trace_wt_writes(&fua);
		EXPECT_EQ(2 * WT_WRITES, n)
			TH_LOG("%d block_bio_queue events of the %d writes", n,
			       2 * WT_WRITES);
		if (pass) {
			EXPECT_EQ(0, fua)
				TH_LOG("%u of %d write-back writes sent FUA",
				       fua, n);
		} else {
			EXPECT_EQ(n, (int)fua)
				TH_LOG("%u of %d O_DSYNC writes sent FUA", fua,
				       n);
		}
	}
	write_str(TRACING "/events/block/block_bio_queue/enable", "0");
	write_str(TRACING "/events/block/block_bio_queue/filter", "0");
	write_str(TRACING "/options/record-cmd", "1");
	close(fd);
	check_alive(_metadata, c);
}

/* ------------------------------------------------------------------ */
/* The vhost-user transport                                             */
/* ------------------------------------------------------------------ */

/*
 * The same guest side over vhost-user, against a back-end such as
 * qemu-storage-daemon's vhost-user-blk export of a file (vhost_blk_vmm.sh
 * starts one): VBP_TEST_VHOST_USER names its socket and
 * VBP_TEST_VHOST_USER_IMG the file, which the tests read and write
 * directly to check the device.
 */
FIXTURE(vhost_user) {
	struct ctx c;
};

FIXTURE_VARIANT(vhost_user) {
	bool event_idx;
	bool indirect;
};

FIXTURE_VARIANT_ADD(vhost_user, split) {
	.event_idx = false, .indirect = false,
};

FIXTURE_VARIANT_ADD(vhost_user, event_idx_indirect) {
	.event_idx = true, .indirect = true,
};

FIXTURE_SETUP(vhost_user)
{
	const char *sock = getenv("VBP_TEST_VHOST_USER");
	const char *img = getenv("VBP_TEST_VHOST_USER_IMG");
	struct ctx *c = &self->c;

	ctx_init(c);
	if (!sock || !*sock || !img || !*img)
		SKIP(return, "VBP_TEST_VHOST_USER names no vhost-user back-end");
	be_open_image(_metadata, &c->be, img);
	c->cap = c->be.size / SECTOR;
	c->seed = mix64(now_us() ^ ((uint64_t)getpid() << 32));
	ASSERT_OK(vmm_open_vhost_user(&c->v, sock, variant->event_idx,
				      variant->indirect));
	ctx_scratch(c);
	ASSERT_OK(vmm_start(&c->v, -1));
}

FIXTURE_TEARDOWN(vhost_user)
{
	vmm_close(&self->c.v);
	be_close(&self->c.be);
}

/*
 * Writes through the device land in the file, and what the file holds
 * reads back through the device: sizes from a sector to 64 KiB, at the
 * start and the end of the disk.
 */
TEST_F(vhost_user, write_read)
{
	struct ctx *c = &self->c;
	static const uint32_t sizes[] = { 512, 4096, 65536 };
	uint64_t sectors[] = { 0, 7, 4095, c->cap - 128, c->cap - 1 };
	struct vmm *v = &c->v;
	uint8_t expect[RD_MAX];
	unsigned int i, j;
	uint64_t wbuf;
	uint32_t len;
	uint8_t st;

	wbuf = galloc(v, 0, RD_MAX, 4096);
	for (i = 0; i < ARRAY_SIZE(sectors); i++) {
		for (j = 0; j < ARRAY_SIZE(sizes); j++) {
			if (sectors[i] + sizes[j] / SECTOR > c->cap)
				continue;
			fill_rand(expect, sizes[j], next_seed(c));
			memcpy(gpa_to_hva(v, wbuf, sizes[j]), expect,
			       sizes[j]);
			st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT,
				    sectors[i], wbuf, sizes[j], 1 + j * 3,
				    &len);
			ASSERT_EQ(VIRTIO_BLK_S_OK, st)
				TH_LOG("write of %u at sector %llu", sizes[j],
				       (unsigned long long)sectors[i]);
			check_both(_metadata, c, sectors[i], expect,
				   sizes[j]);

			fill_rand(expect, sizes[j], next_seed(c));
			store_write(_metadata, c, sectors[i], expect,
				    sizes[j]);
			check_dev(_metadata, c, sectors[i], expect, sizes[j]);
		}
	}
}

TEST_F(vhost_user, flush)
{
	write_then_flush(_metadata, &self->c, 2);
}

/* GET_ID: a serial, NUL-terminated within its 20 bytes when shorter. */
TEST_F(vhost_user, get_id)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	char id[VIRTIO_BLK_ID_BYTES + 1] = "";
	unsigned int i;
	uint64_t gid;
	struct seg d;
	uint32_t len;
	uint8_t st;

	gid = galloc(v, 0, VIRTIO_BLK_ID_BYTES, 64);
	memset(gpa_to_hva(v, gid, VIRTIO_BLK_ID_BYTES), 0xff,
	       VIRTIO_BLK_ID_BYTES);
	d = (struct seg){ gid, VIRTIO_BLK_ID_BYTES, true };
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_GET_ID, 0, &d, 1, &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	memcpy(id, gpa_to_hva(v, gid, VIRTIO_BLK_ID_BYTES),
	       VIRTIO_BLK_ID_BYTES);
	for (i = 0; i < VIRTIO_BLK_ID_BYTES && id[i]; i++)
		ASSERT_TRUE(id[i] > 0x20 && id[i] < 0x7f)
			TH_LOG("byte %u of the serial: %#x", i,
			       (uint8_t)id[i]);
	ASSERT_LT(0, i) TH_LOG("an empty serial");
	TH_LOG("serial \"%s\", used length %u", id, len);
}

/*
 * Both queues at once: 32 writes of 4 KiB in flight on each, then 32
 * reads, answered on the queue they were made on, the data in the file.
 */
TEST_F(vhost_user, two_queues)
{
	enum { N = 64, BASE = 20480 };
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	uint8_t (*expect)[4096];
	struct xreq r[N];
	unsigned int i;

	if (v->nq < 2)
		SKIP(return, "the back-end has %u queue", v->nvqs);
	v->nq = 2;
	expect = calloc(N, sizeof(*expect));
	ASSERT_NE(NULL, expect);
	xreq_alloc(v, r, N, 4096);
	for (i = 0; i < N; i++) {
		xreq_page(&r[i], VIRTIO_BLK_T_OUT, BASE + 8 * i);
		fill_rand(expect[i], 4096, next_seed(c));
		memcpy(gpa_to_hva(v, r[i].data, 4096), expect[i], 4096);
	}
	ASSERT_TRUE(xreq_run(_metadata, c, r, N)) TH_LOG("writes not answered");
	for (i = 0; i < N; i++) {
		EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status) TH_LOG("write %u", i);
		check_store(_metadata, c, r[i].sector, expect[i], 4096);
		r[i].type = VIRTIO_BLK_T_IN;
		memset(gpa_to_hva(v, r[i].data, 4096), 0, 4096);
	}
	ASSERT_TRUE(xreq_run(_metadata, c, r, N)) TH_LOG("reads not answered");
	for (i = 0; i < N; i++) {
		EXPECT_EQ(VIRTIO_BLK_S_OK, r[i].status) TH_LOG("read %u", i);
		EXPECT_EQ(4097, r[i].used_len);
		EXPECT_EQ(-1, first_diff(expect[i],
					 gpa_to_hva(v, r[i].data, 4096),
					 4096))
			TH_LOG("read %u differs", i);
	}
	free(expect);
}

/*
 * The configuration space (GET_CONFIG), up to num_queues (a back-end
 * knows the fields of its own virtio version, and refuses to read more):
 * the capacity is the file's size, the queues what GET_QUEUE_NUM said; the
 * last sector reads, the one past it fails.
 */
TEST_F(vhost_user, capacity)
{
	const uint32_t len = offsetof(struct virtio_blk_config, num_queues) +
			     sizeof(uint16_t);
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct virtio_blk_config cfg;
	uint8_t expect[SECTOR];
	uint8_t st;

	memset(&cfg, 0xa5, sizeof(cfg));
	ASSERT_OK(vmm_get_config(v, &cfg, len));
	EXPECT_EQ(c->cap, le64toh(cfg.capacity));
	if (v->features & (1ULL << VIRTIO_BLK_F_MQ))
		EXPECT_EQ(v->nvqs, le16toh(cfg.num_queues));
	TH_LOG("%llu sectors, %u queues",
	       (unsigned long long)le64toh(cfg.capacity), v->nvqs);

	fill_rand(expect, sizeof(expect), next_seed(c));
	store_write(_metadata, c, c->cap - 1, expect, sizeof(expect));
	check_dev(_metadata, c, c->cap - 1, expect, sizeof(expect));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_IN, c->cap, c->rd, SECTOR, 1,
		    NULL);
	EXPECT_EQ(VIRTIO_BLK_S_IOERR, st) TH_LOG("read at the capacity");
}

/* What only /dev/vhost-blk-poll does is refused, and the device works. */
TEST_F(vhost_user, kernel_only)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	struct vq_stats st;

	EXPECT_EQ(-EOPNOTSUPP, vmm_set_backend(v, -1));
	EXPECT_EQ(-EOPNOTSUPP, vmm_set_poll_us(v, 0, 100));
	EXPECT_EQ(-EOPNOTSUPP, vmm_set_vring_cpu(v, 0, 0));
	EXPECT_EQ(-EOPNOTSUPP, vmm_new_worker(v, 0));
	EXPECT_EQ(-EOPNOTSUPP, vmm_read_stats(v, 0, &st));
	check_alive(_metadata, c);
}

/* A server on a unix socket that answers a vhost-user front-end wrongly. */
struct bad_server {
	int lfd;
	const void *answer;	/* written after the first request */
	size_t len;
	pthread_t th;
	bool running;
};

static void *bad_server_run(void *arg)
{
	struct bad_server *s = arg;
	struct pollfd pfd;
	char buf[64];
	int fd;

	fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return NULL;
	/* The first request: a header, GET_FEATURES has no payload. */
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	if (poll(&pfd, 1, WAIT_MS) == 1 && read(fd, buf, sizeof(buf)) > 0 &&
	    s->len && write(fd, s->answer, s->len) < 0)
		fprintf(stderr, "# bad server: write: %s\n", strerror(errno));
	close(fd);
	return NULL;
}

/*
 * What is not a vhost-user back-end gets a clear error from
 * vmm_open_vhost_user(), not a crash: no socket, a socket nobody listens
 * on, and servers whose answer to the first request is wrong.
 */
FIXTURE(vhost_user_bad) {
	char dir[PATH_MAX - 16];
	char path[PATH_MAX];
	struct bad_server s;
	struct vmm v;
};

FIXTURE_SETUP(vhost_user_bad)
{
	const char *tmp = getenv("VBP_TEST_DIR");

	self->s.lfd = -1;
	snprintf(self->dir, sizeof(self->dir), "%s/vhost_user.XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	ASSERT_NE(NULL, mkdtemp(self->dir));
	snprintf(self->path, sizeof(self->path), "%s/vu.sock", self->dir);
}

FIXTURE_TEARDOWN(vhost_user_bad)
{
	vmm_close(&self->v);
	if (self->s.running)
		pthread_join(self->s.th, NULL);
	if (self->s.lfd >= 0)
		close(self->s.lfd);
	unlink(self->path);
	rmdir(self->dir);
}

/*
 * A socket at path; listening, with a server thread that gives answer,
 * when listen_too.
 */
static void bad_socket(struct __test_metadata *_metadata,
		       struct bad_server *s, const char *path,
		       bool listen_too, const void *answer, size_t len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	ASSERT_GT(sizeof(sa.sun_path), strlen(path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT_LE(0, s->lfd);
	ASSERT_EQ(0, bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)));
	if (!listen_too) {
		/* The socket file stays, as a dead back-end's does. */
		close(s->lfd);
		s->lfd = -1;
		return;
	}
	ASSERT_EQ(0, listen(s->lfd, 1));
	s->answer = answer;
	s->len = len;
	ASSERT_EQ(0, pthread_create(&s->th, NULL, bad_server_run, s));
	s->running = true;
}

/* A reply header and len bytes of payload, the header's size given. */
struct bad_reply {
	uint32_t request, flags, size;
	uint8_t payload[8];
};

TEST_F(vhost_user_bad, no_socket)
{
	EXPECT_EQ(-ENOENT, vmm_open_vhost_user(&self->v, self->path, false,
					       false));
}

TEST_F(vhost_user_bad, nobody_listening)
{
	bad_socket(_metadata, &self->s, self->path, false, NULL, 0);
	EXPECT_EQ(-ECONNREFUSED, vmm_open_vhost_user(&self->v, self->path,
						     false, false));
}

TEST_F(vhost_user_bad, not_vhost_user)
{
	static const char http[] = "HTTP/1.1 400 Bad Request\r\n\r\n";

	bad_socket(_metadata, &self->s, self->path, true, http, strlen(http));
	EXPECT_EQ(-EPROTO, vmm_open_vhost_user(&self->v, self->path, false,
					       false));
}

TEST_F(vhost_user_bad, hangs_up)
{
	bad_socket(_metadata, &self->s, self->path, true, NULL, 0);
	EXPECT_EQ(-ECONNRESET, vmm_open_vhost_user(&self->v, self->path,
						   false, false));
}

/* The features' reply: 8 bytes announced, 4 sent. */
TEST_F(vhost_user_bad, short_reply)
{
	static const struct bad_reply r = { 1, 0x5, 8 };

	bad_socket(_metadata, &self->s, self->path, true, &r, 12 + 4);
	EXPECT_EQ(-EPROTO, vmm_open_vhost_user(&self->v, self->path, false,
					       false));
}

/* The features' reply of 4 bytes, not 8. */
TEST_F(vhost_user_bad, wrong_size)
{
	static const struct bad_reply r = { 1, 0x5, 4 };

	bad_socket(_metadata, &self->s, self->path, true, &r, 12 + 4);
	EXPECT_EQ(-EPROTO, vmm_open_vhost_user(&self->v, self->path, false,
					       false));
}

/* An answer without the reply flag. */
TEST_F(vhost_user_bad, not_a_reply)
{
	static const struct bad_reply r = { 1, 0x1, 8 };

	bad_socket(_metadata, &self->s, self->path, true, &r, sizeof(r));
	EXPECT_EQ(-EPROTO, vmm_open_vhost_user(&self->v, self->path, false,
					       false));
}

TEST_HARNESS_MAIN
