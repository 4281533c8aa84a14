// SPDX-License-Identifier: GPL-2.0
/*
 * The ring fuzzer of the mini-VMM (vmm.h): random and hostile requests on
 * every queue of /dev/vhost-blk-poll at once, each with the answer the
 * device owes it (Documentation/abi.rst): a status and a used length, or a
 * stopped ring reported on the ring's error eventfd.  Reads and writes are
 * checked against a copy of the fuzzed area of the store kept here.  A ring
 * that must stop ends its batch; the device is then reset
 * (VHOST_RESET_OWNER, a new setup with random ring features and poll
 * budgets) and must work again.  The races (fuzz.races) change the memory
 * table, the backend and the rings under I/O in flight.
 *
 * Needs root and the module loaded.  Environment: VBP_FUZZ_REQUESTS
 * (default 10000), VBP_FUZZ_SEED (default from the clock; printed, so that
 * a run can be repeated), VBP_FUZZ_POLL=0 (poll budgets all 0: no ring
 * polls), VBP_RACE_ROUNDS (default 350), VBP_TEST_BDEV (a block device to
 * fuzz instead of a file in VBP_TEST_DIR).
 */

#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#include "vmm_harness.h"

#define FZ_SLOTS	16		/* requests of a queue in one batch */
#define FZ_SLOT_SECTORS	128		/* the store area of one slot */
#define FZ_SLOT_BYTES	(FZ_SLOT_SECTORS * SECTOR)
#define FZ_BASE		16384		/* first sector of the fuzzed area */
#define FZ_SECTORS	(MAX_QUEUES * FZ_SLOTS * FZ_SLOT_SECTORS)
#define FZ_SLACK	4096		/* a buffer starts anywhere in this */
#define FZ_BUF_BYTES	(FZ_SLOT_BYTES + 2 * FZ_SLACK)
#define FZ_MAX_DESC	(QSIZE / FZ_SLOTS)	/* ring descriptors of a chain */
#define FZ_JUNK		64		/* bytes of payload a request ignores */
#define FZ_WAIT_MS	10000
#define FZ_STOP		(-1)		/* the ring must stop at this chain */
#define FZ_ANY		(-2)		/* any status; the area is forgotten */
#define FZ_POISON	0xee		/* a status byte before the answer */

static const char fz_serial[VIRTIO_BLK_ID_BYTES] = "vhost-blk-poll-fuzz";

/* One descriptor as the fuzzer means it; NEXT is added when chained. */
struct fz_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
};

/* How a chain is broken beyond the contents of its descriptors. */
enum fz_mangle {
	FZ_M_NONE,
	FZ_M_LOOP,		/* the last descriptor chains to the head */
	FZ_M_NEXT,		/* ... or to an index beyond the ring */
	FZ_M_HEAD,		/* the avail entry names no descriptor */
	FZ_M_AVAIL,		/* the avail index jumps too far */
	FZ_M_IND_LEN,		/* indirect table length not 16 x n */
	FZ_M_IND_NESTED,	/* an indirect table entry is indirect */
	FZ_M_IND_OPEN,		/* the table's last entry has NEXT */
	FZ_M_IND_EMPTY,		/* a table of no entry */
	FZ_M_IND_ADDR,		/* a table outside guest memory */
};

enum fz_effect { FZ_E_NONE, FZ_E_WRITE, FZ_E_ZERO, FZ_E_FORGET };

struct fz_slot {
	int want;		/* status owed, FZ_STOP or FZ_ANY */
	/* Bytes written owed, the status byte counted: fz_used_len(). */
	uint32_t want_len;
	uint32_t wr_total;	/* bytes of the device-writable buffers */
	uint32_t type;
	uint64_t sector;	/* store area of the data or range */
	uint32_t len;		/* its length in bytes */
	uint64_t rbuf, wbuf;	/* its readable and writable buffers */
	uint64_t data;		/* the data (in rbuf or wbuf) */
	uint64_t st;		/* the status byte */
	uint32_t id_len;	/* GET_ID bytes owed */
	enum fz_effect effect;	/* on the store when answered OK */
	enum fz_mangle mangle;
	bool answered;
};

struct fz {
	struct ctx *c;
	uint64_t rnd;
	struct fz_slot slot[MAX_QUEUES][FZ_SLOTS];
	uint8_t head_slot[MAX_QUEUES][QSIZE];
	unsigned int nslots[MAX_QUEUES];
	unsigned int owed[MAX_QUEUES];	/* used entries owed */
	bool stops[MAX_QUEUES];
	bool no_poll;		/* rings never poll (VBP_FUZZ_POLL=0) */
	uint8_t *copy;		/* what the fuzzed area holds */
	uint8_t *known;		/* per sector: whether the copy is exact */
	/* For the report. */
	unsigned long long requests, status[3], stopped, resets, batches;
};

static uint64_t fz_rand(struct fz *f)
{
	f->rnd += 0x9e3779b97f4a7c15ULL;
	return mix64(f->rnd);
}

static uint32_t fz_below(struct fz *f, uint32_t n)
{
	return n ? fz_rand(f) % n : 0;
}

static bool fz_chance(struct fz *f, unsigned int percent)
{
	return fz_below(f, 100) < percent;
}

static uint64_t fz_slot_sector(unsigned int q, unsigned int i)
{
	return FZ_BASE + (uint64_t)(q * FZ_SLOTS + i) * FZ_SLOT_SECTORS;
}

/* Offset of sector in the copy of the fuzzed area. */
static size_t fz_off(uint64_t sector)
{
	return (sector - FZ_BASE) * SECTOR;
}

/*
 * Cuts [addr, addr + len) into at most pieces descriptors, appended to
 * d[*n]: of random lengths, of whole sectors, or as even as can be.
 */
static void fz_cut(struct fz *f, struct fz_desc *d, unsigned int *n,
		   unsigned int pieces, uint64_t addr, uint32_t len, bool wr,
		   bool even)
{
	bool sectors = fz_chance(f, 50);
	uint32_t part;

	while (len && pieces) {
		if (pieces == 1)
			part = len;
		else if (even)
			part = len / pieces ? len / pieces : 1;
		else if (sectors && len > SECTOR)
			part = SECTOR * (1 + fz_below(f, len / SECTOR));
		else
			part = 1 + fz_below(f, len);
		d[*n] = (struct fz_desc){ addr, part,
					  wr ? VRING_DESC_F_WRITE : 0 };
		(*n)++;
		addr += part;
		len -= part;
		pieces--;
	}
}

/*
 * Zero-length descriptors at random places: vhost skips them, but one that
 * is device-readable after device-writable bytes breaks the chain, so those
 * go only where the chain is still readable.
 */
static void fz_zero_len(struct fz *f, struct fz_desc *d, unsigned int *n,
			unsigned int max)
{
	unsigned int k, at, first_wr = *n;
	bool wr;

	for (k = 0; k < *n; k++) {
		if (d[k].flags & VRING_DESC_F_WRITE && d[k].len) {
			first_wr = k;
			break;
		}
	}
	while (*n < max && fz_chance(f, 20)) {
		wr = fz_chance(f, 50);
		at = fz_below(f, (wr ? *n : first_wr) + 1);
		memmove(&d[at + 1], &d[at], (*n - at) * sizeof(*d));
		/* The address of nothing is never looked at. */
		d[at] = (struct fz_desc){
			fz_chance(f, 50) ? HOLE_GPA : fz_rand(f), 0,
			wr ? VRING_DESC_F_WRITE : 0 };
		(*n)++;
		if (!wr || at <= first_wr)
			first_wr++;
	}
}

/*
 * Writes chain d[0..n) to queue q, in the ring or through an indirect
 * table, broken as s->mangle says, and makes it an avail entry.  Returns
 * the head.
 */
static int fz_add(struct fz *f, unsigned int q, const struct fz_desc *d,
		  unsigned int n, bool indirect, struct fz_slot *s)
{
	struct vmm *v = &f->c->v;
	struct vq *vq = &v->vq[q];
	unsigned int i, nd = indirect ? 1 : n;
	struct vring_desc *tbl;
	uint16_t id[QSIZE], to;
	uint64_t tgpa;
	uint32_t tlen;
	bool more;

	if (!nd || nd > vq->nfree)
		return -1;
	for (i = 0; i < nd; i++)
		id[i] = vq_pop_desc(vq);
	if (indirect) {
		tgpa = vq->ind_gpa + 16ULL * IND_MAX * id[0];
		tbl = gpa_to_hva(v, tgpa, 16ULL * IND_MAX);
		for (i = 0; i < n; i++) {
			more = i + 1 < n || s->mangle == FZ_M_IND_OPEN;
			desc_set(&tbl[i], d[i].addr, d[i].len,
				 d[i].flags | (more ? VRING_DESC_F_NEXT : 0),
				 more ? i + 1 : 0);
		}
		if (s->mangle == FZ_M_IND_NESTED)
			tbl[fz_below(f, n)].flags |=
				htole16(VRING_DESC_F_INDIRECT);
		tlen = 16 * n;
		if (s->mangle == FZ_M_IND_LEN)
			tlen += 1 + fz_below(f, 15);
		else if (s->mangle == FZ_M_IND_EMPTY)
			tlen = 0;
		else if (s->mangle == FZ_M_IND_ADDR)
			tgpa = HOLE_GPA + 16 * fz_below(f, 4096);
		desc_set(&vq->desc[id[0]], tgpa, tlen, VRING_DESC_F_INDIRECT,
			 0);
		vq->next[id[0]] = 0;
	} else {
		for (i = 0; i < n; i++) {
			more = i + 1 < n;
			vq->next[id[i]] = more ? id[i + 1] : 0;
			desc_set(&vq->desc[id[i]], d[i].addr, d[i].len,
				 d[i].flags | (more ? VRING_DESC_F_NEXT : 0),
				 vq->next[id[i]]);
		}
		if (s->mangle == FZ_M_LOOP || s->mangle == FZ_M_NEXT) {
			to = s->mangle == FZ_M_LOOP ? id[0] :
			     QSIZE + fz_below(f, 65536 - QSIZE);
			desc_set(&vq->desc[id[n - 1]], d[n - 1].addr,
				 d[n - 1].len,
				 d[n - 1].flags | VRING_DESC_F_NEXT, to);
		}
	}
	vq_push(vq, id[0], nd, 0);
	if (s->mangle == FZ_M_HEAD)
		vq->avail->ring[(uint16_t)(vq->avail_idx - 1) % QSIZE] =
			htole16(QSIZE + fz_below(f, 65536 - QSIZE));
	return id[0];
}

static void fz_dwz_seg(struct vmm *v, uint64_t gpa, uint64_t sector,
		       uint32_t num, uint32_t flags)
{
	struct virtio_blk_discard_write_zeroes r = {
		.sector = htole64(sector),
		.num_sectors = htole32(num),
		.flags = htole32(flags),
	};

	memcpy(gpa_to_hva(v, gpa, sizeof(r)), &r, sizeof(r));
}

static bool fz_type_known(uint32_t type)
{
	switch (type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
	case VIRTIO_BLK_T_FLUSH:
	case VIRTIO_BLK_T_GET_ID:
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		return true;
	}
	return false;
}

/* What a well-formed discard or write zeroes of num sectors gets. */
static void fz_dwz_answer(struct fz *f, struct fz_slot *s, uint32_t num)
{
	struct backend *be = &f->c->be;

	if (!num)
		return;
	if (!be->bdev && !be->discard) {
		/* A file system that cannot punch holes: it depends. */
		s->want = FZ_ANY;
		s->effect = FZ_E_FORGET;
	} else if (!be->bdev || s->type == VIRTIO_BLK_T_WRITE_ZEROES) {
		s->effect = FZ_E_ZERO;
	} else if (be->discard) {
		/* What a discarded sector reads back is the device's business. */
		s->effect = FZ_E_FORGET;
	} else {
		s->want = VIRTIO_BLK_S_UNSUPP;
	}
}

/* Request parameters that fz_make() chooses and fz_build() lays out. */
struct fz_req {
	uint32_t type;
	uint64_t sector;
	uint64_t r, w;		/* the readable and writable parts */
	uint32_t rlen;		/* readable bytes after the header */
	uint32_t wlen;		/* writable bytes before the status */
	bool short_hdr;		/* fewer than 16 readable bytes */
	bool hdr_writable;	/* ... the header is writable instead */
	bool wrong_dir;		/* the data goes the wrong way */
	unsigned int stop;	/* how the chain breaks, 0 when it does not */
};

/*
 * The used length owed (Documentation/abi.rst): the bytes written from the
 * start of the writable buffers, all of them when the data written and the
 * status byte fill them, else the data alone (the status is the last byte).
 */
static uint32_t fz_used_len(const struct fz_slot *s)
{
	return s->want_len == s->wr_total ? s->want_len : s->want_len - 1;
}

/* A well-formed request, answered as the ABI says. */
static void fz_good(struct fz *f, struct fz_slot *s, struct fz_req *rq,
		    uint64_t base)
{
	struct vmm *v = &f->c->v;
	uint32_t k = fz_below(f, 100), num, flags = 0;

	num = fz_below(f, FZ_SLOT_SECTORS + 1);
	rq->sector = base + fz_below(f, FZ_SLOT_SECTORS - num + 1);
	if (k < 70) {
		rq->type = k < 35 ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
		s->len = num * SECTOR;
		s->sector = rq->sector;
		if (rq->type == VIRTIO_BLK_T_IN)
			s->want_len = s->len + 1;
		s->effect = rq->type == VIRTIO_BLK_T_OUT ? FZ_E_WRITE :
							   FZ_E_NONE;
	} else if (k < 77) {
		/* Payload a flush ignores, both ways. */
		rq->type = VIRTIO_BLK_T_FLUSH;
		rq->rlen = fz_below(f, FZ_JUNK);
		rq->wlen = fz_below(f, FZ_JUNK);
	} else if (k < 84) {
		rq->type = VIRTIO_BLK_T_GET_ID;
		rq->wlen = fz_below(f, 2 * VIRTIO_BLK_ID_BYTES + 1);
		s->id_len = rq->wlen < VIRTIO_BLK_ID_BYTES ?
			    rq->wlen : VIRTIO_BLK_ID_BYTES;
		s->want_len = s->id_len + 1;
	} else {
		rq->type = k < 92 ? VIRTIO_BLK_T_DISCARD :
				    VIRTIO_BLK_T_WRITE_ZEROES;
		if (rq->type == VIRTIO_BLK_T_WRITE_ZEROES && fz_chance(f, 50))
			flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
		rq->rlen = sizeof(struct virtio_blk_discard_write_zeroes);
		fz_dwz_seg(v, rq->r + HDR_SIZE, rq->sector, num, flags);
		s->type = rq->type;
		s->sector = rq->sector;
		s->len = num * SECTOR;
		fz_dwz_answer(f, s, num);
	}
}

/* A discard or write zeroes the device must refuse. */
static void fz_bad_dwz(struct fz *f, struct fz_slot *s, struct fz_req *rq,
		       uint64_t base)
{
	struct ctx *c = f->c;
	uint32_t num = 1 + fz_below(f, FZ_SLOT_SECTORS), flags = 0;
	static const uint32_t counts[] = { 0, 8, 15, 17, 32, 48 };
	uint64_t sector = base;
	unsigned int i;

	rq->type = fz_chance(f, 50) ? VIRTIO_BLK_T_DISCARD :
				      VIRTIO_BLK_T_WRITE_ZEROES;
	rq->rlen = sizeof(struct virtio_blk_discard_write_zeroes);
	s->want = VIRTIO_BLK_S_UNSUPP;
	switch (fz_below(f, 5)) {
	case 0:		/* other than one segment */
		rq->rlen = counts[fz_below(f, ARRAY_SIZE(counts))];
		break;
	case 1:		/* flags nobody knows */
		flags = fz_chance(f, 50) ? 2U << fz_below(f, 31) :
					   (uint32_t)fz_rand(f);
		flags &= ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
		if (!flags)
			flags = 2;
		if (rq->type == VIRTIO_BLK_T_WRITE_ZEROES && fz_chance(f, 50))
			flags |= VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
		break;
	case 2:		/* unmap on a discard */
		rq->type = VIRTIO_BLK_T_DISCARD;
		flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
		break;
	case 3:		/* longer than a segment may be */
		num = VHOST_BLK_MAX_DISCARD_SECTORS + 1 +
		      fz_below(f, 1U << 20);
		s->want = VIRTIO_BLK_S_IOERR;
		break;
	default:	/* past the end */
		sector = fz_chance(f, 50) ? c->cap - fz_below(f, num) :
					    UINT64_MAX - fz_below(f, num);
		s->want = VIRTIO_BLK_S_IOERR;
		break;
	}
	for (i = 0; i < 3; i++)
		fz_dwz_seg(&c->v, rq->r + HDR_SIZE + 16 * i, sector, num,
			   flags);
}

/* A malformed request the device answers with an error. */
static void fz_bad(struct fz *f, struct fz_slot *s, struct fz_req *rq,
		   uint64_t base)
{
	struct ctx *c = f->c;
	uint32_t num = 1 + fz_below(f, FZ_SLOT_SECTORS);

	rq->type = fz_chance(f, 50) ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
	rq->sector = base;
	s->want = VIRTIO_BLK_S_IOERR;
	switch (fz_below(f, 6)) {
	case 0:		/* outside the capacity, or past 2^64 */
		s->len = num * SECTOR;
		switch (fz_below(f, 3)) {
		case 0:
			rq->sector = c->cap - fz_below(f, num);
			break;
		case 1:
			rq->sector = c->cap + fz_below(f, 1U << 30);
			break;
		default:
			rq->sector = UINT64_MAX - fz_below(f, num);
			break;
		}
		break;
	case 1:		/* not whole sectors */
		s->len = fz_below(f, FZ_SLOT_SECTORS) * SECTOR + 1 +
			 fz_below(f, SECTOR - 1);
		break;
	case 2:		/* data the wrong way */
		s->len = 1 + fz_below(f, FZ_SLOT_BYTES);
		rq->wrong_dir = true;
		break;
	case 3:		/* a header short of 16 bytes, or writable */
		rq->type = fz_rand(f);
		rq->short_hdr = true;
		rq->hdr_writable = fz_chance(f, 30);
		rq->wlen = fz_below(f, FZ_JUNK);
		break;
	case 4:		/* a type nobody knows */
		do {
			rq->type = fz_chance(f, 50) ? fz_below(f, 32) :
						      (uint32_t)fz_rand(f);
		} while (fz_type_known(rq->type));
		rq->rlen = fz_below(f, FZ_JUNK);
		rq->wlen = fz_below(f, FZ_JUNK);
		s->want = VIRTIO_BLK_S_UNSUPP;
		break;
	default:
		fz_bad_dwz(f, s, rq, base);
		break;
	}
}

/*
 * Lays request rq of slot s out as descriptors and adds it to queue q.
 * A request is a readable part (header and payload, contiguous) and a
 * writable part (data and status, contiguous), each cut into random
 * descriptors, then broken as rq->stop says.
 */
static void fz_build(struct fz *f, unsigned int q, struct fz_slot *s,
		     struct fz_req *rq, bool alone)
{
	struct vmm *v = &f->c->v;
	bool indirect = v->indirect && fz_chance(f, 70), long_chain;
	struct fz_desc d[QSIZE + 8];
	unsigned int n = 0, max, k;
	uint32_t rtotal;
	int head;

	if (rq->type == VIRTIO_BLK_T_IN || rq->type == VIRTIO_BLK_T_OUT) {
		bool readable = (rq->type == VIRTIO_BLK_T_OUT) != rq->wrong_dir;

		if (readable) {
			rq->rlen = s->len;
			s->data = rq->r + HDR_SIZE;
			fill_rand(gpa_to_hva(v, s->data, s->len), s->len,
				  fz_rand(f));
		} else {
			rq->wlen = s->len;
			s->data = rq->w;
			memset(gpa_to_hva(v, s->data, s->len), 0x5a, s->len);
		}
	}
	set_hdr(v, rq->r, rq->type, rq->sector);
	s->type = rq->type;
	s->st = rq->w + rq->wlen;
	*gptr(v, s->st) = FZ_POISON;
	if (rq->type == VIRTIO_BLK_T_GET_ID) {
		s->data = rq->w;
		memset(gpa_to_hva(v, rq->w, rq->wlen + 1), 0, rq->wlen);
	}

	/* Stops that need an indirect table get one. */
	if (rq->stop >= 8)
		indirect = true;
	else if (rq->stop == 4 || rq->stop == 5)
		indirect = false;
	max = indirect ? IND_MAX : alone ? QSIZE : FZ_MAX_DESC;
	max--;		/* room for a readable descriptor after the status */
	long_chain = alone && fz_chance(f, 20);
	rtotal = rq->short_hdr ? fz_below(f, HDR_SIZE) : HDR_SIZE + rq->rlen;
	k = long_chain ? max / 2 : 1 + fz_below(f, max / 2);
	fz_cut(f, d, &n, k, rq->r, rtotal, rq->hdr_writable, long_chain);
	k = long_chain ? max - n : 1 + fz_below(f, max - n);
	fz_cut(f, d, &n, k, rq->w, rq->wlen + 1, true, long_chain);
	fz_zero_len(f, d, &n, max);

	switch (rq->stop) {
	case 0:
		break;
	case 1:		/* nothing the device may write: no status */
		for (k = 0; k < n; k++)
			d[k].flags &= ~VRING_DESC_F_WRITE;
		break;
	case 2:		/* nothing at all: every descriptor empty */
		for (k = 0; k < n; k++)
			d[k].len = 0;
		break;
	case 3:		/* readable after writable */
		d[n++] = (struct fz_desc){ rq->r, fz_below(f, HDR_SIZE + 1),
					   0 };
		break;
	case 4:
		s->mangle = FZ_M_LOOP;
		break;
	case 5:
		s->mangle = FZ_M_NEXT;
		break;
	case 6:		/* outside guest memory, or wrapping around */
		do {
			k = fz_below(f, n);
		} while (!d[k].len);
		switch (fz_below(f, 4)) {
		case 0:
			d[k].addr = HOLE_GPA + fz_below(f, 1U << 20);
			break;
		case 1:
			d[k].addr = REGION_SIZE - fz_below(f, d[k].len);
			break;
		case 2:
			d[k].addr = REGION1_GPA + REGION_SIZE -
				    fz_below(f, d[k].len);
			break;
		default:
			d[k].addr = UINT64_MAX - fz_below(f, d[k].len);
			break;
		}
		break;
	case 7:
		s->mangle = alone && fz_chance(f, 50) ? FZ_M_AVAIL :
							FZ_M_HEAD;
		break;
	default:
		s->mangle = FZ_M_IND_LEN + rq->stop - 8;
		break;
	}
	s->wr_total = 0;
	for (k = 0; k < n; k++)
		if (d[k].flags & VRING_DESC_F_WRITE)
			s->wr_total += d[k].len;
	head = fz_add(f, q, d, n, indirect, s);
	if (head < 0) {
		fprintf(stderr, "# fuzz: no room for %u descriptors\n", n);
		abort();
	}
	f->head_slot[q][head] = s - f->slot[q];
}

/*
 * Makes request i of queue q: well formed, malformed and answered, or one
 * that stops the ring (only as the last of its batch); only well formed
 * ones when good.
 */
static void fz_make(struct fz *f, unsigned int q, unsigned int i, bool last,
		    bool alone, bool good)
{
	struct fz_slot *s = &f->slot[q][i];
	uint64_t base = fz_slot_sector(q, i);
	struct fz_req rq = { 0 };
	unsigned int kind;

	s->want = VIRTIO_BLK_S_OK;
	s->type = 0;
	s->sector = 0;
	s->len = 0;
	s->data = 0;
	s->id_len = 0;
	s->want_len = 1;
	s->effect = FZ_E_NONE;
	s->mangle = FZ_M_NONE;
	s->answered = false;
	/* Aligned buffers take the direct I/O path, the others do not. */
	rq.r = s->rbuf + (fz_chance(f, 50) ? FZ_SLACK :
			  FZ_SLACK + fz_below(f, FZ_SLACK)) - HDR_SIZE;
	rq.w = s->wbuf + (fz_chance(f, 50) ? FZ_SLACK :
			  FZ_SLACK + fz_below(f, FZ_SLACK));

	kind = fz_below(f, good ? 60 : 100);
	if (kind >= 88 && !last)
		kind = fz_below(f, 88);
	if (kind < 60) {
		fz_good(f, s, &rq, base);
	} else if (kind < 88) {
		fz_bad(f, s, &rq, base);
	} else {
		/* A small read or write, then broken. */
		rq.type = fz_chance(f, 50) ? VIRTIO_BLK_T_IN :
					     VIRTIO_BLK_T_OUT;
		rq.sector = base;
		s->len = SECTOR * fz_below(f, 9);
		rq.stop = 1 + fz_below(f, 12);
		s->want = FZ_STOP;
	}
	fz_build(f, q, s, &rq, alone);
}

/*
 * Publishes queue q's batch (or breaks its avail index) and kicks, with
 * games on the used index when games.
 */
static void fz_kick(struct fz *f, unsigned int q, bool games)
{
	struct vmm *v = &f->c->v;
	struct vq *vq = &v->vq[q];
	struct fz_slot *s = &f->slot[q][f->nslots[q] - 1];

	if (s->mangle == FZ_M_AVAIL) {
		__atomic_store_n(&vq->avail->idx,
				 htole16(vq->published + QSIZE + 1 +
					 fz_below(f, 65535 - QSIZE)),
				 __ATOMIC_RELEASE);
		vq_notify(vq);
		return;
	}
	/* Notification games: none of them may lose a request. */
	if (v->event_idx)
		__atomic_store_n(vq->used_event, htole16(fz_rand(f)),
				 __ATOMIC_RELAXED);
	else
		vq->avail->flags = htole16(fz_chance(f, 50) ?
					   VRING_AVAIL_F_NO_INTERRUPT : 0);
	/* A used index the guest scribbled on is the device's to rewrite. */
	if (games && f->owed[q] && fz_chance(f, 10))
		vq->used->idx = htole16(vq->last_used + f->owed[q] + 1 +
					fz_below(f, 30000));
	if (!vq_kick(v, q) && fz_chance(f, 10))
		vq_notify(vq);
}

/* Waits until every queue has the used entries it is owed. */
static bool fz_wait(struct fz *f, int ms)
{
	int64_t deadline = now_us() + ms * 1000LL;
	struct vmm *v = &f->c->v;
	struct pollfd pfd[MAX_QUEUES];
	unsigned int q;
	bool all;

	for (;;) {
		all = true;
		for (q = 0; q < v->nq; q++) {
			struct vq *vq = &v->vq[q];

			if ((uint16_t)(vq_used_idx(vq) - vq->last_used) !=
			    f->owed[q])
				all = false;
			pfd[q] = (struct pollfd){ .fd = vq->call,
						  .events = POLLIN };
		}
		if (all)
			return true;
		if (now_us() > deadline)
			return false;
		if (poll(pfd, v->nq, 1) > 0) {
			for (q = 0; q < v->nq; q++) {
				if (pfd[q].revents & POLLIN)
					drain(pfd[q].fd);
			}
		}
	}
}

/* Checks one answered request and applies it to the copy of the store. */
static void fz_check(struct __test_metadata *_metadata, struct fz *f,
		     unsigned int q, struct fz_slot *s, uint32_t len)
{
	struct vmm *v = &f->c->v;
	uint8_t st = *gptr(v, s->st);
	unsigned int i = s - f->slot[q];
	uint64_t sec;
	size_t off;

	ASSERT_FALSE(s->answered) TH_LOG("q%u slot %u answered twice", q, i);
	s->answered = true;
	ASSERT_NE(FZ_STOP, s->want)
		TH_LOG("q%u slot %u: a chain that stops the ring (%d) answered",
		       q, i, s->mangle);
	if (s->want == FZ_ANY) {
		ASSERT_GE(VIRTIO_BLK_S_UNSUPP, st);
	} else {
		ASSERT_EQ(s->want, st)
			TH_LOG("batch %llu q%u slot %u: type %u sector %llu len %u",
			       f->batches, q, i, s->type,
			       (unsigned long long)s->sector, s->len);
		ASSERT_EQ(fz_used_len(s), len)
			TH_LOG("q%u slot %u type %u: used length", q, i,
			       s->type);
	}
	f->status[st]++;
	if (s->type == VIRTIO_BLK_T_GET_ID)
		ASSERT_EQ(0, memcmp(gpa_to_hva(v, s->data, s->id_len + 1),
				    fz_serial, s->id_len))
			TH_LOG("q%u slot %u: GET_ID returned another serial",
			       q, i);
	if (st != VIRTIO_BLK_S_OK && s->want != FZ_ANY)
		return;
	off = s->len ? fz_off(s->sector) : 0;
	switch (s->type) {
	case VIRTIO_BLK_T_IN:
		for (sec = 0; sec < s->len / SECTOR; sec++) {
			if (!f->known[s->sector - FZ_BASE + sec])
				continue;
			ASSERT_EQ(0, memcmp(gpa_to_hva(v, s->data + sec * SECTOR,
						       SECTOR),
					    f->copy + off + sec * SECTOR,
					    SECTOR))
				TH_LOG("q%u slot %u: read of sector %llu differs",
				       q, i, (unsigned long long)
				       (s->sector + sec));
		}
		break;
	case VIRTIO_BLK_T_OUT:
		memcpy(f->copy + off, gpa_to_hva(v, s->data, s->len), s->len);
		memset(f->known + (s->sector - FZ_BASE), 1, s->len / SECTOR);
		break;
	default:
		if (!s->len || s->effect == FZ_E_NONE)
			break;
		if (s->effect == FZ_E_ZERO && st == VIRTIO_BLK_S_OK) {
			memset(f->copy + off, 0, s->len);
			memset(f->known + (s->sector - FZ_BASE), 1,
			       s->len / SECTOR);
		} else {
			memset(f->known + (s->sector - FZ_BASE), 0,
			       s->len / SECTOR);
		}
		break;
	}
}

/* How fz_setup() finds the device. */
enum fz_start {
	FZ_FIRST,		/* opened, never set up */
	FZ_RESET,		/* set up: reset it first */
	FZ_WAS_RESET,		/* reset already */
	FZ_CLOSED,		/* closed: open it again */
};

/* A new device setup: random ring features and poll budgets. */
static void fz_setup(struct __test_metadata *_metadata, struct fz *f,
		     enum fz_start how)
{
	static const unsigned int budgets[] = { 0, 50, 1000, 200000 };
	struct ctx *c = f->c;
	struct vmm *v = &c->v;
	unsigned int q, us;

	if (how == FZ_RESET)
		ASSERT_EQ(0, ioctl(v->fd, VHOST_RESET_OWNER))
			TH_LOG("VHOST_RESET_OWNER: %s", strerror(errno));
	if (how != FZ_FIRST)
		f->resets++;
	v->event_idx = fz_chance(f, 50);
	v->indirect = fz_chance(f, 50);
	if (how == FZ_CLOSED)
		ASSERT_OK(vmm_reopen(v, c->be.fd));
	else
		ASSERT_OK(vmm_start(v, c->be.fd));
	ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_SERIAL, fz_serial));
	for (q = 0; q < v->nq; q++) {
		us = f->no_poll ? 0 : budgets[fz_below(f, ARRAY_SIZE(budgets))];
		ASSERT_OK(vmm_set_poll_us(v, q, us));
	}
	if (how != FZ_FIRST)
		check_alive(_metadata, c);
}

/*
 * Makes a batch, up to FZ_SLOTS requests on every queue, and kicks them
 * all at once.  Returns the number of requests made.
 */
static unsigned int fz_submit(struct fz *f, unsigned long long left,
			      bool good)
{
	struct vmm *v = &f->c->v;
	unsigned int q, i, n, made = 0;

	for (q = 0; q < v->nq; q++) {
		n = 1 + fz_below(f, FZ_SLOTS);
		if (n > left - made)
			n = left - made;
		f->nslots[q] = n;
		f->owed[q] = 0;
		for (i = 0; i < n; i++) {
			fz_make(f, q, i, i + 1 == n, n == 1, good);
			if (f->slot[q][i].want != FZ_STOP)
				f->owed[q]++;
		}
		f->stops[q] = f->owed[q] != n;
		made += n;
	}
	for (q = 0; q < v->nq; q++) {
		if (f->nslots[q])
			fz_kick(f, q, !good);
	}
	f->requests += made;
	f->batches++;
	return made;
}

/* Takes the n used entries queue q has and checks them. */
static void fz_collect(struct __test_metadata *_metadata, struct fz *f,
		       unsigned int q, unsigned int n)
{
	struct vmm *v = &f->c->v;
	struct used u;
	unsigned int i;

	for (i = 0; i < n; i++) {
		ASSERT_EQ(1, vq_get_used(v, q, &u))
			TH_LOG("queue %u: bad used head", q);
		fz_check(_metadata, f, q,
			 &f->slot[q][f->head_slot[q][u.head]], u.len);
	}
	/* Interrupts for the synchronous requests that follow. */
	v->vq[q].avail->flags = 0;
}

/*
 * Waits for the batch: every request answered as owed, and a ring that
 * must stop stopped and reported; then resets the device if one did.
 */
static void fz_finish(struct __test_metadata *_metadata, struct fz *f)
{
	struct vmm *v = &f->c->v;
	bool stop = false;
	unsigned int q;

	ASSERT_TRUE(fz_wait(f, FZ_WAIT_MS)) {
		for (q = 0; q < v->nq; q++)
			TH_LOG("queue %u: %u of %u requests answered", q,
			       (uint16_t)(vq_used_idx(&v->vq[q]) -
					  v->vq[q].last_used), f->owed[q]);
	}
	for (q = 0; q < v->nq; q++) {
		struct vq *vq = &v->vq[q];

		fz_collect(_metadata, f, q, f->owed[q]);
		if (f->stops[q]) {
			struct fz_slot *s = &f->slot[q][f->nslots[q] - 1];

			ASSERT_TRUE(vq_err_signalled(vq, FZ_WAIT_MS))
				TH_LOG("queue %u: broken chain (%d) not reported",
				       q, s->mangle);
			ASSERT_FALSE(vq_has_used(vq))
				TH_LOG("queue %u: broken chain answered", q);
			ASSERT_EQ(FZ_POISON, *gptr(v, s->st));
			f->stopped++;
			stop = true;
		} else {
			ASSERT_FALSE(vq_err_signalled(vq, 0))
				TH_LOG("queue %u: a ring error without cause",
				       q);
		}
	}
	if (stop)
		fz_setup(_metadata, f, FZ_RESET);
}

/* The fuzzed area reads back as the copy says, from the store and the device. */
static void fz_verify(struct __test_metadata *_metadata, struct fz *f)
{
	struct ctx *c = f->c;
	uint8_t *got = malloc(FZ_SLOT_BYTES);
	uint64_t sector, k;
	uint32_t len = 0;
	int ret;

	ASSERT_NE(NULL, got);
	for (sector = FZ_BASE; sector < FZ_BASE + FZ_SECTORS;
	     sector += FZ_SLOT_SECTORS) {
		ret = be_io(&c->be, false, sector * SECTOR, got,
			    FZ_SLOT_BYTES);
		ASSERT_EQ(0, ret);
		for (k = 0; k < FZ_SLOT_SECTORS; k++) {
			if (!f->known[sector - FZ_BASE + k])
				continue;
			ASSERT_EQ(0, memcmp(got + k * SECTOR,
					    f->copy + fz_off(sector + k),
					    SECTOR))
				TH_LOG("store: sector %llu differs",
				       (unsigned long long)(sector + k));
		}
		ASSERT_EQ(VIRTIO_BLK_S_OK,
			  blk_rw(_metadata, c, VIRTIO_BLK_T_IN, sector, c->rd,
				 FZ_SLOT_BYTES, 3, &len));
		for (k = 0; k < FZ_SLOT_SECTORS; k++) {
			if (!f->known[sector - FZ_BASE + k])
				continue;
			ASSERT_EQ(0, memcmp(gpa_to_hva(&c->v, c->rd + k * SECTOR,
						       SECTOR),
					    f->copy + fz_off(sector + k),
					    SECTOR))
				TH_LOG("device: sector %llu differs",
				       (unsigned long long)(sector + k));
		}
	}
	free(got);
}

/* What races with I/O in flight on every queue. */
enum fz_race {
	FZ_R_MEM_SAME,		/* VHOST_SET_MEM_TABLE, the same table */
	FZ_R_MEM_SHRINK,	/* ... without the region of the buffers */
	FZ_R_DETACH,		/* VHOST_BLK_SET_BACKEND -1, then again */
	FZ_R_REPLACE,		/* ... another file of the same store */
	FZ_R_VRING_BASE,	/* VHOST_GET_VRING_BASE on every ring */
	FZ_R_RESET,		/* VHOST_RESET_OWNER */
	FZ_R_CLOSE,		/* close() */
	FZ_R_COUNT,
};

static const char *const fz_race_names[FZ_R_COUNT] = {
	"SET_MEM_TABLE", "SET_MEM_TABLE smaller", "detach", "SET_BACKEND",
	"GET_VRING_BASE", "RESET_OWNER", "close",
};

/* A write or discard not answered may have landed or not. */
static void fz_forget_unanswered(struct fz *f)
{
	unsigned int q, i;
	struct fz_slot *s;

	for (q = 0; q < f->c->v.nq; q++) {
		for (i = 0; i < f->nslots[q]; i++) {
			s = &f->slot[q][i];
			if (!s->answered && s->effect != FZ_E_NONE && s->len)
				memset(f->known + (s->sector - FZ_BASE), 0,
				       s->len / SECTOR);
		}
	}
}

/* A batch of well-formed requests, and race while it is in flight. */
static void fz_race(struct __test_metadata *_metadata, struct fz *f,
		    enum fz_race race, int alt_fd)
{
	struct ctx *c = f->c;
	struct vmm *v = &c->v;
	struct vhost_vring_state st;
	unsigned int q, n;

	fz_submit(f, ULLONG_MAX, true);
	if (fz_chance(f, 50))
		usleep(fz_below(f, 500));
	switch (race) {
	case FZ_R_MEM_SAME:
		ASSERT_EQ(0, vmm_set_mem(v, NREGIONS));
		break;
	case FZ_R_DETACH:
		ASSERT_EQ(0, vmm_set_backend(v, -1));
		if (fz_chance(f, 50))
			usleep(fz_below(f, 500));
		ASSERT_EQ(0, vmm_set_backend(v, c->be.fd));
		break;
	case FZ_R_REPLACE:
		ASSERT_EQ(0, vmm_set_backend(v, alt_fd));
		break;
	case FZ_R_VRING_BASE:
		/* What a ring took is answered when the call returns. */
		for (q = 0; q < v->nq; q++) {
			st = (struct vhost_vring_state){ .index = q };
			ASSERT_EQ(0, ioctl(v->fd, VHOST_GET_VRING_BASE, &st));
			ASSERT_EQ((uint16_t)st.num, vq_used_idx(&v->vq[q]))
				TH_LOG("queue %u: requests taken, not answered",
				       q);
		}
		/* The rest is served once a backend is set again. */
		ASSERT_EQ(0, vmm_set_backend(v, c->be.fd));
		break;
	default:
		if (race == FZ_R_MEM_SHRINK) {
			/* Chains in region 1 now stop their ring. */
			ASSERT_EQ(0, vmm_set_mem(v, 1));
			if (fz_chance(f, 50))
				usleep(fz_below(f, 500));
		}
		if (race == FZ_R_CLOSE) {
			close(v->fd);
			v->fd = -1;
		} else {
			ASSERT_EQ(0, ioctl(v->fd, VHOST_RESET_OWNER));
		}
		/* Whatever was answered was answered right. */
		for (q = 0; q < v->nq; q++) {
			n = (uint16_t)(vq_used_idx(&v->vq[q]) -
				       v->vq[q].last_used);
			ASSERT_GE(f->owed[q], n);
			fz_collect(_metadata, f, q, n);
			vq_err_signalled(&v->vq[q], 0);
		}
		fz_forget_unanswered(f);
		fz_setup(_metadata, f, race == FZ_R_CLOSE ? FZ_CLOSED :
							   FZ_WAS_RESET);
		return;
	}
	fz_finish(_metadata, f);
	if (race == FZ_R_REPLACE)
		ASSERT_EQ(0, vmm_set_backend(v, c->be.fd));
}

FIXTURE(fuzz) {
	struct ctx c;
	struct fz f;
};

FIXTURE_SETUP(fuzz)
{
	struct ctx *c = &self->c;
	struct fz *f = &self->f;
	const char *seed = getenv("VBP_FUZZ_SEED");
	unsigned int q, i;

	ctx_init(c);
	f->c = c;
	be_open(_metadata, &c->be, getenv("VBP_TEST_BDEV"));
	if (_metadata->exit_code)
		return;
	c->cap = c->be.size / SECTOR;
	ASSERT_LE(FZ_BASE + FZ_SECTORS, c->cap);
	f->no_poll = !env_uint("VBP_FUZZ_POLL", 1);
	f->rnd = seed && *seed ? strtoull(seed, NULL, 0) :
		 mix64(now_us() ^ ((uint64_t)getpid() << 32));
	c->seed = f->rnd;
	TH_LOG("VBP_FUZZ_SEED=%llu on %s", (unsigned long long)f->rnd,
	       c->be.bdev ? getenv("VBP_TEST_BDEV") : "a file");

	ASSERT_OK(vmm_open_kernel(&c->v, false, false));
	ctx_scratch(c);
	for (q = 0; q < MAX_QUEUES; q++) {
		for (i = 0; i < FZ_SLOTS; i++) {
			f->slot[q][i].rbuf = galloc(&c->v, 1, FZ_BUF_BYTES, 4096);
			f->slot[q][i].wbuf = galloc(&c->v, 1, FZ_BUF_BYTES, 4096);
		}
	}

	/* The fuzzed area starts out as random data the copy knows. */
	f->copy = malloc((size_t)FZ_SECTORS * SECTOR);
	f->known = malloc(FZ_SECTORS);
	ASSERT_NE(NULL, f->copy);
	ASSERT_NE(NULL, f->known);
	fill_rand(f->copy, (size_t)FZ_SECTORS * SECTOR, fz_rand(f));
	memset(f->known, 1, FZ_SECTORS);
	store_write(_metadata, c, FZ_BASE, f->copy, (size_t)FZ_SECTORS * SECTOR);
	fz_setup(_metadata, f, FZ_FIRST);
}

FIXTURE_TEARDOWN(fuzz)
{
	vmm_close(&self->c.v);
	be_close(&self->c.be);
	free(self->f.copy);
	free(self->f.known);
}

/*
 * VBP_FUZZ_REQUESTS fuzzed requests, then the whole fuzzed area compared
 * with what the answers said, through the store and through the device.
 */
TEST_F_TIMEOUT(fuzz, rings, 7200)
{
	struct fz *f = &self->f;
	unsigned long long total = env_uint("VBP_FUZZ_REQUESTS", 10000);
	int64_t t0 = now_us();

	while (f->requests < total) {
		fz_submit(f, total - f->requests, false);
		fz_finish(_metadata, f);
	}
	fz_verify(_metadata, f);
	check_alive(_metadata, &self->c);
	TH_LOG("%llu requests in %llu batches on %u queues, %.1f s",
	       f->requests, f->batches, self->c.v.nq, (now_us() - t0) / 1e6);
	TH_LOG("answers: %llu OK, %llu IOERR, %llu UNSUPP; %llu rings stopped, %llu resets",
	       f->status[VIRTIO_BLK_S_OK], f->status[VIRTIO_BLK_S_IOERR],
	       f->status[VIRTIO_BLK_S_UNSUPP], f->stopped, f->resets);
}

/*
 * VBP_RACE_ROUNDS (default 350) batches of well-formed requests on every
 * queue, each raced by a memory table change, a backend detached, replaced
 * or asked for its ring base, a reset or a close, in turn.  What was
 * answered was answered right; the store holds what was written.
 */
TEST_F_TIMEOUT(fuzz, races, 7200)
{
	struct fz *f = &self->f;
	struct ctx *c = &self->c;
	unsigned int rounds = env_uint("VBP_RACE_ROUNDS", 350), i;
	unsigned int count[FZ_R_COUNT] = { 0 };
	char path[64];
	int alt_fd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", c->be.fd);
	alt_fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, alt_fd);
	for (i = 0; i < rounds; i++) {
		fz_race(_metadata, f, i % FZ_R_COUNT, alt_fd);
		count[i % FZ_R_COUNT]++;
	}
	close(alt_fd);
	fz_verify(_metadata, f);
	check_alive(_metadata, c);
	for (i = 0; i < FZ_R_COUNT; i++)
		TH_LOG("%s raced %u times", fz_race_names[i], count[i]);
	TH_LOG("%llu requests, %llu resets", f->requests, f->resets);
}

TEST_HARNESS_MAIN
