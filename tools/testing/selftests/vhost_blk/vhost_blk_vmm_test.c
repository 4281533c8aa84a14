// SPDX-License-Identifier: GPL-2.0
/*
 * A mini virtual machine monitor and virtio-blk guest driver in one process,
 * run against /dev/vhost-blk-poll.  The process's own memory is the guest's
 * memory: two regions at distant guest-physical addresses, each its own
 * anonymous mapping.  The test lays split virtqueues out in it, negotiates
 * the features, attaches a backing file or block device and checks what the
 * device does with well-formed and malformed requests, byte for byte against
 * the backing store.
 *
 * Needs root and the module loaded.  Environment:
 *   VBP_TEST_DIR   directory for the 64 MiB backing file (default /tmp)
 *   VBP_TEST_BDEV  a block device the tests may overwrite (32 MiB at least);
 *                  without it the block-device variants are skipped
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>
#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#include "../kselftest_harness.h"

#ifndef VHOST_BLK_SET_SERIAL
#define VHOST_BLK_SET_SERIAL	_IOW(VHOST_VIRTIO, 0x92, char[20])
#endif
#ifndef VHOST_BLK_MAX_DISCARD_SEG
#define VHOST_BLK_MAX_DISCARD_SEG	1
#endif

#define DEV_PATH	"/dev/vhost-blk-poll"
#define MAXQ_PARAM	"/sys/module/vhost_blk_poll/parameters/max_queues"

#define SECTOR		512
#define QSIZE		256		/* descriptors of each virtqueue */
#define MAX_QUEUES	4		/* virtqueues the VMM sets up */
#define IND_MAX		64		/* entries of an indirect table */
#define MAX_DATA	(IND_MAX - 2)	/* data segments of one request */
#define HDR_SIZE	16		/* struct virtio_blk_outhdr */

/* Guest memory: two regions, a hole between them. */
#define NREGIONS	2
#define REGION_SIZE	(16ULL << 20)
#define REGION1_GPA	0x40000000ULL
#define HOLE_GPA	0x20000000ULL	/* mapped by neither region */
/* Kept free at the end of region 0 and the start of region 1. */
#define EDGE_SIZE	(64ULL << 10)

#define FILE_SIZE	(64ULL << 20)
#define MIN_BDEV_SIZE	(32ULL << 20)

#define WAIT_MS		5000	/* longest wait for a completion */
#define QUIET_MS	500	/* how long a stopped ring is watched */
#define RD_MAX		(64 << 10)	/* largest check_dev() read */

/* A free sector range for each test that needs one (in sectors). */
#define ALIVE_SECTOR	9000
#define DZ_SECTOR	3000
#define DZ_LEN		64
#define PB_SECTOR	24576	/* 128 sectors */

/* The queues x requests test. */
#define BIG_REQS	1000
#define BIG_BATCH	128
#define BIG_LEN		4096
#define BIG_BASE	32768	/* first sector; queues follow each other */

static const uint64_t region_gpa[NREGIONS] = { 0, REGION1_GPA };

/* Device-specific features negotiated whenever the device offers them. */
static const uint64_t blk_features =
	(1ULL << VIRTIO_BLK_F_SEG_MAX) |
	(1ULL << VIRTIO_BLK_F_BLK_SIZE) |
	(1ULL << VIRTIO_BLK_F_FLUSH) |
	(1ULL << VIRTIO_BLK_F_MQ) |
	(1ULL << VIRTIO_BLK_F_DISCARD) |
	(1ULL << VIRTIO_BLK_F_WRITE_ZEROES);

/* ------------------------------------------------------------------ */
/* The mini-VMM: guest memory, split virtqueues, notifications          */
/* ------------------------------------------------------------------ */

/* One buffer of a request, as the guest describes it. */
struct seg {
	uint64_t gpa;
	uint32_t len;
	bool wr;		/* device-writable */
};

struct vq {
	/* The ring, in guest memory. */
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	uint16_t *used_event;	/* after avail->ring[], written by us */
	uint16_t *avail_event;	/* after used->ring[], written by the device */
	uint64_t ind_gpa;	/* QSIZE indirect tables, one per head */
	int kick;
	int call;
	int err;		/* the device reports a broken ring here */
	uint16_t avail_idx;	/* avail entries written */
	uint16_t published;	/* avail->idx as last published */
	uint16_t last_used;	/* used entries consumed */
	unsigned int inflight;
	unsigned int nfree;
	uint16_t free[QSIZE];	/* stack of free descriptors */
	/* Our own copy of the chains: the device cannot corrupt it. */
	uint16_t next[QSIZE];
	uint16_t ndesc[QSIZE];	/* descriptors of the chain at a head, or 0 */
	uint32_t tag[QSIZE];	/* the submitter's tag of a head's request */
};

struct vmm {
	int fd;
	unsigned int nvqs;	/* virtqueues of the device */
	unsigned int nq;	/* virtqueues set up */
	bool event_idx;
	bool indirect;
	uint64_t features;
	char *mem[NREGIONS];
	uint64_t brk[NREGIONS];	/* bump allocator: next free offset */
	uint64_t end[NREGIONS];	/* and where it stops */
	struct vq vq[MAX_QUEUES];
};

/* A completion taken from a used ring. */
struct used {
	uint16_t head;
	uint32_t len;
	uint32_t tag;
};

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int read_max_queues(void)
{
	char buf[16] = "";
	int fd, n;

	fd = open(MAXQ_PARAM, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? atoi(buf) : -1;
}

/*
 * Guest-physical to VMM address of [gpa, gpa + len).  The range is the
 * test's own doing, so one outside guest memory is a bug of the test.
 */
static void *gpa_to_hva(struct vmm *v, uint64_t gpa, uint64_t len)
{
	unsigned int i;

	for (i = 0; i < NREGIONS; i++) {
		if (gpa >= region_gpa[i] && len <= REGION_SIZE &&
		    gpa - region_gpa[i] <= REGION_SIZE - len)
			return v->mem[i] + (gpa - region_gpa[i]);
	}
	fprintf(stderr, "# GPA %#llx+%llu is not guest memory\n",
		(unsigned long long)gpa, (unsigned long long)len);
	abort();
}

/* VMM address to guest-physical; ~0 when it is not guest memory. */
static uint64_t hva_to_gpa(struct vmm *v, const void *p)
{
	const char *c = p;
	unsigned int i;

	for (i = 0; i < NREGIONS; i++) {
		if (c >= v->mem[i] && c < v->mem[i] + REGION_SIZE)
			return region_gpa[i] + (uint64_t)(c - v->mem[i]);
	}
	return ~0ULL;
}

/* Bump allocator of guest memory; align is a power of two. */
static uint64_t galloc(struct vmm *v, unsigned int r, uint64_t size,
		       uint64_t align)
{
	uint64_t off = (v->brk[r] + align - 1) & ~(align - 1);

	if (off > v->end[r] || size > v->end[r] - off) {
		fprintf(stderr, "# guest memory region %u exhausted\n", r);
		abort();
	}
	v->brk[r] = off + size;
	return region_gpa[r] + off;
}

static uint8_t *gptr(struct vmm *v, uint64_t gpa)
{
	return gpa_to_hva(v, gpa, 1);
}

static void drain(int efd)
{
	uint64_t cnt;

	if (read(efd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN)
		fprintf(stderr, "# eventfd read: %s\n", strerror(errno));
}

/* Opens the device and lays the rings out in fresh guest memory. */
static void vmm_init(struct __test_metadata *_metadata, struct vmm *v,
		     bool event_idx, bool indirect)
{
	unsigned int i;
	int nvqs;

	v->fd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, v->fd) TH_LOG("open %s: %s", DEV_PATH, strerror(errno));
	nvqs = read_max_queues();
	ASSERT_LT(0, nvqs);
	v->nvqs = nvqs;
	v->nq = v->nvqs < MAX_QUEUES ? v->nvqs : MAX_QUEUES;
	v->event_idx = event_idx;
	v->indirect = indirect;

	for (i = 0; i < NREGIONS; i++) {
		v->mem[i] = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT_NE(MAP_FAILED, v->mem[i]);
	}
	v->brk[0] = 0;
	v->end[0] = REGION_SIZE - EDGE_SIZE;
	v->brk[1] = EDGE_SIZE;
	v->end[1] = REGION_SIZE;
	ASSERT_EQ(REGION1_GPA + 5,
		  hva_to_gpa(v, gpa_to_hva(v, REGION1_GPA + 5, 1)));

	/* Rings in region 0, indirect tables in region 1. */
	for (i = 0; i < MAX_QUEUES; i++) {
		struct vq *vq = &v->vq[i];

		vq->desc = gpa_to_hva(v, galloc(v, 0, 16 * QSIZE, 4096),
				      16 * QSIZE);
		vq->avail = gpa_to_hva(v, galloc(v, 0, 6 + 2 * QSIZE, 4096),
				       6 + 2 * QSIZE);
		vq->used = gpa_to_hva(v, galloc(v, 0, 6 + 8 * QSIZE, 4096),
				      6 + 8 * QSIZE);
		vq->used_event = (uint16_t *)&vq->avail->ring[QSIZE];
		vq->avail_event = (uint16_t *)&vq->used->ring[QSIZE];
		vq->ind_gpa = galloc(v, 1, 16ULL * IND_MAX * QSIZE, 4096);
		vq->kick = -1;
		vq->call = -1;
		vq->err = -1;
	}
}

static void vmm_close(struct vmm *v)
{
	unsigned int i;

	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
	for (i = 0; i < MAX_QUEUES; i++) {
		if (v->vq[i].kick >= 0)
			close(v->vq[i].kick);
		if (v->vq[i].call >= 0)
			close(v->vq[i].call);
		if (v->vq[i].err >= 0)
			close(v->vq[i].err);
		v->vq[i].kick = -1;
		v->vq[i].call = -1;
		v->vq[i].err = -1;
	}
	for (i = 0; i < NREGIONS; i++) {
		if (v->mem[i] && v->mem[i] != MAP_FAILED)
			munmap(v->mem[i], REGION_SIZE);
		v->mem[i] = NULL;
	}
}

static int vmm_set_backend(struct vmm *v, int fd)
{
	return ioctl(v->fd, VHOST_BLK_SET_BACKEND, &fd) ? -errno : 0;
}

/* An empty ring, fresh eventfds, and the vring ioctls for queue q. */
static void vq_setup(struct __test_metadata *_metadata, struct vmm *v,
		     unsigned int q)
{
	struct vq *vq = &v->vq[q];
	struct vhost_vring_state s = { .index = q };
	struct vhost_vring_addr a = { .index = q };
	struct vhost_vring_file f = { .index = q };
	unsigned int i;

	memset(vq->desc, 0, 16 * QSIZE);
	memset(vq->avail, 0, 6 + 2 * QSIZE);
	memset(vq->used, 0, 6 + 8 * QSIZE);
	vq->avail_idx = 0;
	vq->published = 0;
	vq->last_used = 0;
	vq->inflight = 0;
	vq->nfree = QSIZE;
	for (i = 0; i < QSIZE; i++) {
		vq->free[i] = QSIZE - 1 - i;
		vq->ndesc[i] = 0;
	}

	if (vq->kick >= 0)
		close(vq->kick);
	if (vq->call >= 0)
		close(vq->call);
	if (vq->err >= 0)
		close(vq->err);
	vq->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	vq->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	vq->err = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ASSERT_LE(0, vq->kick);
	ASSERT_LE(0, vq->call);
	ASSERT_LE(0, vq->err);

	s.num = QSIZE;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_NUM, &s))
		TH_LOG("vring %u num: %s", q, strerror(errno));
	s.num = 0;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_BASE, &s))
		TH_LOG("vring %u base: %s", q, strerror(errno));
	a.desc_user_addr = (uintptr_t)vq->desc;
	a.avail_user_addr = (uintptr_t)vq->avail;
	a.used_user_addr = (uintptr_t)vq->used;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_ADDR, &a))
		TH_LOG("vring %u addr: %s", q, strerror(errno));
	f.fd = vq->kick;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_KICK, &f))
		TH_LOG("vring %u kick: %s", q, strerror(errno));
	f.fd = vq->call;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_CALL, &f))
		TH_LOG("vring %u call: %s", q, strerror(errno));
	f.fd = vq->err;
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_VRING_ERR, &f))
		TH_LOG("vring %u err: %s", q, strerror(errno));
}

/* The memory table: the first nregions regions of guest memory. */
static int vmm_set_mem(struct vmm *v, unsigned int nregions)
{
	struct vhost_memory *mem;
	unsigned int i;
	int ret;

	mem = calloc(1, sizeof(*mem) + nregions * sizeof(mem->regions[0]));
	if (!mem)
		return -ENOMEM;
	mem->nregions = nregions;
	for (i = 0; i < nregions; i++) {
		mem->regions[i].guest_phys_addr = region_gpa[i];
		mem->regions[i].memory_size = REGION_SIZE;
		mem->regions[i].userspace_addr = (uintptr_t)v->mem[i];
	}
	ret = ioctl(v->fd, VHOST_SET_MEM_TABLE, mem) ? -errno : 0;
	free(mem);
	return ret;
}

/*
 * What a VMM does to start the device: ownership, features, memory map,
 * vrings, and the backend last (the vring setup is refused once a backend
 * is attached).
 */
static void vmm_start(struct __test_metadata *_metadata, struct vmm *v,
		      int backend)
{
	uint64_t offered = 0, want;
	unsigned int i;
	int ret;

	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_OWNER))
		TH_LOG("VHOST_SET_OWNER: %s", strerror(errno));
	ASSERT_EQ(0, ioctl(v->fd, VHOST_GET_FEATURES, &offered));
	want = (1ULL << VIRTIO_F_VERSION_1) | (offered & blk_features);
	if (v->event_idx)
		want |= 1ULL << VIRTIO_RING_F_EVENT_IDX;
	if (v->indirect)
		want |= 1ULL << VIRTIO_RING_F_INDIRECT_DESC;
	ASSERT_EQ(want, want & offered)
		TH_LOG("device lacks features %#llx",
		       (unsigned long long)(want & ~offered));
	ASSERT_EQ(0, ioctl(v->fd, VHOST_SET_FEATURES, &want))
		TH_LOG("VHOST_SET_FEATURES: %s", strerror(errno));
	v->features = want;

	ret = vmm_set_mem(v, NREGIONS);
	ASSERT_EQ(0, ret) TH_LOG("VHOST_SET_MEM_TABLE: %s", strerror(-ret));

	for (i = 0; i < v->nq; i++)
		vq_setup(_metadata, v, i);

	ret = vmm_set_backend(v, backend);
	ASSERT_EQ(0, ret) TH_LOG("VHOST_BLK_SET_BACKEND: %s", strerror(-ret));
}

/* Closes the device and starts a fresh one on the same guest memory. */
static void vmm_reopen(struct __test_metadata *_metadata, struct vmm *v,
		       int backend)
{
	if (v->fd >= 0)
		close(v->fd);
	v->fd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, v->fd) TH_LOG("open %s: %s", DEV_PATH, strerror(errno));
	vmm_start(_metadata, v, backend);
}

static void desc_set(struct vring_desc *d, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	d->addr = htole64(addr);
	d->len = htole32(len);
	d->flags = htole16(flags);
	d->next = htole16(next);
}

/* A free descriptor of the ring; the caller checked there is one. */
static uint16_t vq_pop_desc(struct vq *vq)
{
	return vq->free[--vq->nfree];
}

/* Makes the chain at head an avail entry (visible once published). */
static void vq_push(struct vq *vq, uint16_t head, uint16_t ndesc,
		    uint32_t tag)
{
	vq->ndesc[head] = ndesc;
	vq->tag[head] = tag;
	vq->avail->ring[vq->avail_idx % QSIZE] = htole16(head);
	vq->avail_idx++;
	vq->inflight++;
}

/*
 * Adds a request made of n segments to queue q: a chain of descriptors, or
 * one descriptor pointing to an indirect table of them.  Returns the head,
 * or -1 when the ring lacks free descriptors.  The device sees the request
 * after vq_kick().
 */
static int vq_add(struct vmm *v, unsigned int q, const struct seg *s,
		  unsigned int n, bool indirect, uint32_t tag)
{
	struct vq *vq = &v->vq[q];
	unsigned int i, nd = indirect ? 1 : n;
	struct vring_desc *tbl;
	uint16_t id[QSIZE];
	uint64_t tgpa;
	bool more;

	if (!n || n > QSIZE || nd > vq->nfree || (indirect && n > IND_MAX))
		return -1;
	for (i = 0; i < nd; i++)
		id[i] = vq_pop_desc(vq);

	if (indirect) {
		tgpa = vq->ind_gpa + 16ULL * IND_MAX * id[0];
		tbl = gpa_to_hva(v, tgpa, 16ULL * n);
		for (i = 0; i < n; i++) {
			more = i + 1 < n;
			desc_set(&tbl[i], s[i].gpa, s[i].len,
				 (s[i].wr ? VRING_DESC_F_WRITE : 0) |
				 (more ? VRING_DESC_F_NEXT : 0),
				 more ? i + 1 : 0);
		}
		desc_set(&vq->desc[id[0]], tgpa, 16 * n,
			 VRING_DESC_F_INDIRECT, 0);
		vq->next[id[0]] = 0;
	} else {
		for (i = 0; i < n; i++) {
			more = i + 1 < n;
			vq->next[id[i]] = more ? id[i + 1] : 0;
			desc_set(&vq->desc[id[i]], s[i].gpa, s[i].len,
				 (s[i].wr ? VRING_DESC_F_WRITE : 0) |
				 (more ? VRING_DESC_F_NEXT : 0),
				 vq->next[id[i]]);
		}
	}
	vq_push(vq, id[0], nd, tag);
	return id[0];
}

static bool vq_notify(struct vq *vq)
{
	uint64_t one = 1;

	return write(vq->kick, &one, sizeof(one)) == sizeof(one);
}

/*
 * Publishes the avail entries added since the last call and notifies the
 * device unless it suppressed notifications.  Returns whether it kicked.
 */
static bool vq_kick(struct vmm *v, unsigned int q)
{
	struct vq *vq = &v->vq[q];
	uint16_t old = vq->published, new = vq->avail_idx;
	bool need;

	if (old == new)
		return false;
	/* Descriptors and avail entries before the index. */
	__atomic_store_n(&vq->avail->idx, htole16(new), __ATOMIC_RELEASE);
	vq->published = new;
	/* The index before we look at the device's suppression. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (v->event_idx) {
		uint16_t ev = __atomic_load_n(vq->avail_event,
					      __ATOMIC_RELAXED);

		need = vring_need_event(le16toh(ev), new, old);
	} else {
		uint16_t fl = __atomic_load_n(&vq->used->flags,
					      __ATOMIC_RELAXED);

		need = !(le16toh(fl) & VRING_USED_F_NO_NOTIFY);
	}
	return need && vq_notify(vq);
}

/* Whether the device reported a broken ring within ms; clears it. */
static bool vq_err_signalled(struct vq *vq, int ms)
{
	struct pollfd pfd = { .fd = vq->err, .events = POLLIN };

	if (poll(&pfd, 1, ms) != 1)
		return false;
	drain(vq->err);
	return true;
}

static uint16_t vq_used_idx(struct vq *vq)
{
	return le16toh(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE));
}

static bool vq_has_used(struct vq *vq)
{
	return vq_used_idx(vq) != vq->last_used;
}

/*
 * Takes the next used entry of queue q and frees its descriptors.  Returns
 * 1, 0 when there is none, -1 when the device returned a head that is not
 * in flight.
 */
static int vq_get_used(struct vmm *v, unsigned int q, struct used *u)
{
	struct vq *vq = &v->vq[q];
	struct vring_used_elem *e;
	uint32_t id;
	uint16_t d;
	unsigned int i;

	if (!vq_has_used(vq))
		return 0;
	e = &vq->used->ring[vq->last_used % QSIZE];
	id = le32toh(e->id);
	if (id >= QSIZE || !vq->ndesc[id])
		return -1;
	u->head = id;
	u->len = le32toh(e->len);
	u->tag = vq->tag[id];
	vq->last_used++;
	for (i = 0, d = id; i < vq->ndesc[id]; i++, d = vq->next[d])
		vq->free[vq->nfree++] = d;
	vq->ndesc[id] = 0;
	vq->inflight--;
	return 1;
}

/*
 * Waits until one of the queues in qmask has a used entry (true) or ms
 * milliseconds have passed (false), sleeping on the call eventfds.
 */
static bool vmm_wait(struct vmm *v, unsigned int qmask, int ms)
{
	int64_t deadline = now_us() + ms * 1000LL, left;
	struct pollfd pfd[MAX_QUEUES];
	unsigned int q, n;

	for (;;) {
		n = 0;
		for (q = 0; q < v->nq; q++) {
			if (!(qmask & (1u << q)))
				continue;
			/* Ask for a notification on the next completion. */
			if (v->event_idx)
				__atomic_store_n(v->vq[q].used_event,
						 htole16(v->vq[q].last_used),
						 __ATOMIC_RELAXED);
			pfd[n].fd = v->vq[q].call;
			pfd[n].events = POLLIN;
			pfd[n].revents = 0;
			n++;
		}
		/* used_event before the used index: nothing slips by. */
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		for (q = 0; q < v->nq; q++) {
			if ((qmask & (1u << q)) && vq_has_used(&v->vq[q]))
				return true;
		}
		left = deadline - now_us();
		if (left <= 0 || !n)
			return false;
		if (poll(pfd, n, (left + 999) / 1000) <= 0)
			continue;
		for (q = 0; q < n; q++) {
			if (pfd[q].revents & POLLIN)
				drain(pfd[q].fd);
		}
	}
}

/*
 * Adds a request to queue q (through an indirect table when negotiated),
 * kicks and waits for its completion; returns the used length.
 */
static uint32_t run_req(struct __test_metadata *_metadata, struct vmm *v,
			unsigned int q, const struct seg *s, unsigned int n)
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
	int fd;		/* O_RDWR, for the device */
	int rofd;	/* O_RDONLY, for the device */
	int chk;	/* what the test reads and writes the store through */
	uint64_t size;
	bool discard;	/* the store can discard (punch holes) */
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Pseudo-random bytes, the same for the same seed. */
static void fill_rand(void *buf, size_t len, uint64_t seed)
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
static long first_diff(const void *a, const void *b, size_t len)
{
	const uint8_t *x = a, *y = b;
	size_t i;

	for (i = 0; i < len; i++) {
		if (x[i] != y[i])
			return i;
	}
	return -1;
}

static int full_io(int fd, bool wr, void *buf, size_t len, uint64_t off)
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
 * device goes through O_DIRECT and an aligned bounce buffer, so that
 * neither side sees a stale page cache.
 */
static int be_io(struct backend *be, bool wr, uint64_t off, void *buf,
		 size_t len)
{
	uint64_t start = off & ~4095ULL;
	uint64_t end = (off + len + 4095) & ~4095ULL;
	void *b;
	int ret;

	if (!be->bdev)
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

static void be_close(struct backend *be)
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
static bool bdev_can_discard(const struct stat *st)
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
static void be_open(struct __test_metadata *_metadata, struct backend *be,
		    bool bdev)
{
	char path[PATH_MAX];
	const char *dir;
	struct stat st;

	be->bdev = bdev;
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

/* ------------------------------------------------------------------ */
/* The fixture and virtio-blk requests                                  */
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

	v->fd = -1;
	c->be.fd = -1;
	c->be.rofd = -1;
	c->be.chk = -1;
	if (variant->bdev && !getenv("VBP_TEST_BDEV"))
		SKIP(return, "VBP_TEST_BDEV names no block device");
	be_open(_metadata, &c->be, variant->bdev);
	if (_metadata->exit_code)
		return;
	c->cap = c->be.size / SECTOR;
	c->seed = mix64(now_us() ^ ((uint64_t)getpid() << 32));

	vmm_init(_metadata, v, variant->event_idx, variant->indirect);
	c->hdr = galloc(v, 0, HDR_SIZE, 64);
	c->st = galloc(v, 0, 1, 64);
	c->dz = galloc(v, 0, 4096, 4096);
	c->rd = galloc(v, 1, RD_MAX, 4096);
	c->alive = galloc(v, 0, 4096, 4096);
	vmm_start(_metadata, v, c->be.fd);
}

FIXTURE_TEARDOWN(vmm)
{
	struct ctx *c = &self->c;

	vmm_close(&c->v);
	be_close(&c->be);
}

static uint64_t next_seed(struct ctx *c)
{
	return mix64(++c->seed);
}

static void set_hdr(struct vmm *v, uint64_t gpa, uint32_t type,
		    uint64_t sector)
{
	struct virtio_blk_outhdr h = {
		.type = htole32(type),
		.ioprio = 0,
		.sector = htole64(sector),
	};

	memcpy(gpa_to_hva(v, gpa, sizeof(h)), &h, sizeof(h));
}

/*
 * One synchronous request on queue q: the 16-byte header, the data
 * segments, the status byte.  Returns the status; *len gets the used
 * length.
 */
static uint8_t blk_req(struct __test_metadata *_metadata,
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
static unsigned int split(struct seg *s, uint64_t gpa, uint32_t len,
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
static uint8_t blk_rw(struct __test_metadata *_metadata,
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
static uint8_t blk_dwz(struct __test_metadata *_metadata,
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

static void store_write(struct __test_metadata *_metadata,
			struct ctx *c, uint64_t sector,
			void *buf, size_t len)
{
	int ret = be_io(&c->be, true, sector * SECTOR, buf, len);

	ASSERT_EQ(0, ret) TH_LOG("backing store write: %s", strerror(-ret));
}

/* The backing store holds expect at sector. */
static void check_store(struct __test_metadata *_metadata,
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
static void check_dev(struct __test_metadata *_metadata,
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

static void check_both(struct __test_metadata *_metadata,
		       struct ctx *c, uint64_t sector,
		       const void *expect, uint32_t len)
{
	check_store(_metadata, c, sector, expect, len);
	check_dev(_metadata, c, sector, expect, len);
}

/* A write and a read of fresh data through the device, both verified. */
static void check_alive(struct __test_metadata *_metadata,
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
static void reset_and_check(struct __test_metadata *_metadata,
			    struct ctx *c)
{
	ASSERT_EQ(0, ioctl(c->v.fd, VHOST_RESET_OWNER))
		TH_LOG("VHOST_RESET_OWNER: %s", strerror(errno));
	vmm_start(_metadata, &c->v, c->be.fd);
	check_alive(_metadata, c);
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
	uint8_t expect[4096];
	uint64_t buf;
	uint32_t len;
	uint8_t st;

	buf = galloc(&c->v, 0, sizeof(expect), 4096);
	fill_rand(expect, sizeof(expect), next_seed(c));
	memcpy(gpa_to_hva(&c->v, buf, sizeof(expect)), expect,
	       sizeof(expect));
	st = blk_rw(_metadata, c, VIRTIO_BLK_T_OUT, 800, buf,
		    sizeof(expect), 1, NULL);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	st = blk_req(_metadata, c, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, &len);
	ASSERT_EQ(VIRTIO_BLK_S_OK, st);
	EXPECT_EQ(1, len);
	check_both(_metadata, c, 800, expect, sizeof(expect));
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
	vmm_reopen(_metadata, v, c->be.rofd);

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

	vmm_reopen(_metadata, v, c->be.fd);
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

/* The poll budget of ring q, in microseconds (0: notifications only). */
static int set_poll_us(struct vmm *v, unsigned int q, unsigned int us)
{
	struct vhost_vring_state s = { .index = q, .num = us };

	return ioctl(v->fd, VHOST_SET_VRING_BUSYLOOP_TIMEOUT, &s);
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
	ASSERT_EQ(0, set_poll_us(v, 0, 0));
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
	struct seg s[3];
	struct used u;

	for (i = 0; i < n; i++) {
		q = queue < 0 ? i % v->nq : (unsigned int)queue;
		set_hdr(v, r[i].hdr, r[i].type, r[i].sector);
		*gptr(v, r[i].st) = 0xff;
		s[0] = (struct seg){ r[i].hdr, HDR_SIZE, false };
		s[1] = (struct seg){ r[i].data, r[i].len,
				     r[i].type == VIRTIO_BLK_T_IN };
		s[2] = (struct seg){ r[i].st, 1, true };
		if (!r[i].len)
			s[1] = s[2];
		ASSERT_LE(0, vq_add(v, q, s, r[i].len ? 3 : 2, v->indirect,
				    i));
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

/* Reads attribute name of a fault injection directory, or -1. */
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
		ASSERT_EQ(0, set_poll_us(&c->v, q, 0));
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
			ASSERT_EQ(0, set_poll_us(&c->v, q, mode ? 100000 : 0));
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
 * every sysfs write ends at once.
 */
TEST_F_TIMEOUT(vmm, queue_freeze_while_polling, 300)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	enum { N = 32 };
	struct freezer f = { .rounds = 200 };
	struct xreq r[N];
	unsigned int i, batches = 0;
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
	ASSERT_EQ(0, set_poll_us(v, 0, 100000));
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
	TH_LOG("%u batches of %u requests, longest sysfs write %lld ms",
	       batches, N, f.max_us / 1000);
	EXPECT_EQ(0, f.err);
	EXPECT_GT(2000, f.max_us / 1000);
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
	vmm_init(_metadata, v, false, true);
	vmm_start(_metadata, v, c->be.fd);
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

#define STATS_DIR	"/sys/kernel/debug/vhost_blk_poll"

/* One vring's line of the device's debugfs statistics. */
struct vq_stats {
	unsigned long long requests, kicks, signals, busy, idle, batches;
	int inflight;
	unsigned int poll_us;
	int cpu;
	unsigned long long polled;
};

/* The statistics of vring q of this process's newest device. */
static int read_stats(unsigned int q, struct vq_stats *st)
{
	char path[PATH_MAX], line[256], prefix[32];
	unsigned int best = 0, id, i;
	struct dirent *d;
	int ret = -1;
	DIR *dir;
	FILE *f;

	snprintf(prefix, sizeof(prefix), "%d-", getpid());
	dir = opendir(STATS_DIR);
	if (!dir)
		return -1;
	while ((d = readdir(dir))) {
		if (strncmp(d->d_name, prefix, strlen(prefix)))
			continue;
		id = strtoul(d->d_name + strlen(prefix), NULL, 10);
		if (id > best)
			best = id;
	}
	closedir(dir);
	if (!best)
		return -1;
	snprintf(path, sizeof(path), STATS_DIR "/%s%u/stats", prefix, best);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%u %llu %llu %llu %llu %llu %llu %d %u %d %llu",
			   &i, &st->requests, &st->kicks, &st->signals,
			   &st->busy, &st->idle, &st->batches, &st->inflight,
			   &st->poll_us, &st->cpu, &st->polled) == 11 &&
		    i == q) {
			ret = 0;
			break;
		}
	}
	fclose(f);
	return ret;
}

/* Makes the new avail entries visible, without notifying the device. */
static void vq_publish(struct vq *vq)
{
	__atomic_store_n(&vq->avail->idx, htole16(vq->avail_idx),
			 __ATOMIC_RELEASE);
	vq->published = vq->avail_idx;
}

/* Waits up to ms for a used entry by watching the ring alone. */
static bool vq_spin(struct vq *vq, int ms)
{
	int64_t deadline = now_us() + ms * 1000LL;

	while (!vq_has_used(vq)) {
		if (now_us() > deadline)
			return false;
		usleep(50);
	}
	return true;
}

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

	data = galloc(v, 1, 4096, 4096);
	fill_rand(gpa_to_hva(v, data, 4096), 4096, next_seed(c));
	/*
	 * A budget far longer than the gap between two requests, even on a
	 * loaded machine under software emulation.
	 */
	ASSERT_EQ(0, set_poll_us(v, 0, 1500000));
	ASSERT_EQ(0, read_stats(0, &st0)) TH_LOG("no statistics in debugfs");
	EXPECT_EQ(1500000, st0.poll_us);

	ASSERT_LE(0, add_write(c, 0, 300, data));
	ASSERT_TRUE(vq_kick(v, 0));
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
	ASSERT_EQ(0, read_stats(0, &st1));
	EXPECT_EQ(1, st1.kicks - st0.kicks);
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
	ASSERT_EQ(0, set_poll_us(v, 0, 1500000));
	/* No interrupts: the flag, or a used_event the ring never passes. */
	if (v->event_idx)
		__atomic_store_n(vq->used_event, htole16(vq->last_used - 1),
				 __ATOMIC_RELEASE);
	else
		vq->avail->flags = htole16(VRING_AVAIL_F_NO_INTERRUPT);
	ASSERT_LE(0, add_write(c, 0, 700, data));
	ASSERT_TRUE(vq_kick(v, 0));
	ASSERT_TRUE(vq_spin(vq, WAIT_MS));
	ASSERT_EQ(1, vq_get_used(v, 0, &u));
	ASSERT_EQ(0, read_stats(0, &st0));

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
	ASSERT_EQ(0, read_stats(0, &st1));
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
		ASSERT_EQ(0, set_poll_us(v, 0, mode ? 100000 : 0));
		ASSERT_EQ(0, read_stats(0, &st0));
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
		ASSERT_EQ(0, read_stats(0, &st1));
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
	ASSERT_EQ(0, set_poll_us(v, 0, 100000));
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
	ASSERT_EQ(0, set_poll_us(v, 0, 0));
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
static unsigned long long st_kicks(void)
{
	struct vq_stats st;

	return read_stats(0, &st) ? 0 : st.kicks;
}

/* Waits up to ms for the module to count n kicks on vring 0. */
static bool kicks_counted(unsigned long long n, int ms)
{
	int64_t deadline = now_us() + ms * 1000LL;

	while (st_kicks() < n) {
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
	unsigned int i, kicks = 0;
	struct used u;

	data = galloc(v, 1, 4096, 4096);
	ASSERT_EQ(0, set_poll_us(v, 0, 0));
	check_alive(_metadata, c);
	usleep(100000);
	drain(vq->call);
	ASSERT_EQ(0, read_stats(0, &st0));
	for (i = 0; i < 20; i++) {
		if (v->event_idx)
			__atomic_store_n(vq->used_event,
					 htole16(vq->last_used), __ATOMIC_RELAXED);
		ASSERT_LE(0, add_write(c, 0, 500 + 8 * i, data));
		kicks += vq_kick(v, 0);
		ASSERT_TRUE(vq_spin(vq, WAIT_MS));
		ASSERT_EQ(1, vq_get_used(v, 0, &u));
		ASSERT_TRUE(kicks_counted(st0.kicks + kicks, WAIT_MS))
			TH_LOG("request %u: the module counted %llu of %u kicks",
			       i, st_kicks() - st0.kicks, kicks);
	}
	/* The interrupt follows the used entry: wait for the last one. */
	for (i = 0; i < WAIT_MS / 10; i++) {
		ASSERT_EQ(0, read_stats(0, &st1));
		if (st1.signals - st0.signals >= 20)
			break;
		usleep(10000);
	}
	ASSERT_EQ(sizeof(calls), read(vq->call, &calls, sizeof(calls)));
	ASSERT_EQ(0, read_stats(0, &st1));
	EXPECT_EQ(20, st1.requests - st0.requests);
	EXPECT_EQ(kicks, st1.kicks - st0.kicks);
	EXPECT_EQ(calls, st1.signals - st0.signals);
	EXPECT_EQ(20, calls);
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
	ASSERT_EQ(0, read_stats(0, &(struct vq_stats){ 0 }));

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

/* ------------------------------------------------------------------ */
/* The host-side benchmark (make bench-host): measures, asserts nothing */
/* ------------------------------------------------------------------ */

#define BENCH_MAX_LAT	(1024 * 1024)	/* latencies kept per queue */

struct bench_q {
	struct vmm *v;
	unsigned int q;
	unsigned int qd;
	bool write;
	bool poll;		/* the guest polls and wants no interrupts */
	int64_t end_us;
	uint64_t hdrs, sts, data;
	uint64_t nblocks;	/* 4 KiB blocks of the device */
	uint64_t seed;
	int64_t start_ns[QSIZE];
	/* Results. */
	uint64_t done;
	uint64_t kicks;
	uint64_t calls;
	uint64_t *lat;		/* ns */
	size_t nlat;
	int err;
};

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

static void *bench_queue(void *arg)
{
	struct bench_q *b = arg;
	struct vmm *v = b->v;
	struct vq *vq = &v->vq[b->q];
	struct pollfd pfd = { .fd = vq->call, .events = POLLIN };
	unsigned int i, got;
	uint64_t cnt;
	struct used u;

	for (i = 0; i < b->qd; i++)
		bench_submit(b, i);
	b->kicks += vq_kick(v, b->q);
	while (!b->err && now_us() < b->end_us) {
		got = 0;
		while (vq_get_used(v, b->q, &u) == 1) {
			if (*gptr(v, b->sts + u.tag) != VIRTIO_BLK_S_OK)
				b->err = EIO;
			if (b->nlat < BENCH_MAX_LAT)
				b->lat[b->nlat++] = now_ns() -
						    b->start_ns[u.tag];
			b->done++;
			bench_submit(b, u.tag);
			got++;
		}
		if (got) {
			b->kicks += vq_kick(v, b->q);
			continue;
		}
		if (b->poll)
			continue;
		/* Ask for an interrupt and sleep on it. */
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (vq_has_used(vq))
			continue;
		if (poll(&pfd, 1, 10) == 1 &&
		    read(vq->call, &cnt, sizeof(cnt)) == sizeof(cnt))
			b->calls += cnt;
	}
	/* Interrupts the device sent that nobody waited for. */
	if (read(vq->call, &cnt, sizeof(cnt)) == sizeof(cnt))
		b->calls += cnt;
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static unsigned int bench_env(const char *name, unsigned int def)
{
	const char *s = getenv(name);

	return s && *s ? strtoul(s, NULL, 0) : def;
}

FIXTURE(bench) {
	struct ctx c;
};

FIXTURE_SETUP(bench)
{
	self->c.v.fd = -1;
	self->c.be.fd = -1;
	self->c.be.rofd = -1;
	self->c.be.chk = -1;
}

FIXTURE_TEARDOWN(bench)
{
	vmm_close(&self->c.v);
	be_close(&self->c.be);
}

/*
 * One benchmark run, set by the environment (tools/testing/selftests/
 * vhost_blk/bench_host.sh): VBP_BENCH_MODE poll (the guest polls and asks
 * for no interrupts, the vrings poll for VBP_BENCH_POLL_US) or notify
 * (kicks, interrupts, no polling); VBP_BENCH_RW randread or randwrite;
 * VBP_BENCH_QD, VBP_BENCH_QUEUES, VBP_BENCH_SECONDS.  It appends a JSON
 * object to VBP_BENCH_OUT.
 */
TEST_F_TIMEOUT(bench, run, 600)
{
	struct ctx *c = &self->c;
	struct vmm *v = &c->v;
	const char *out = getenv("VBP_BENCH_OUT");
	const char *mode = getenv("VBP_BENCH_MODE");
	const char *rw = getenv("VBP_BENCH_RW");
	unsigned int qd = bench_env("VBP_BENCH_QD", 1);
	unsigned int nq = bench_env("VBP_BENCH_QUEUES", 1);
	unsigned int secs = bench_env("VBP_BENCH_SECONDS", 5);
	unsigned int poll_us = bench_env("VBP_BENCH_POLL_US", 100);
	struct bench_q b[MAX_QUEUES] = { 0 };
	struct vq_stats st0[MAX_QUEUES], st1[MAX_QUEUES];
	unsigned long long mk = 0, ms = 0;
	uint64_t done = 0, kicks = 0, calls = 0, sum = 0, *all;
	pthread_t th[MAX_QUEUES];
	size_t nlat = 0, k;
	bool poll_mode;
	int64_t t0, t1;
	unsigned int q;
	FILE *f;

	if (!out || !mode || !rw || !getenv("VBP_TEST_BDEV"))
		SKIP(return, "a benchmark: run by make bench-host");
	poll_mode = !strcmp(mode, "poll");
	be_open(_metadata, &c->be, true);
	vmm_init(_metadata, v, false, false);
	ASSERT_LE(nq, v->nq);
	ASSERT_GE(QSIZE / 3, qd);
	v->nq = nq;
	vmm_start(_metadata, v, c->be.fd);

	for (q = 0; q < nq; q++) {
		struct vhost_worker_state w = { 0 };
		struct vhost_vring_worker vw = { .index = q };
		struct vhost_vring_state cpu = { .index = q };

		/* A worker per vring, pinned to a CPU of its own. */
		ASSERT_EQ(0, ioctl(v->fd, VHOST_NEW_WORKER, &w));
		vw.worker_id = w.worker_id;
		ASSERT_EQ(0, ioctl(v->fd, VHOST_ATTACH_VRING_WORKER, &vw));
		cpu.num = (q + 1) % sysconf(_SC_NPROCESSORS_ONLN);
		ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &cpu));
		ASSERT_EQ(0, set_poll_us(v, q, poll_mode ? poll_us : 0));
		if (poll_mode)
			v->vq[q].avail->flags =
				htole16(VRING_AVAIL_F_NO_INTERRUPT);

		b[q].v = v;
		b[q].q = q;
		b[q].qd = qd;
		b[q].write = !strcmp(rw, "randwrite");
		b[q].poll = poll_mode;
		b[q].nblocks = c->be.size / 4096;
		b[q].seed = mix64(q + 1);
		b[q].hdrs = galloc(v, 0, HDR_SIZE * qd, 64);
		b[q].sts = galloc(v, 0, qd, 64);
		b[q].data = galloc(v, q & 1, 4096ULL * qd, 4096);
		b[q].lat = calloc(BENCH_MAX_LAT, sizeof(uint64_t));
		ASSERT_NE(NULL, b[q].lat);
		ASSERT_EQ(0, read_stats(q, &st0[q]));
	}

	t0 = now_us();
	for (q = 0; q < nq; q++) {
		b[q].end_us = t0 + secs * 1000000LL;
		ASSERT_EQ(0, pthread_create(&th[q], NULL, bench_queue, &b[q]));
	}
	for (q = 0; q < nq; q++)
		pthread_join(th[q], NULL);
	t1 = now_us();

	all = malloc(nq * BENCH_MAX_LAT * sizeof(uint64_t));
	ASSERT_NE(NULL, all);
	for (q = 0; q < nq; q++) {
		ASSERT_EQ(0, b[q].err) TH_LOG("queue %u: %s", q,
					      strerror(b[q].err));
		ASSERT_EQ(0, read_stats(q, &st1[q]));
		done += b[q].done;
		kicks += b[q].kicks;
		calls += b[q].calls;
		mk += st1[q].kicks - st0[q].kicks;
		ms += st1[q].signals - st0[q].signals;
		memcpy(all + nlat, b[q].lat, b[q].nlat * sizeof(uint64_t));
		nlat += b[q].nlat;
		free(b[q].lat);
	}
	ASSERT_LT(0, nlat);
	qsort(all, nlat, sizeof(*all), cmp_u64);
	for (k = 0; k < nlat; k++)
		sum += all[k];

	f = fopen(out, "a");
	ASSERT_NE(NULL, f);
	fprintf(f, "{\"mode\": \"%s\", \"rw\": \"%s\", ", mode, rw);
	fprintf(f, "\"qd\": %u, \"queues\": %u, ", qd, nq);
	fprintf(f, "\"iops\": %.0f, ", done * 1e6 / (t1 - t0));
	fprintf(f, "\"lat_mean_us\": %.2f, ", sum / 1e3 / nlat);
	fprintf(f, "\"lat_p99_us\": %.2f, ", all[nlat * 99 / 100] / 1e3);
	fprintf(f, "\"kicks_per_req\": %.4f, ", (double)kicks / done);
	fprintf(f, "\"signals_per_req\": %.4f, ", (double)calls / done);
	fprintf(f, "\"module_kicks_per_req\": %.4f, ", (double)mk / done);
	fprintf(f, "\"module_signals_per_req\": %.4f}\n", (double)ms / done);
	fclose(f);
	free(all);
}

/* ------------------------------------------------------------------ */
/* The ring fuzzer                                                      */
/* ------------------------------------------------------------------ */

/*
 * Random and hostile requests on every queue at once, each with the answer
 * the device owes it (Documentation/abi.rst): a status and a used length,
 * or a stopped ring reported on the ring's error eventfd.  Reads and writes
 * are checked against a copy of the fuzzed area of the store kept here.  A
 * ring that must stop ends its batch; the device is then reset
 * (VHOST_RESET_OWNER, a new setup with random ring features and poll
 * budgets) and must work again.
 *
 * Environment: VBP_FUZZ_REQUESTS (default 10000), VBP_FUZZ_SEED (default
 * from the clock; printed, so that a run can be repeated), VBP_FUZZ_POLL=0
 * (poll budgets all 0: no ring polls), VBP_TEST_BDEV (a block device to
 * fuzz instead of a file in VBP_TEST_DIR).
 */

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
	unsigned int q;

	if (how == FZ_RESET)
		ASSERT_EQ(0, ioctl(v->fd, VHOST_RESET_OWNER))
			TH_LOG("VHOST_RESET_OWNER: %s", strerror(errno));
	if (how == FZ_CLOSED) {
		v->fd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
		ASSERT_LE(0, v->fd) TH_LOG("open %s: %s", DEV_PATH,
					   strerror(errno));
	}
	if (how != FZ_FIRST)
		f->resets++;
	v->event_idx = fz_chance(f, 50);
	v->indirect = fz_chance(f, 50);
	vmm_start(_metadata, v, c->be.fd);
	ASSERT_EQ(0, ioctl(v->fd, VHOST_BLK_SET_SERIAL, fz_serial));
	for (q = 0; q < v->nq; q++)
		ASSERT_EQ(0, set_poll_us(v, q, f->no_poll ? 0 :
					 budgets[fz_below(f, ARRAY_SIZE(budgets))]));
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

	c->v.fd = -1;
	c->be.fd = -1;
	c->be.rofd = -1;
	c->be.chk = -1;
	f->c = c;
	be_open(_metadata, &c->be, getenv("VBP_TEST_BDEV"));
	if (_metadata->exit_code)
		return;
	c->cap = c->be.size / SECTOR;
	ASSERT_LE(FZ_BASE + FZ_SECTORS, c->cap);
	f->no_poll = !bench_env("VBP_FUZZ_POLL", 1);
	f->rnd = seed && *seed ? strtoull(seed, NULL, 0) :
		 mix64(now_us() ^ ((uint64_t)getpid() << 32));
	c->seed = f->rnd;
	TH_LOG("VBP_FUZZ_SEED=%llu on %s", (unsigned long long)f->rnd,
	       c->be.bdev ? getenv("VBP_TEST_BDEV") : "a file");

	vmm_init(_metadata, &c->v, false, false);
	c->hdr = galloc(&c->v, 0, HDR_SIZE, 64);
	c->st = galloc(&c->v, 0, 1, 64);
	c->dz = galloc(&c->v, 0, 4096, 4096);
	c->rd = galloc(&c->v, 1, RD_MAX, 4096);
	c->alive = galloc(&c->v, 0, 4096, 4096);
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
	unsigned long long total = bench_env("VBP_FUZZ_REQUESTS", 10000);
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
	unsigned int rounds = bench_env("VBP_RACE_ROUNDS", 350), i;
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
