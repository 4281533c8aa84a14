// SPDX-License-Identifier: GPL-2.0
/*
 * The mini-VMM (vmm.h): guest memory, split virtqueues and their
 * notifications, the device setup over either transport, and the transport
 * of /dev/vhost-blk-poll (its ioctls); vmm_vhost_user.c has the other.
 */

#define _GNU_SOURCE
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/virtio_config.h>

#include "vmm.h"

const uint64_t region_gpa[NREGIONS] = { 0, REGION1_GPA };

/* Device-specific features negotiated whenever the device offers them. */
static const uint64_t blk_features =
	(1ULL << VIRTIO_BLK_F_SEG_MAX) |
	(1ULL << VIRTIO_BLK_F_BLK_SIZE) |
	(1ULL << VIRTIO_BLK_F_FLUSH) |
	(1ULL << VIRTIO_BLK_F_MQ) |
	(1ULL << VIRTIO_BLK_F_DISCARD) |
	(1ULL << VIRTIO_BLK_F_WRITE_ZEROES);

/* Says which step failed (a TAP comment) and returns err. */
static int vmm_fail(struct vmm *v, const char *what, int err)
{
	fprintf(stderr, "# %s: %s: %s\n", v->t->name, what, strerror(-err));
	return err;
}

/**
 * now_us() - the monotonic clock
 *
 * Return: the time in microseconds.
 */
int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/**
 * mix64() - a 64-bit mixing function (splitmix64's finalizer)
 * @x: the value to mix
 *
 * Return: x mixed; seeds and data patterns are made with it.
 */
uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/**
 * env_uint() - a number from the environment
 * @name: the variable
 * @def: the value when it is unset or empty
 *
 * Return: the variable's value (any base strtoul() takes), or @def.
 */
unsigned int env_uint(const char *name, unsigned int def)
{
	const char *s = getenv(name);

	return s && *s ? strtoul(s, NULL, 0) : def;
}

/**
 * gpa_to_hva() - the VMM's address of guest memory
 * @v: the VMM
 * @gpa: guest-physical address
 * @len: bytes from @gpa that must lie in one region
 *
 * The range is the caller's own doing, so one outside guest memory is a bug
 * of the caller: it is reported and the program aborts.
 *
 * Return: the address of @gpa in the VMM.
 */
void *gpa_to_hva(struct vmm *v, uint64_t gpa, uint64_t len)
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

/**
 * hva_to_gpa() - the guest-physical address of VMM memory
 * @v: the VMM
 * @p: an address in the VMM
 *
 * Return: the guest-physical address of @p, ~0 when it is not guest memory.
 */
uint64_t hva_to_gpa(struct vmm *v, const void *p)
{
	const char *c = p;
	unsigned int i;

	for (i = 0; i < NREGIONS; i++) {
		if (c >= v->mem[i] && c < v->mem[i] + REGION_SIZE)
			return region_gpa[i] + (uint64_t)(c - v->mem[i]);
	}
	return ~0ULL;
}

/**
 * galloc() - allocate guest memory
 * @v: the VMM
 * @r: the region
 * @size: bytes
 * @align: alignment, a power of two
 *
 * A bump allocator: memory is never freed, opening the VMM starts afresh.  A
 * region used up is a bug of the caller: reported, and the program aborts.
 *
 * Return: the guest-physical address of the memory.
 */
uint64_t galloc(struct vmm *v, unsigned int r, uint64_t size,
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

/**
 * gptr() - the VMM's address of a guest byte
 * @v: the VMM
 * @gpa: its guest-physical address
 *
 * Return: the address, as gpa_to_hva() of one byte.
 */
uint8_t *gptr(struct vmm *v, uint64_t gpa)
{
	return gpa_to_hva(v, gpa, 1);
}

/**
 * drain() - consume what an eventfd counted
 * @efd: a non-blocking eventfd
 */
void drain(int efd)
{
	uint64_t cnt;

	if (read(efd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN)
		fprintf(stderr, "# eventfd read: %s\n", strerror(errno));
}

/* Region i of guest memory: a memfd, mapped shared. */
static int region_map(struct vmm *v, unsigned int i)
{
	char name[32];
	int ret;

	snprintf(name, sizeof(name), "vmm-region%u", i);
	v->memfd[i] = memfd_create(name, MFD_CLOEXEC);
	if (v->memfd[i] < 0)
		return -errno;
	if (ftruncate(v->memfd[i], REGION_SIZE))
		goto err_close;
	v->mem[i] = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE,
			 MAP_SHARED, v->memfd[i], 0);
	if (v->mem[i] != MAP_FAILED)
		return 0;
	v->mem[i] = NULL;
err_close:
	ret = -errno;
	close(v->memfd[i]);
	v->memfd[i] = -1;
	return ret;
}

/*
 * Connects transport t and lays the rings out in fresh guest memory: each
 * queue's ring in region 0, its indirect tables in region 1.
 */
static int vmm_open(struct vmm *v, const struct vmm_transport *t,
		    const char *path, bool event_idx, bool indirect)
{
	unsigned int i;
	int ret;

	memset(v, 0, sizeof(*v));
	v->t = t;
	v->fd = -1;
	for (i = 0; i < NREGIONS; i++)
		v->memfd[i] = -1;
	for (i = 0; i < MAX_QUEUES; i++) {
		v->vq[i].kick = -1;
		v->vq[i].call = -1;
		v->vq[i].err = -1;
	}
	v->event_idx = event_idx;
	v->indirect = indirect;
	if (path && strlen(path) >= sizeof(v->path)) {
		fprintf(stderr, "# %s: %s: path too long\n", t->name, path);
		return -ENAMETOOLONG;
	}
	if (path)
		snprintf(v->path, sizeof(v->path), "%s", path);

	ret = t->connect(v);
	if (ret)
		return ret;
	v->nq = v->nvqs < MAX_QUEUES ? v->nvqs : MAX_QUEUES;

	for (i = 0; i < NREGIONS; i++) {
		ret = region_map(v, i);
		if (ret)
			return vmm_fail(v, "guest memory", ret);
	}
	v->brk[0] = 0;
	v->end[0] = REGION_SIZE - EDGE_SIZE;
	v->brk[1] = EDGE_SIZE;
	v->end[1] = REGION_SIZE;

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
	}
	return 0;
}

/**
 * vmm_open_kernel() - open /dev/vhost-blk-poll and lay the rings out
 * @v: the VMM, not open
 * @event_idx: negotiate VIRTIO_RING_F_EVENT_IDX
 * @indirect: negotiate VIRTIO_RING_F_INDIRECT_DESC
 *
 * Opens the device, maps fresh guest memory and puts the rings in it.  The
 * device is set up by vmm_start().  Once this has run, vmm_close() undoes
 * it, whether it failed or not.
 *
 * Return: 0 or a negative errno.
 */
int vmm_open_kernel(struct vmm *v, bool event_idx, bool indirect)
{
	return vmm_open(v, &vmm_vhost_kernel, NULL, event_idx, indirect);
}

/**
 * vmm_open_vhost_user() - connect to a vhost-user back-end, lay rings out
 * @v: the VMM, not open
 * @path: the back-end's unix socket
 * @event_idx: negotiate VIRTIO_RING_F_EVENT_IDX
 * @indirect: negotiate VIRTIO_RING_F_INDIRECT_DESC
 *
 * As vmm_open_kernel(), over vhost-user: the connection's first messages
 * negotiate the protocol features and ask for the number of queues.  A
 * back-end that does not answer as vhost-user does gets the connection
 * closed, and the error is said on standard error.
 *
 * Return: 0 or a negative errno (-EPROTO: the back-end's reply was wrong).
 */
int vmm_open_vhost_user(struct vmm *v, const char *path, bool event_idx,
			bool indirect)
{
	return vmm_open(v, &vmm_vhost_user, path, event_idx, indirect);
}

/**
 * vmm_close() - close the device and free guest memory
 * @v: the VMM; nothing is done unless it was opened
 *
 * Over vhost-user the rings are stopped first (GET_VRING_BASE).
 */
void vmm_close(struct vmm *v)
{
	unsigned int i;

	if (!v->t)
		return;
	v->t->disconnect(v);
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
		if (v->mem[i]) {
			munmap(v->mem[i], REGION_SIZE);
			close(v->memfd[i]);
		}
		v->mem[i] = NULL;
		v->memfd[i] = -1;
	}
	v->t = NULL;
}

/**
 * vmm_set_backend() - attach the backing store (VHOST_BLK_SET_BACKEND)
 * @v: the VMM
 * @fd: a block device or regular file, -1 to detach
 *
 * Return: 0 or a negative errno (-EOPNOTSUPP on vhost-user).
 */
int vmm_set_backend(struct vmm *v, int fd)
{
	if (!v->t->kernel)
		return -EOPNOTSUPP;
	return ioctl(v->fd, VHOST_BLK_SET_BACKEND, &fd) ? -errno : 0;
}

/**
 * vmm_set_poll_us() - the poll budget of a vring
 * @v: the VMM
 * @q: the vring
 * @us: microseconds, 0 for notifications only
 *
 * Return: 0 or a negative errno (-EOPNOTSUPP on vhost-user).
 */
int vmm_set_poll_us(struct vmm *v, unsigned int q, unsigned int us)
{
	struct vhost_vring_state s = { .index = q, .num = us };

	if (!v->t->kernel)
		return -EOPNOTSUPP;
	return ioctl(v->fd, VHOST_SET_VRING_BUSYLOOP_TIMEOUT, &s) ? -errno : 0;
}

/**
 * vmm_set_vring_cpu() - pin the worker of a vring (VHOST_BLK_SET_VRING_CPU)
 * @v: the VMM
 * @q: the vring
 * @cpu: the CPU, -1 to unpin
 *
 * Return: 0 or a negative errno (-EOPNOTSUPP on vhost-user).
 */
int vmm_set_vring_cpu(struct vmm *v, unsigned int q, int cpu)
{
	struct vhost_vring_state s = { .index = q, .num = cpu };

	if (!v->t->kernel)
		return -EOPNOTSUPP;
	return ioctl(v->fd, VHOST_BLK_SET_VRING_CPU, &s) ? -errno : 0;
}

/**
 * vmm_new_worker() - give a vring a worker of its own
 * @v: the VMM
 * @q: the vring
 *
 * VHOST_NEW_WORKER, then VHOST_ATTACH_VRING_WORKER.
 *
 * Return: 0 or a negative errno (-EOPNOTSUPP on vhost-user).
 */
int vmm_new_worker(struct vmm *v, unsigned int q)
{
	struct vhost_worker_state w = { 0 };
	struct vhost_vring_worker vw = { .index = q };

	if (!v->t->kernel)
		return -EOPNOTSUPP;
	if (ioctl(v->fd, VHOST_NEW_WORKER, &w))
		return -errno;
	vw.worker_id = w.worker_id;
	return ioctl(v->fd, VHOST_ATTACH_VRING_WORKER, &vw) ? -errno : 0;
}

/**
 * vmm_read_stats() - the statistics of a vring
 * @v: the VMM
 * @q: the vring
 * @st: filled in
 *
 * From debugfs, the device of this process created last.
 *
 * Return: 0 or a negative errno (-ENOENT: no statistics for @q,
 * -EOPNOTSUPP on vhost-user).
 */
int vmm_read_stats(struct vmm *v, unsigned int q, struct vq_stats *st)
{
	char path[PATH_MAX], line[256], prefix[32];
	unsigned int best = 0, id, i;
	struct dirent *d;
	int ret = -ENOENT;
	DIR *dir;
	FILE *f;

	if (!v->t->kernel)
		return -EOPNOTSUPP;
	snprintf(prefix, sizeof(prefix), "%d-", getpid());
	dir = opendir(STATS_DIR);
	if (!dir)
		return -errno;
	while ((d = readdir(dir))) {
		if (strncmp(d->d_name, prefix, strlen(prefix)))
			continue;
		id = strtoul(d->d_name + strlen(prefix), NULL, 10);
		if (id > best)
			best = id;
	}
	closedir(dir);
	if (!best)
		return -ENOENT;
	snprintf(path, sizeof(path), STATS_DIR "/%s%u/stats", prefix, best);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%u %llu %llu %llu %llu %llu %llu %d %u %d %llu %llu",
			   &i, &st->requests, &st->kicks, &st->signals,
			   &st->busy, &st->idle, &st->batches, &st->inflight,
			   &st->poll_us, &st->cpu, &st->polled,
			   &st->slow) == 12 &&
		    i == q) {
			ret = 0;
			break;
		}
	}
	fclose(f);
	return ret;
}

/**
 * vq_setup() - an empty ring, fresh eventfds, and the vring requests
 * @v: the VMM
 * @q: the queue
 *
 * Size, base, addresses, the kick, call and error eventfds, and where the
 * transport has it, the ring enabled.
 *
 * Return: 0 or a negative errno.
 */
int vq_setup(struct vmm *v, unsigned int q)
{
	const struct vmm_transport *t = v->t;
	struct vq *vq = &v->vq[q];
	struct vhost_vring_state s = { .index = q };
	struct vhost_vring_addr a = { .index = q };
	struct vhost_vring_file f = { .index = q };
	unsigned int i;
	int ret;

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
	if (vq->kick < 0 || vq->call < 0 || vq->err < 0)
		return vmm_fail(v, "eventfd", -errno);

	s.num = QSIZE;
	ret = t->vring_state(v, VHOST_SET_VRING_NUM, &s);
	if (ret)
		return vmm_fail(v, "SET_VRING_NUM", ret);
	s.num = 0;
	ret = t->vring_state(v, VHOST_SET_VRING_BASE, &s);
	if (ret)
		return vmm_fail(v, "SET_VRING_BASE", ret);
	a.desc_user_addr = (uintptr_t)vq->desc;
	a.avail_user_addr = (uintptr_t)vq->avail;
	a.used_user_addr = (uintptr_t)vq->used;
	ret = t->vring_addr(v, &a);
	if (ret)
		return vmm_fail(v, "SET_VRING_ADDR", ret);
	f.fd = vq->kick;
	ret = t->vring_file(v, VHOST_SET_VRING_KICK, &f);
	if (ret)
		return vmm_fail(v, "SET_VRING_KICK", ret);
	f.fd = vq->call;
	ret = t->vring_file(v, VHOST_SET_VRING_CALL, &f);
	if (ret)
		return vmm_fail(v, "SET_VRING_CALL", ret);
	f.fd = vq->err;
	ret = t->vring_file(v, VHOST_SET_VRING_ERR, &f);
	if (ret)
		return vmm_fail(v, "SET_VRING_ERR", ret);
	if (t->vring_enable) {
		ret = t->vring_enable(v, q, true);
		if (ret)
			return vmm_fail(v, "SET_VRING_ENABLE", ret);
	}
	return 0;
}

/**
 * vmm_set_mem() - the memory table
 * @v: the VMM
 * @nregions: how many regions of guest memory it has, from the first
 *
 * Return: 0 or a negative errno.
 */
int vmm_set_mem(struct vmm *v, unsigned int nregions)
{
	return v->t->set_mem_table(v, nregions);
}

/**
 * vmm_start() - what a VMM does to start the device
 * @v: the VMM
 * @backend: the backing store's descriptor (/dev/vhost-blk-poll), or -1:
 *	none (a vhost-user back-end has its own)
 *
 * Ownership, features, memory map, vrings, and the backend last (the vring
 * setup is refused once a backend is attached).  The step that fails says
 * so on standard error.
 *
 * Return: 0 or a negative errno (-EOPNOTSUPP: the device lacks a feature
 * asked for).
 */
int vmm_start(struct vmm *v, int backend)
{
	const struct vmm_transport *t = v->t;
	uint64_t offered = 0, want;
	unsigned int i;
	int ret;

	v->started = false;
	ret = t->set_owner(v);
	if (ret)
		return vmm_fail(v, "SET_OWNER", ret);
	ret = t->get_features(v, &offered);
	if (ret)
		return vmm_fail(v, "GET_FEATURES", ret);
	want = (1ULL << VIRTIO_F_VERSION_1) |
	       (offered & (blk_features | t->features));
	if (v->event_idx)
		want |= 1ULL << VIRTIO_RING_F_EVENT_IDX;
	if (v->indirect)
		want |= 1ULL << VIRTIO_RING_F_INDIRECT_DESC;
	if ((want & offered) != want) {
		fprintf(stderr, "# %s: device lacks features %#llx\n", t->name,
			(unsigned long long)(want & ~offered));
		return -EOPNOTSUPP;
	}
	ret = t->set_features(v, want);
	if (ret)
		return vmm_fail(v, "SET_FEATURES", ret);
	v->features = want;

	ret = vmm_set_mem(v, NREGIONS);
	if (ret)
		return vmm_fail(v, "SET_MEM_TABLE", ret);

	for (i = 0; i < v->nq; i++) {
		ret = vq_setup(v, i);
		if (ret)
			return ret;
	}
	v->started = true;

	if (backend < 0)
		return 0;
	ret = vmm_set_backend(v, backend);
	if (ret)
		return vmm_fail(v, "VHOST_BLK_SET_BACKEND", ret);
	return 0;
}

/**
 * vmm_reopen() - close the device and start a fresh one
 * @v: the VMM, whose guest memory stays
 * @backend: as for vmm_start()
 *
 * Over vhost-user, a new connection to the same socket.
 *
 * Return: 0 or a negative errno.
 */
int vmm_reopen(struct vmm *v, int backend)
{
	int ret;

	v->t->disconnect(v);
	ret = v->t->connect(v);
	if (ret)
		return ret;
	return vmm_start(v, backend);
}

/**
 * vmm_vring_base() - stop a ring and read where it stopped (GET_VRING_BASE)
 * @v: the VMM
 * @q: the ring
 * @num: the avail index the device reached
 *
 * Return: 0 or a negative errno.
 */
int vmm_vring_base(struct vmm *v, unsigned int q, unsigned int *num)
{
	struct vhost_vring_state s = { .index = q };
	int ret;

	ret = v->t->vring_state(v, VHOST_GET_VRING_BASE, &s);
	if (!ret)
		*num = s.num;
	return ret;
}

/**
 * vmm_get_config() - read the device's configuration space
 * @v: the VMM
 * @buf: where
 * @len: bytes from its start, such as sizeof(struct virtio_blk_config)
 *
 * Return: 0 or a negative errno (-EOPNOTSUPP: the transport has no
 * configuration space, as /dev/vhost-blk-poll, whose VMM composes it).
 */
int vmm_get_config(struct vmm *v, void *buf, uint32_t len)
{
	if (!v->t->get_config)
		return -EOPNOTSUPP;
	return v->t->get_config(v, buf, len);
}

/**
 * desc_set() - write a descriptor
 * @d: the descriptor, in guest memory
 * @addr: guest-physical address of the buffer
 * @len: its length
 * @flags: VRING_DESC_F_*
 * @next: the next descriptor of the chain
 */
void desc_set(struct vring_desc *d, uint64_t addr, uint32_t len,
	      uint16_t flags, uint16_t next)
{
	d->addr = htole64(addr);
	d->len = htole32(len);
	d->flags = htole16(flags);
	d->next = htole16(next);
}

/**
 * vq_pop_desc() - take a free descriptor of a ring
 * @vq: the queue, which the caller checked has one (vq->nfree)
 *
 * Return: the descriptor's index.
 */
uint16_t vq_pop_desc(struct vq *vq)
{
	return vq->free[--vq->nfree];
}

/**
 * vq_push() - make a chain an avail entry, visible once published
 * @vq: the queue
 * @head: the chain's first descriptor
 * @ndesc: descriptors of the chain in the ring (vq->next links them)
 * @tag: what vq_get_used() returns with its completion
 */
void vq_push(struct vq *vq, uint16_t head, uint16_t ndesc, uint32_t tag)
{
	vq->ndesc[head] = ndesc;
	vq->tag[head] = tag;
	vq->avail->ring[vq->avail_idx % QSIZE] = htole16(head);
	vq->avail_idx++;
	vq->inflight++;
}

/**
 * vq_add() - add a request to a queue
 * @v: the VMM
 * @q: the queue
 * @s: its segments
 * @n: how many
 * @indirect: through an indirect table (at most IND_MAX segments)
 * @tag: what vq_get_used() returns with its completion
 *
 * A chain of descriptors, or one descriptor pointing to an indirect table
 * of them.  The device sees the request after vq_kick().
 *
 * Return: the head, or -1 when the ring lacks free descriptors.
 */
int vq_add(struct vmm *v, unsigned int q, const struct seg *s,
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

/**
 * vq_publish() - make the new avail entries visible, without a kick
 * @vq: the queue
 */
void vq_publish(struct vq *vq)
{
	__atomic_store_n(&vq->avail->idx, htole16(vq->avail_idx),
			 __ATOMIC_RELEASE);
	vq->published = vq->avail_idx;
}

/**
 * vq_notify() - kick the device, whatever it asked for
 * @vq: the queue
 *
 * Return: whether the kick eventfd was written.
 */
bool vq_notify(struct vq *vq)
{
	uint64_t one = 1;

	return write(vq->kick, &one, sizeof(one)) == sizeof(one);
}

/**
 * vq_kick() - publish and notify
 * @v: the VMM
 * @q: the queue
 *
 * Publishes the avail entries added since the last call and notifies the
 * device unless it suppressed notifications (VRING_USED_F_NO_NOTIFY, or
 * its avail_event with EVENT_IDX).
 *
 * Return: whether it kicked.
 */
bool vq_kick(struct vmm *v, unsigned int q)
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

/**
 * vq_err_signalled() - whether the device reported a broken ring
 * @vq: the queue
 * @ms: how long to wait for the report
 *
 * Consumes the report.
 *
 * Return: true when the error eventfd fired within @ms.
 */
bool vq_err_signalled(struct vq *vq, int ms)
{
	struct pollfd pfd = { .fd = vq->err, .events = POLLIN };

	if (poll(&pfd, 1, ms) != 1)
		return false;
	drain(vq->err);
	return true;
}

/**
 * vq_used_idx() - the used index the device wrote
 * @vq: the queue
 *
 * Return: the used index, read with acquire semantics.
 */
uint16_t vq_used_idx(struct vq *vq)
{
	return le16toh(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE));
}

/**
 * vq_has_used() - whether a used entry waits to be taken
 * @vq: the queue
 *
 * Return: true when the device wrote a used entry not taken yet.
 */
bool vq_has_used(struct vq *vq)
{
	return vq_used_idx(vq) != vq->last_used;
}

/**
 * vq_get_used() - take the next used entry and free its descriptors
 * @v: the VMM
 * @q: the queue
 * @u: the completion, filled in
 *
 * Return: 1, 0 when there is none, -1 when the device returned a head that
 * is not in flight.
 */
int vq_get_used(struct vmm *v, unsigned int q, struct used *u)
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

/**
 * vq_spin() - wait for a used entry by watching the ring alone
 * @vq: the queue
 * @ms: how long
 *
 * Return: true when one came within @ms.
 */
bool vq_spin(struct vq *vq, int ms)
{
	int64_t deadline = now_us() + ms * 1000LL;

	while (!vq_has_used(vq)) {
		if (now_us() > deadline)
			return false;
		usleep(50);
	}
	return true;
}

/**
 * vmm_wait() - wait for a used entry on any of some queues
 * @v: the VMM
 * @qmask: the queues, a bit each
 * @ms: how long
 *
 * Sleeps on the call eventfds, having asked for a notification on the next
 * completion with EVENT_IDX.
 *
 * Return: true when one of the queues has a used entry, false after @ms.
 */
bool vmm_wait(struct vmm *v, unsigned int qmask, int ms)
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

/**
 * set_hdr() - write a virtio-blk request header
 * @v: the VMM
 * @gpa: where, HDR_SIZE bytes
 * @type: VIRTIO_BLK_T_*
 * @sector: the request's first sector
 */
void set_hdr(struct vmm *v, uint64_t gpa, uint32_t type, uint64_t sector)
{
	struct virtio_blk_outhdr h = {
		.type = htole32(type),
		.ioprio = 0,
		.sector = htole64(sector),
	};

	memcpy(gpa_to_hva(v, gpa, sizeof(h)), &h, sizeof(h));
}

/* The transport of /dev/vhost-blk-poll: its ioctls. */

static int read_max_queues(void)
{
	char buf[16] = "";
	int fd, n;

	fd = open(MAXQ_PARAM, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 && atoi(buf) > 0 ? atoi(buf) : -EINVAL;
}

static int kernel_connect(struct vmm *v)
{
	int ret;

	v->fd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	if (v->fd < 0)
		return vmm_fail(v, "open " DEV_PATH, -errno);
	ret = read_max_queues();
	if (ret < 0)
		return vmm_fail(v, MAXQ_PARAM, ret);
	v->nvqs = ret;
	return 0;
}

static void kernel_disconnect(struct vmm *v)
{
	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
	v->started = false;
}

static int kernel_set_owner(struct vmm *v)
{
	return ioctl(v->fd, VHOST_SET_OWNER) ? -errno : 0;
}

static int kernel_get_features(struct vmm *v, uint64_t *features)
{
	return ioctl(v->fd, VHOST_GET_FEATURES, features) ? -errno : 0;
}

static int kernel_set_features(struct vmm *v, uint64_t features)
{
	return ioctl(v->fd, VHOST_SET_FEATURES, &features) ? -errno : 0;
}

static int kernel_set_mem_table(struct vmm *v, unsigned int nregions)
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

static int kernel_vring_state(struct vmm *v, unsigned long req,
			      struct vhost_vring_state *s)
{
	return ioctl(v->fd, req, s) ? -errno : 0;
}

static int kernel_vring_addr(struct vmm *v, const struct vhost_vring_addr *a)
{
	return ioctl(v->fd, VHOST_SET_VRING_ADDR, a) ? -errno : 0;
}

static int kernel_vring_file(struct vmm *v, unsigned long req,
			     const struct vhost_vring_file *f)
{
	return ioctl(v->fd, req, f) ? -errno : 0;
}

const struct vmm_transport vmm_vhost_kernel = {
	.name = "vhost-kernel",
	.kernel = true,
	.connect = kernel_connect,
	.disconnect = kernel_disconnect,
	.set_owner = kernel_set_owner,
	.get_features = kernel_get_features,
	.set_features = kernel_set_features,
	.set_mem_table = kernel_set_mem_table,
	.vring_state = kernel_vring_state,
	.vring_addr = kernel_vring_addr,
	.vring_file = kernel_vring_file,
};
