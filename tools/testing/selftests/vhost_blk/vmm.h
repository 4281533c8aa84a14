/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The mini virtual machine monitor of the vhost_blk selftests: a virtio-blk
 * guest driver and its VMM in one process.  The process's own memory is the
 * guest's memory: two regions at distant guest-physical addresses, a hole
 * between them, each a memfd mapped shared.  Split virtqueues are laid out
 * in it and driven from here.  The host side is reached through one of two
 * transports, chosen when the VMM is opened: the kernel's vhost device
 * /dev/vhost-blk-poll (vmm_open_kernel(), its ioctls) or a vhost-user
 * back-end on a unix socket (vmm_open_vhost_user(), vmm_vhost_user.c, the
 * same requests as messages, the memory regions' memfds passed to it).  The
 * rings and the code that drives them are the same for both.
 *
 * Functions return 0 or a negative errno unless their comment says
 * otherwise; the programs that use them assert.  A guest-physical range
 * outside guest memory, or guest memory used up, is a bug of the caller:
 * the library says so and aborts.
 */

#ifndef VHOST_BLK_VMM_H
#define VHOST_BLK_VMM_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#define DEV_PATH	"/dev/vhost-blk-poll"
#define VU_PATH_MAX	108	/* sizeof(sockaddr_un.sun_path) */
#define MAXQ_PARAM	"/sys/module/vhost_blk_poll/parameters/max_queues"
#define STATS_DIR	"/sys/kernel/debug/vhost_blk_poll"

#define SECTOR		512
#define QSIZE		256		/* descriptors of each virtqueue */
#define MAX_QUEUES	4		/* virtqueues the VMM sets up */
#define IND_MAX		64		/* entries of an indirect table */
#define HDR_SIZE	16		/* struct virtio_blk_outhdr */

/* Guest memory: two regions, a hole between them. */
#define NREGIONS	2
#define REGION_SIZE	(16ULL << 20)
#define REGION1_GPA	0x40000000ULL
#define HOLE_GPA	0x20000000ULL	/* mapped by neither region */
/* Kept free at the end of region 0 and the start of region 1. */
#define EDGE_SIZE	(64ULL << 10)

extern const uint64_t region_gpa[NREGIONS];

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

struct vmm_transport;

struct vmm {
	const struct vmm_transport *t;	/* set when opened: ours to close */
	int fd;			/* the device, or the vhost-user socket */
	unsigned int nvqs;	/* virtqueues of the device */
	unsigned int nq;	/* virtqueues set up */
	bool event_idx;
	bool indirect;
	bool started;		/* vmm_start() set the rings up */
	uint64_t features;
	uint64_t protocol_features;	/* vhost-user's, negotiated */
	char path[VU_PATH_MAX];		/* the vhost-user socket */
	int memfd[NREGIONS];
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

/* One vring's line of the device's debugfs statistics. */
struct vq_stats {
	unsigned long long requests, kicks, signals, busy, idle, batches;
	int inflight;
	unsigned int poll_us;
	int cpu;
	unsigned long long polled, slow;
};

/**
 * struct vmm_transport - how the VMM reaches the host side of the device
 * @name: "vhost-kernel" or "vhost-user", as the benchmark reports it
 * @features: transport feature bits negotiated when the device offers them
 * @kernel: the operations only /dev/vhost-blk-poll has are there
 * @connect: open the device or the socket; sets vmm.fd and vmm.nvqs
 * @disconnect: stop the rings and close what @connect opened
 * @set_owner: VHOST_SET_OWNER
 * @get_features: VHOST_GET_FEATURES
 * @set_features: VHOST_SET_FEATURES
 * @set_mem_table: VHOST_SET_MEM_TABLE of the first regions of guest memory
 * @vring_state: VHOST_SET_VRING_NUM, VHOST_SET_VRING_BASE or
 *	VHOST_GET_VRING_BASE, as the ioctl number @req says
 * @vring_addr: VHOST_SET_VRING_ADDR
 * @vring_file: VHOST_SET_VRING_KICK, VHOST_SET_VRING_CALL or
 *	VHOST_SET_VRING_ERR, as the ioctl number @req says
 * @vring_enable: enable a vring (vhost-user); NULL where rings need not be
 * @get_config: read the device's configuration space; NULL where the
 *	transport has none
 *
 * Each operation returns 0 or a negative errno.
 */
struct vmm_transport {
	const char *name;
	uint64_t features;
	bool kernel;
	int (*connect)(struct vmm *v);
	void (*disconnect)(struct vmm *v);
	int (*set_owner)(struct vmm *v);
	int (*get_features)(struct vmm *v, uint64_t *features);
	int (*set_features)(struct vmm *v, uint64_t features);
	int (*set_mem_table)(struct vmm *v, unsigned int nregions);
	int (*vring_state)(struct vmm *v, unsigned long req,
			   struct vhost_vring_state *s);
	int (*vring_addr)(struct vmm *v, const struct vhost_vring_addr *a);
	int (*vring_file)(struct vmm *v, unsigned long req,
			  const struct vhost_vring_file *f);
	int (*vring_enable)(struct vmm *v, unsigned int q, bool enable);
	int (*get_config)(struct vmm *v, void *buf, uint32_t len);
};

extern const struct vmm_transport vmm_vhost_kernel;
extern const struct vmm_transport vmm_vhost_user;

/* Helpers the programs share. */
int64_t now_us(void);
uint64_t mix64(uint64_t x);
unsigned int env_uint(const char *name, unsigned int def);

/* Guest memory. */
void *gpa_to_hva(struct vmm *v, uint64_t gpa, uint64_t len);
uint64_t hva_to_gpa(struct vmm *v, const void *p);
uint64_t galloc(struct vmm *v, unsigned int r, uint64_t size,
		uint64_t align);
uint8_t *gptr(struct vmm *v, uint64_t gpa);

/* The device. */
int vmm_open_kernel(struct vmm *v, bool event_idx, bool indirect);
int vmm_open_vhost_user(struct vmm *v, const char *path, bool event_idx,
			bool indirect);
void vmm_close(struct vmm *v);
int vmm_set_mem(struct vmm *v, unsigned int nregions);
int vq_setup(struct vmm *v, unsigned int q);
int vmm_start(struct vmm *v, int backend);
int vmm_reopen(struct vmm *v, int backend);
int vmm_vring_base(struct vmm *v, unsigned int q, unsigned int *num);
int vmm_get_config(struct vmm *v, void *buf, uint32_t len);
/* Only /dev/vhost-blk-poll has these: -EOPNOTSUPP on vhost-user. */
int vmm_set_backend(struct vmm *v, int fd);
int vmm_set_poll_us(struct vmm *v, unsigned int q, unsigned int us);
int vmm_set_vring_cpu(struct vmm *v, unsigned int q, int cpu);
int vmm_new_worker(struct vmm *v, unsigned int q);
int vmm_read_stats(struct vmm *v, unsigned int q, struct vq_stats *st);

/* The rings. */
void desc_set(struct vring_desc *d, uint64_t addr, uint32_t len,
	      uint16_t flags, uint16_t next);
uint16_t vq_pop_desc(struct vq *vq);
void vq_push(struct vq *vq, uint16_t head, uint16_t ndesc, uint32_t tag);
int vq_add(struct vmm *v, unsigned int q, const struct seg *s,
	   unsigned int n, bool indirect, uint32_t tag);
void vq_publish(struct vq *vq);
bool vq_notify(struct vq *vq);
bool vq_kick(struct vmm *v, unsigned int q);
bool vq_err_signalled(struct vq *vq, int ms);
uint16_t vq_used_idx(struct vq *vq);
bool vq_has_used(struct vq *vq);
int vq_get_used(struct vmm *v, unsigned int q, struct used *u);
bool vq_spin(struct vq *vq, int ms);
bool vmm_wait(struct vmm *v, unsigned int qmask, int ms);
void drain(int efd);

/* virtio-blk requests. */
void set_hdr(struct vmm *v, uint64_t gpa, uint32_t type, uint64_t sector);

#endif /* VHOST_BLK_VMM_H */
