// SPDX-License-Identifier: GPL-2.0
/*
 * vhost-blk-poll: a virtio-blk device in the host kernel, served by one
 * vhost worker per virtqueue.
 *
 * A virtual machine monitor opens /dev/vhost-blk-poll, hands it the guest's
 * memory map and rings with the standard vhost ioctls and attaches a backing
 * block device or file with VHOST_BLK_SET_BACKEND (<linux/vhost_blk.h>).
 *
 * On a block device, the worker builds each read or write as a bio on the
 * guest's own pages and submits it itself, so that blk-mq gives it the
 * hardware queue of the worker's CPU; flush, discard and write-zeroes are
 * bios too.  Where the device has poll queues and the ring polls, the bios
 * are polled (REQ_POLLED) and reaped by the worker in batches.  On a
 * regular file, reads and writes are asynchronous direct I/O through its
 * read_iter/write_iter.  Nothing the worker does waits for the device:
 * what would (a device without room, fsync, fallocate, buffers direct I/O
 * cannot take, the page cache) is done on vhost_blk_wq and answered like
 * any other request.  The requests come from a pool of each vring, sized
 * by the ring; the worker answers them, status byte and used ring in
 * batches, in the loop it polls in or woken by the first completion.
 *
 * Lock order: vhost_blk.dev.mutex -> vhost_virtqueue.mutex.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bio.h>
#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/compat.h>
#include <linux/cpumask.h>
#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/falloc.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kthread.h>
#include <linux/llist.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/nospec.h>
#include <linux/pagemap.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/clock.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uio.h>
#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "vhost.h"

/* A virtio-blk device has at most 65535 virtqueues; keep far below that. */
#define VHOST_BLK_MAX_QUEUES	256
#define VHOST_BLK_DEF_QUEUES	16

/*
 * Bytes and requests one pass of a worker serves on a virtqueue before it
 * yields, so that a busy queue cannot starve the others of its worker.
 */
#define VHOST_BLK_WEIGHT	0x80000
#define VHOST_BLK_PKT_WEIGHT	256

/*
 * The most data one read or write may carry: as many segments as a chain
 * has iovecs, of VHOST_BLK_SIZE_MAX each (what the VMM advertises).  Far
 * below MAX_RW_COUNT, and the used length fits its 32 bits.
 */
#define VHOST_BLK_MAX_DATA	((size_t)UIO_MAXIOV * VHOST_BLK_SIZE_MAX)

/*
 * Pages of a read or write that the request's own bio holds (64 KiB of
 * scattered 4 KiB pages); a larger one takes a bio of vhost_blk_bio_set.
 */
#define VHOST_BLK_INLINE_VECS	16
/* Iovecs of a chain a request keeps a copy of without allocating. */
#define VHOST_BLK_INLINE_IOVS	8

enum {
	VHOST_BLK_FEATURES = VHOST_FEATURES |
			     (1ULL << VIRTIO_BLK_F_SEG_MAX) |
			     (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
			     (1ULL << VIRTIO_BLK_F_FLUSH) |
			     (1ULL << VIRTIO_BLK_F_MQ) |
			     (1ULL << VIRTIO_BLK_F_DISCARD) |
			     (1ULL << VIRTIO_BLK_F_WRITE_ZEROES) |
			     (1ULL << VIRTIO_BLK_F_RO),
};

static unsigned int max_queues = VHOST_BLK_DEF_QUEUES;

static int max_queues_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, 1, VHOST_BLK_MAX_QUEUES);
}

static const struct kernel_param_ops max_queues_ops = {
	.set = max_queues_set,
	.get = param_get_uint,
};

module_param_cb(max_queues, &max_queues_ops, &max_queues, 0644);
MODULE_PARM_DESC(max_queues,
		 "Virtqueues of each device opened from now on (1-256, default 16)");

static unsigned int poll_us = 50;

static int poll_us_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, 0, USEC_PER_SEC);
}

static const struct kernel_param_ops poll_us_ops = {
	.set = poll_us_set,
	.get = param_get_uint,
};

module_param_cb(poll_us, &poll_us_ops, &poll_us, 0644);
MODULE_PARM_DESC(poll_us,
		 "Default poll budget of new vrings in microseconds, 0 for notifications only (0-1000000, default 50)");

/* Bios of reads and writes too large for a request's own. */
static struct bio_set vhost_blk_bio_set;
/* Where requests wait that the worker must not wait for. */
static struct workqueue_struct *vhost_blk_wq;
static struct dentry *vhost_blk_debugfs;
static atomic_t vhost_blk_ids = ATOMIC_INIT(0);

/* The backing store, shared by all virtqueues of a device. */
struct vhost_blk_backend {
	struct file *file;
	/* NULL for a regular file. */
	struct block_device *bdev;
	/* The block device can refuse a bio instead of waiting (REQ_NOWAIT). */
	bool nowait;
	/* The block device has poll queues (REQ_POLLED, bio_poll). */
	bool poll;
	/* In 512-byte sectors. */
	u64 capacity;
	bool read_only;
	/* Opened O_DSYNC: a write is answered once it is durable. */
	bool dsync;
};

/* What a vring's worker did, for debugfs; written under the vq mutex. */
struct vhost_blk_stats {
	/* Requests answered. */
	u64 requests;
	/* Times a guest notification woke the worker. */
	u64 kicks;
	/* Interrupts sent to the guest (call eventfd signals). */
	u64 signals;
	/* Requests whose completion the worker polled from the device. */
	u64 polled;
	/* Passes of the worker over the ring that found work, and none. */
	u64 busy_passes;
	u64 idle_passes;
	/* Updates of the used ring: requests / batches is the batch size. */
	u64 batches;
	/* Requests handed to vhost_blk_wq, where they may wait. */
	u64 slow;
};

struct vhost_blk_vq {
	struct vhost_virtqueue vq;
	struct vhost_blk *blk;
	/* Continues polling after the worker yielded. */
	struct vhost_work poll_work;
	/* Pins the worker: runs in it. */
	struct vhost_work pin_work;
	struct cpumask pin_mask;
	int pin_ret;
	/* The CPU the worker is pinned to, -1 for none; under dev.mutex. */
	int cpu;
	/* local_clock() when the ring went idle while polled, or 0. */
	u64 idle_since;
	/* The requests, sized by the ring while it has a backend. */
	struct vhost_blk_req *pool;
	struct vhost_blk_req *free;
	/* The pool ran dry: an answer resumes taking requests. */
	bool starved;
	/* The worker is in its loop and answers what ends without a wakeup. */
	bool polling;
	/* Requests in flight on polled queues of the backend. */
	struct list_head polled;
	struct vhost_blk_stats stats;
	/* Requests whose I/O has ended, to be answered by the worker. */
	struct llist_head done;
	struct vhost_work done_work;
	/* Frees the done requests when the worker is gone. */
	struct work_struct reap_work;
	/* Requests taken from this ring and not yet answered. */
	atomic_t inflight;
	/* A request was taken since the last vhost_blk_settle(). */
	bool taken;
	/* A chain could not be answered; set until the ring is reset. */
	bool broken;
};

struct vhost_blk {
	struct vhost_dev dev;
	/* Guarded by dev.mutex; the vqs hold it as their backend. */
	struct vhost_blk_backend *backend;
	/* Guarded by dev.mutex. */
	u8 serial[VIRTIO_BLK_ID_BYTES];
	/* Woken when a ring's last request in flight is answered. */
	wait_queue_head_t inflight_wq;
	struct dentry *debugfs;
	/* Number of virtqueues, fixed at open. */
	unsigned int nvqs;
	/* vqs[i].vq is guarded by its own mutex. */
	struct vhost_blk_vq vqs[] __counted_by(nvqs);
};

/* What a request waits for on vhost_blk_wq, off the worker, where it may sleep. */
enum vhost_blk_slow {
	/* Its bio, refused by a device without room: submitted to wait. */
	VHOST_BLK_SLOW_BIO = 1,
	/* A read or write through the file, synchronous (the page cache). */
	VHOST_BLK_SLOW_RW,
	/* vfs_fsync(): a file, or dirty pages in the device's page cache. */
	VHOST_BLK_SLOW_FLUSH,
	/* Discard or write-zeroes through fallocate or the page cache. */
	VHOST_BLK_SLOW_DISCARD,
};

/*
 * One request of a vring, from the vring's pool.  Everything before
 * inline_iov is cleared when the request is taken.
 */
struct vhost_blk_req {
	struct vhost_blk_vq *bvq;
	struct vhost_blk_backend *be;
	/* On bvq->done once its I/O ended. */
	struct llist_node node;
	/* On bvq->free while unused. */
	struct vhost_blk_req *next_free;
	struct work_struct work;
	struct kiocb iocb;
	/* A request served by a bio: &inline_bio, or one of vhost_blk_bio_set. */
	struct bio *bio;
	/* The bio's extent, to submit it again after a refusal. */
	struct bvec_iter bio_iter;
	unsigned short bio_vcnt;
	bool bio_pinned;
	/* VIRTIO_BLK_T_*. */
	u32 type;
	u16 head;
	u8 status;
	/* enum vhost_blk_slow, on vhost_blk_wq. */
	u8 slow;
	bool write;
	/* Discard or write-zeroes: may unmap. */
	bool unmap;
	/* On bvq->polled: a bio submitted with REQ_POLLED. */
	bool polled;
	/* The I/O ended (before the request goes on bvq->done). */
	bool io_done;
	/*
	 * To be done again, off the worker, as slow says: refused with
	 * REQ_NOWAIT/IOCB_NOWAIT, or a write-zeroes the device turned down.
	 */
	bool again;
	/*
	 * Bytes of the device-writable buffers written from their start:
	 * the used length (virtio 1.2, 2.7.8: never more than was written).
	 */
	u32 used_len;
	/* Bytes of data a read or write moves. */
	size_t data_len;
	/*
	 * Bytes at the start of the device-writable buffers the device may
	 * have written besides the status byte: the dirty log covers them.
	 */
	size_t dirty_len;
	/* Bytes of the device-writable buffers, status byte included. */
	size_t in_len;
	u8 __user *status_ptr;
	/*
	 * A copy of the chain's iovecs, where the request may need them after
	 * it was taken (a file, a slow path, the dirty log): inline_iov or
	 * allocated; NULL for a bio built from the chain itself.
	 */
	struct iovec *iov;
	unsigned int out_num;
	unsigned int in_num;
	struct vhost_log *log;
	unsigned int log_num;
	/* Where a read, write, discard or write-zeroes starts in the backend. */
	loff_t pos;
	/* Bytes of a discard or write-zeroes. */
	loff_t len;
	struct list_head poll_node;

	struct iovec inline_iov[VHOST_BLK_INLINE_IOVS];
	struct bio inline_bio;
	struct bio_vec inline_vecs[VHOST_BLK_INLINE_VECS];
};

static int vhost_blk_pool_alloc(struct vhost_blk_vq *bvq, unsigned int num)
{
	struct vhost_blk_req *pool;
	unsigned int i;

	pool = kvcalloc(num, sizeof(*pool), GFP_KERNEL_ACCOUNT);
	if (!pool)
		return -ENOMEM;
	bvq->free = NULL;
	for (i = num; i--; ) {
		pool[i].next_free = bvq->free;
		bvq->free = &pool[i];
	}
	bvq->pool = pool;
	bvq->starved = false;
	return 0;
}

static void vhost_blk_pool_free(struct vhost_blk_vq *bvq)
{
	kvfree(bvq->pool);
	bvq->pool = NULL;
	bvq->free = NULL;
}

/* A request from the ring's pool, or NULL; called with the vq mutex held. */
static struct vhost_blk_req *vhost_blk_req_get(struct vhost_blk_vq *bvq)
{
	struct vhost_blk_req *req = bvq->free;

	if (unlikely(!req))
		return NULL;
	bvq->free = req->next_free;
	memset(req, 0, offsetof(struct vhost_blk_req, inline_iov));
	req->bvq = bvq;
	atomic_inc(&bvq->inflight);
	WRITE_ONCE(bvq->taken, true);
	return req;
}

static void vhost_blk_unpoll(struct vhost_blk_req *req)
{
	if (req->polled) {
		list_del(&req->poll_node);
		req->polled = false;
	}
}

/*
 * A bio of the request let go: its pages unpinned (marked dirty if the
 * device wrote into them), and the bio itself, the request's own or one
 * of vhost_blk_bio_set.
 */
static void vhost_blk_bio_free(struct vhost_blk_req *req, struct bio *bio,
			       bool dirty)
{
	bio_release_pages(bio, dirty);
	if (bio == &req->inline_bio)
		bio_uninit(bio);
	else
		bio_put(bio);
}

/* Back to the pool, its pages and copies released; with the vq mutex held. */
static void vhost_blk_req_put(struct vhost_blk_req *req)
{
	struct vhost_blk_vq *bvq = req->bvq;

	vhost_blk_unpoll(req);
	/* A read wrote into the pages: they are dirty. */
	if (req->bio)
		vhost_blk_bio_free(req, req->bio, !req->write);
	if (req->iov != req->inline_iov)
		kfree(req->iov);
	kfree(req->log);
	req->next_free = bvq->free;
	bvq->free = req;
	if (atomic_dec_and_test(&bvq->inflight))
		wake_up_all(&bvq->blk->inflight_wq);
}

/*
 * Whether the guest wants an interrupt for the used entries just added:
 * VRING_AVAIL_F_NO_INTERRUPT, or used_event with VIRTIO_RING_F_EVENT_IDX.
 */
static bool vhost_blk_need_signal(struct vhost_virtqueue *vq)
{
	__virtio16 v16;
	bool valid;
	u16 old;

	/* The used index is visible before the guest's wish is read. */
	smp_mb();
	if (vhost_has_feature(vq, VIRTIO_F_NOTIFY_ON_EMPTY) &&
	    vq->avail_idx == vq->last_avail_idx)
		return true;
	if (!vhost_has_feature(vq, VIRTIO_RING_F_EVENT_IDX)) {
		if (get_user(v16, &vq->avail->flags))
			return true;
		return !(v16 & cpu_to_vhost16(vq, VRING_AVAIL_F_NO_INTERRUPT));
	}
	old = vq->signalled_used;
	valid = vq->signalled_used_valid;
	vq->signalled_used = vq->last_used_idx;
	vq->signalled_used_valid = true;
	if (!valid)
		return true;
	if (get_user(v16, (__virtio16 __user *)&vq->avail->ring[vq->num]))
		return true;
	return vring_need_event(vhost16_to_cpu(vq, v16), vq->last_used_idx,
				old);
}

static void vhost_blk_add_used(struct vhost_blk_vq *bvq, unsigned int n)
{
	struct vhost_virtqueue *vq = &bvq->vq;

	/* Counted before the guest can see them, so never behind it. */
	bvq->stats.requests += n;
	if (vhost_add_used_n(vq, vq->heads, n))
		vq_err(vq, "cannot update the used ring\n");
	bvq->stats.batches++;
	if (vq->call_ctx.ctx && vhost_blk_need_signal(vq)) {
		eventfd_signal(vq->call_ctx.ctx);
		bvq->stats.signals++;
	}
}

/*
 * Migration: mark dirty what the device may have written into the guest's
 * memory, the data (also of a failed or short read: direct I/O may have
 * written any part of it) and the status byte, the last writable byte.
 */
static void vhost_blk_log(struct vhost_virtqueue *vq,
			  struct vhost_blk_req *req)
{
	struct vhost_log *last = &req->log[req->log_num - 1];
	struct vhost_log status;
	struct iovec siov;

	if (req->dirty_len)
		vhost_log_write(vq, req->log, req->log_num, req->dirty_len,
				req->iov + req->out_num, req->in_num);
	while (last > req->log && !last->len)
		last--;
	status.addr = last->addr + last->len - 1;
	status.len = 1;
	siov.iov_base = req->status_ptr;
	siov.iov_len = 1;
	vhost_log_write(vq, &status, 1, 1, &siov, 1);
}

static void vhost_blk_slow_work(struct work_struct *work);

/* Hand a request to vhost_blk_wq, where it may wait; with the vq mutex held. */
static void vhost_blk_slow(struct vhost_blk_req *req, enum vhost_blk_slow op)
{
	vhost_blk_unpoll(req);
	req->again = false;
	req->io_done = false;
	req->slow = op;
	req->bvq->stats.slow++;
	INIT_WORK(&req->work, vhost_blk_slow_work);
	queue_work(vhost_blk_wq, &req->work);
}

/*
 * Answer the requests whose I/O ended: status byte, dirty log, used ring,
 * one interrupt per batch if the guest wants it.  Called with the vq mutex
 * held; returns the number of requests answered.
 */
static unsigned int vhost_blk_complete(struct vhost_blk_vq *bvq)
{
	struct vhost_virtqueue *vq = &bvq->vq;
	struct vhost_blk_req *req, *tmp;
	struct llist_node *list;
	unsigned int n = 0, total = 0;

	if (llist_empty(&bvq->done))
		return 0;
	list = llist_reverse_order(llist_del_all(&bvq->done));
	llist_for_each_entry_safe(req, tmp, list, node) {
		if (unlikely(req->again)) {
			vhost_blk_slow(req, req->slow);
			continue;
		}
		/* A polled queue completes a bio only when polled. */
		if (req->polled && req->bio->bi_opf & REQ_POLLED)
			bvq->stats.polled++;
		if (put_user(req->status, req->status_ptr)) {
			vq_err(vq, "cannot write the status of request %u\n",
			       req->head);
			req->used_len = 0;
		}
		if (unlikely(req->log))
			vhost_blk_log(vq, req);
		vq->heads[n].id = cpu_to_vhost32(vq, req->head);
		vq->heads[n].len = cpu_to_vhost32(vq, req->used_len);
		n++;
		total++;
		vhost_blk_req_put(req);
		if (n == UIO_MAXIOV) {
			vhost_blk_add_used(bvq, n);
			n = 0;
		}
	}
	if (n)
		vhost_blk_add_used(bvq, n);
	return total;
}

/*
 * Answer the requests whose I/O ended while the worker was not polling,
 * in the worker of their virtqueue; take requests again if the pool had
 * run dry.
 */
static void vhost_blk_done_work(struct vhost_work *work)
{
	struct vhost_blk_vq *bvq = container_of(work, struct vhost_blk_vq,
						done_work);

	if (llist_empty(&bvq->done))
		return;
	mutex_lock(&bvq->vq.mutex);
	vhost_blk_complete(bvq);
	if (bvq->starved && bvq->free) {
		bvq->starved = false;
		vhost_vq_work_queue(&bvq->vq, &bvq->poll_work);
	}
	mutex_unlock(&bvq->vq.mutex);
}

/*
 * The worker is gone (its owner was killed): nobody can write to the
 * guest's memory any more, so only release what is done.
 */
static void vhost_blk_reap_work(struct work_struct *work)
{
	struct vhost_blk_vq *bvq = container_of(work, struct vhost_blk_vq,
						reap_work);
	struct vhost_blk_req *req, *tmp;

	mutex_lock(&bvq->vq.mutex);
	llist_for_each_entry_safe(req, tmp, llist_del_all(&bvq->done), node)
		vhost_blk_req_put(req);
	mutex_unlock(&bvq->vq.mutex);
}

/*
 * Reap the completions of the bios on polled queues (they do not
 * interrupt), in one batch.  A worker's bios go to the hardware queue of
 * its CPU, so one poll per queue serves them all.  Called with the vq
 * mutex held; the completions go to bvq->done.
 */
static void vhost_blk_poll_io(struct vhost_blk_vq *bvq)
{
	DEFINE_IO_COMP_BATCH(iob);
	struct vhost_blk_req *req;
	struct bio *last = NULL;
	blk_qc_t cookie;

	list_for_each_entry(req, &bvq->polled, poll_node) {
		if (READ_ONCE(req->io_done))
			continue;
		/* The bio is the request's until it is answered. */
		cookie = READ_ONCE(req->bio->bi_cookie);
		if (last && cookie == READ_ONCE(last->bi_cookie) &&
		    req->bio->bi_bdev == last->bi_bdev)
			continue;
		last = req->bio;
		bio_poll(req->bio, &iob, BLK_POLL_ONESHOT);
	}
	if (!rq_list_empty(&iob.req_list))
		iob.complete(&iob);
}

/* Whether a request of the ring is in the device and must be polled. */
static bool vhost_blk_owes_polls(struct vhost_blk_vq *bvq)
{
	struct vhost_blk_req *req;

	list_for_each_entry(req, &bvq->polled, poll_node)
		if (!READ_ONCE(req->io_done))
			return true;
	return false;
}

/*
 * The used length of a request that wrote written bytes at the start of
 * its device-writable buffers: all of them with the status byte when that
 * follows, else only those bytes (an underestimate is what virtio allows
 * where the rest was not written).
 */
static void vhost_blk_set_written(struct vhost_blk_req *req, size_t written)
{
	req->used_len = written + 1 == req->in_len ? req->in_len : written;
}

/*
 * The I/O of a request ended, in any context.  While the worker polls it
 * finds the request on bvq->done in its loop; otherwise the first request
 * on the list wakes it.
 */
static void vhost_blk_req_done(struct vhost_blk_req *req)
{
	struct vhost_blk_vq *bvq = req->bvq;

	WRITE_ONCE(req->io_done, true);
	/*
	 * Once on the list, the request may be answered by a polling worker
	 * and the device released: the RCU read section keeps bvq alive
	 * until the work is queued (vhost_blk_settle()).  llist_add() is a
	 * full barrier before bvq->polling is read (vhost_blk_serve()).
	 */
	rcu_read_lock();
	if (llist_add(&req->node, &bvq->done) && !READ_ONCE(bvq->polling) &&
	    !vhost_vq_work_queue(&bvq->vq, &bvq->done_work))
		queue_work(system_wq, &bvq->reap_work);
	rcu_read_unlock();
}

static void vhost_blk_bio_end_io(struct bio *bio)
{
	struct vhost_blk_req *req = bio->bi_private;

	if (likely(!bio->bi_status)) {
		req->status = VIRTIO_BLK_S_OK;
		if (req->data_len && !req->write)
			vhost_blk_set_written(req, req->data_len);
	} else if (bio->bi_status == BLK_STS_AGAIN &&
		   bio->bi_opf & REQ_NOWAIT) {
		/* No room in the device: submitted again, off the worker. */
		req->again = true;
		req->slow = VHOST_BLK_SLOW_BIO;
	} else if (bio->bi_status == BLK_STS_NOTSUPP &&
		   req->type == VIRTIO_BLK_T_WRITE_ZEROES) {
		/*
		 * The device advertised write-zeroes and cannot (a loop
		 * device on a file system without ZERO_RANGE): zeroes are
		 * written instead, off the worker.
		 */
		req->again = true;
		req->slow = VHOST_BLK_SLOW_DISCARD;
	} else if (bio->bi_status == BLK_STS_NOTSUPP &&
		   req->type == VIRTIO_BLK_T_DISCARD) {
		req->status = VIRTIO_BLK_S_UNSUPP;
	} else {
		req->status = VIRTIO_BLK_S_IOERR;
	}
	vhost_blk_req_done(req);
}

/*
 * Submit the bio of a request from the worker, so that blk-mq gives it
 * the hardware queue of the worker's CPU.  It never waits: a device that
 * can refuse gets REQ_NOWAIT, and what it refuses is submitted again on
 * vhost_blk_wq.  A read or write on a polled queue is polled by the
 * worker while the ring polls.
 */
static void vhost_blk_bio_submit(struct vhost_blk_req *req, struct bio *bio,
				 bool poll)
{
	struct vhost_blk_vq *bvq = req->bvq;

	bio->bi_private = req;
	bio->bi_end_io = vhost_blk_bio_end_io;
	if (req->be->nowait)
		bio->bi_opf |= REQ_NOWAIT;
	if (poll && req->be->poll && bvq->vq.busyloop_timeout) {
		bio->bi_opf |= REQ_POLLED;
		req->polled = true;
		list_add_tail(&req->poll_node, &bvq->polled);
	}
	req->bio = bio;
	req->bio_iter = bio->bi_iter;
	req->bio_vcnt = bio->bi_vcnt;
	req->bio_pinned = bio_flagged(bio, BIO_PAGE_PINNED);
	submit_bio(bio);
}

/* A refused bio, again, without REQ_NOWAIT: on vhost_blk_wq. */
static void vhost_blk_bio_resubmit(struct vhost_blk_req *req)
{
	struct bio *bio = req->bio;

	bio_reset(bio, req->be->bdev,
		  bio->bi_opf & ~(REQ_NOWAIT | REQ_POLLED));
	bio->bi_iter = req->bio_iter;
	bio->bi_vcnt = req->bio_vcnt;
	if (req->bio_pinned)
		bio_set_flag(bio, BIO_PAGE_PINNED);
	bio->bi_private = req;
	bio->bi_end_io = vhost_blk_bio_end_io;
	submit_bio(bio);
}

/* The answer of a read or write through the file. */
static void vhost_blk_rw_done(struct vhost_blk_req *req, long ret)
{
	if (ret == -EAGAIN && req->iocb.ki_flags & IOCB_NOWAIT) {
		/* Answered later: done again, off the worker. */
		req->again = true;
		req->slow = VHOST_BLK_SLOW_RW;
		vhost_blk_req_done(req);
		return;
	}
	/* A short transfer (past the end of a shrunk file) is an error. */
	req->status = ret == req->data_len ? VIRTIO_BLK_S_OK :
					     VIRTIO_BLK_S_IOERR;
	if (!req->write)
		vhost_blk_set_written(req, ret > 0 ? ret : 0);
	vhost_blk_req_done(req);
}

/*
 * Asynchronous completion; vfs_iocb_iter_write() leaves ending the write
 * of a queued iocb to it.
 */
static void vhost_blk_rw_complete(struct kiocb *iocb, long ret)
{
	if (iocb->ki_flags & IOCB_WRITE)
		kiocb_end_write(iocb);
	vhost_blk_rw_done(container_of(iocb, struct vhost_blk_req, iocb), ret);
}

/*
 * Read-only: the backend was opened so, or the device offered
 * VIRTIO_BLK_F_RO and the driver took it.
 */
static bool vhost_blk_read_only(struct vhost_blk_vq *bvq,
				struct vhost_blk_backend *be)
{
	return be->read_only || vhost_has_feature(&bvq->vq, VIRTIO_BLK_F_RO);
}

/* Whether nr sectors from sector lie inside the backend. */
static bool vhost_blk_range_ok(struct vhost_blk_backend *be, u64 sector,
			       u64 nr)
{
	return sector <= be->capacity && nr <= be->capacity - sector;
}

/* Whether direct I/O can take the guest's buffers as they are. */
static bool vhost_blk_dio_ok(struct vhost_blk_backend *be,
			     struct iov_iter *data, loff_t pos)
{
	if (!(be->file->f_mode & FMODE_CAN_ODIRECT))
		return false;
	if (be->bdev)
		return !(pos & (bdev_logical_block_size(be->bdev) - 1)) &&
		       bdev_iter_is_aligned(be->bdev, data);
	return !(iov_iter_alignment(data) & (SECTOR_SIZE - 1));
}

/*
 * Keep what the request needs of the chain after the worker moved on: its
 * iovecs and dirty-log entries.  A long chain is the one allocation a
 * request may make; it does not wait while the ring owes polls.
 */
static int vhost_blk_copy_chain(struct vhost_blk_req *req,
				unsigned int log_num)
{
	struct vhost_blk_vq *bvq = req->bvq;
	unsigned int n = req->out_num + req->in_num;
	gfp_t gfp = GFP_KERNEL_ACCOUNT;

	if (req->iov)
		return 0;
	if (vhost_blk_owes_polls(bvq))
		gfp = GFP_NOWAIT | __GFP_ACCOUNT | __GFP_NOWARN;
	if (log_num) {
		req->log = kmemdup_array(bvq->vq.log, log_num,
					 sizeof(*req->log), gfp);
		if (!req->log)
			return -ENOMEM;
		req->log_num = log_num;
	}
	if (n <= VHOST_BLK_INLINE_IOVS) {
		req->iov = req->inline_iov;
		memcpy(req->iov, bvq->vq.iov, n * sizeof(*req->iov));
	} else {
		req->iov = kmemdup_array(bvq->vq.iov, n, sizeof(*req->iov),
					 gfp);
		if (!req->iov)
			return -ENOMEM;
	}
	return 0;
}

/* The data of a read or write, from the request's copy of the chain. */
static void vhost_blk_data_iter(struct vhost_blk_req *req,
				struct iov_iter *data)
{
	if (req->write) {
		iov_iter_init(data, ITER_SOURCE, req->iov, req->out_num,
			      sizeof(struct virtio_blk_outhdr) + req->data_len);
		iov_iter_advance(data, sizeof(struct virtio_blk_outhdr));
	} else {
		iov_iter_init(data, ITER_DEST, req->iov + req->out_num,
			      req->in_num, req->data_len);
	}
}

/*
 * Through the VFS's checks (LSM, fsnotify, the position and length), as
 * read(2) and write(2) would go.
 */
static ssize_t vhost_blk_rw_submit(struct vhost_blk_req *req,
				   struct iov_iter *data)
{
	struct file *file = req->iocb.ki_filp;

	if (req->write)
		return vfs_iocb_iter_write(file, &req->iocb, data);
	return vfs_iocb_iter_read(file, &req->iocb, data);
}

/*
 * A read or write on vhost_blk_wq, synchronous: direct I/O where the
 * buffers allow it, else through the page cache.  On a block device the
 * page cache is written back and dropped again afterwards, so that the
 * worker's bios, which bypass it, find it empty.
 */
static ssize_t vhost_blk_rw_sync(struct vhost_blk_req *req)
{
	struct vhost_blk_backend *be = req->be;
	struct address_space *mapping = be->file->f_mapping;
	loff_t end = req->pos + req->data_len - 1;
	struct iov_iter data;
	ssize_t ret;
	int err;

	vhost_blk_data_iter(req, &data);
	init_sync_kiocb(&req->iocb, be->file);
	/* The guest addresses sectors, whatever the file's open flags. */
	req->iocb.ki_flags &= ~IOCB_DIRECT;
	if (req->write)
		req->iocb.ki_flags |= IOCB_WRITE;
	if (vhost_blk_dio_ok(be, &data, req->pos)) {
		req->iocb.ki_flags |= IOCB_DIRECT;
		req->iocb.ki_pos = req->pos;
		ret = vhost_blk_rw_submit(req, &data);
		/* The file system's own alignment rules: go buffered. */
		if (ret != -EINVAL)
			return ret;
		vhost_blk_data_iter(req, &data);
		req->iocb.ki_flags &= ~IOCB_DIRECT;
	}
	req->iocb.ki_pos = req->pos;
	ret = vhost_blk_rw_submit(req, &data);
	if (be->bdev && ret > 0) {
		err = filemap_write_and_wait_range(mapping, req->pos, end);
		if (err)
			return err;
		invalidate_inode_pages2_range(mapping, req->pos >> PAGE_SHIFT,
					      end >> PAGE_SHIFT);
	}
	return ret;
}

/*
 * A read or write on a block device as one bio built on the guest's
 * pages, without copying the chain.  Returns -EAGAIN where it must take
 * the slow path instead: buffers direct I/O cannot take, more pages than
 * a bio holds, or pages of the device in the page cache (buffered
 * requests, or another user of the device), which bios would bypass.
 */
static int vhost_blk_bio_rw(struct vhost_blk_req *req, struct iov_iter *data)
{
	struct vhost_blk_backend *be = req->be;
	blk_opf_t opf = req->write ? REQ_OP_WRITE | REQ_SYNC | REQ_IDLE :
				     REQ_OP_READ;
	struct bio *bio;
	int nr;

	if (READ_ONCE(be->file->f_mapping->nrpages) ||
	    !vhost_blk_dio_ok(be, data, req->pos))
		return -EAGAIN;
	/* As direct I/O through the file would do it (block/fops.c) */
	if (req->write && be->dsync)
		opf |= REQ_FUA;
	nr = iov_iter_npages(data, BIO_MAX_VECS + 1);
	if (nr > BIO_MAX_VECS)
		return -EAGAIN;
	if (nr <= VHOST_BLK_INLINE_VECS) {
		bio = &req->inline_bio;
		bio_init(bio, be->bdev, req->inline_vecs,
			 VHOST_BLK_INLINE_VECS, opf);
	} else {
		bio = bio_alloc_bioset(be->bdev, nr, opf,
				       GFP_NOWAIT | __GFP_NOWARN,
				       &vhost_blk_bio_set);
		if (!bio)
			return -EAGAIN;
	}
	bio->bi_iter.bi_sector = req->pos >> SECTOR_SHIFT;
	if (bio_iov_iter_get_pages(bio, data) || iov_iter_count(data)) {
		vhost_blk_bio_free(req, bio, false);
		return -EAGAIN;
	}
	vhost_blk_bio_submit(req, bio, true);
	return 0;
}

/*
 * A read or write on a regular file: asynchronous direct I/O through the
 * file, IOCB_NOWAIT where the file supports it; what would wait, and
 * buffers direct I/O cannot take, go to vhost_blk_wq.
 */
static void vhost_blk_file_rw(struct vhost_blk_req *req,
			      struct iov_iter *data)
{
	struct file *file = req->be->file;
	struct kiocb *iocb = &req->iocb;
	ssize_t ret;

	if (!vhost_blk_dio_ok(req->be, data, req->pos)) {
		vhost_blk_slow(req, VHOST_BLK_SLOW_RW);
		return;
	}
	init_sync_kiocb(iocb, file);
	iocb->ki_flags |= IOCB_DIRECT;
	if (file->f_mode & FMODE_NOWAIT)
		iocb->ki_flags |= IOCB_NOWAIT;
	if (req->write)
		iocb->ki_flags |= IOCB_WRITE;
	iocb->ki_pos = req->pos;
	iocb->ki_complete = vhost_blk_rw_complete;
	ret = vhost_blk_rw_submit(req, data);
	if (ret == -EIOCBQUEUED)
		return;
	if ((ret == -EAGAIN && iocb->ki_flags & IOCB_NOWAIT) ||
	    ret == -EINVAL) {
		vhost_blk_slow(req, VHOST_BLK_SLOW_RW);
		return;
	}
	vhost_blk_rw_done(req, ret);
}

/* Reads and writes; returns a status, -EIOCBQUEUED or -ENOMEM. */
static int vhost_blk_rw(struct vhost_blk_req *req, struct iov_iter *data,
			u64 sector, bool write)
{
	struct vhost_blk_backend *be = req->be;
	size_t len = iov_iter_count(data);
	int ret;

	if (len & (SECTOR_SIZE - 1) || len > VHOST_BLK_MAX_DATA ||
	    !vhost_blk_range_ok(be, sector, len >> SECTOR_SHIFT))
		return VIRTIO_BLK_S_IOERR;
	if (write && vhost_blk_read_only(req->bvq, be))
		return VIRTIO_BLK_S_IOERR;
	if (!len)
		return VIRTIO_BLK_S_OK;

	req->data_len = len;
	req->write = write;
	if (!write)
		req->dirty_len = len;
	req->pos = sector << SECTOR_SHIFT;
	if (!be->bdev) {
		vhost_blk_file_rw(req, data);
		return -EIOCBQUEUED;
	}
	if (!vhost_blk_bio_rw(req, data))
		return -EIOCBQUEUED;
	ret = vhost_blk_copy_chain(req, 0);
	if (ret)
		return ret;
	vhost_blk_slow(req, VHOST_BLK_SLOW_RW);
	return -EIOCBQUEUED;
}

/*
 * Flush: on a block device an empty REQ_PREFLUSH bio, unless its page
 * cache holds data not yet on the device (buffered requests); then, and
 * on a file, vfs_fsync() on vhost_blk_wq.
 */
static void vhost_blk_flush(struct vhost_blk_req *req)
{
	struct vhost_blk_backend *be = req->be;
	struct address_space *mapping = be->file->f_mapping;

	if (be->bdev && !mapping_tagged(mapping, PAGECACHE_TAG_DIRTY) &&
	    !mapping_tagged(mapping, PAGECACHE_TAG_WRITEBACK)) {
		bio_init(&req->inline_bio, be->bdev, NULL, 0,
			 REQ_OP_WRITE | REQ_PREFLUSH);
		vhost_blk_bio_submit(req, &req->inline_bio, false);
		return;
	}
	vhost_blk_slow(req, VHOST_BLK_SLOW_FLUSH);
}

/*
 * Discard on a block device, on vhost_blk_wq.  The device changes under
 * the page cache, which buffered requests may have filled: write back and
 * drop the cached pages of the range first, and keep the cache from
 * filling meanwhile.
 */
static int vhost_blk_bdev_discard(struct vhost_blk_backend *be, loff_t pos,
				  loff_t len)
{
	struct address_space *mapping = be->file->f_mapping;
	int ret;

	filemap_invalidate_lock(mapping);
	ret = filemap_write_and_wait_range(mapping, pos, pos + len - 1);
	if (!ret)
		ret = invalidate_inode_pages2_range(mapping, pos >> PAGE_SHIFT,
						    (pos + len - 1) >> PAGE_SHIFT);
	if (!ret)
		ret = blkdev_issue_discard(be->bdev, pos >> SECTOR_SHIFT,
					   len >> SECTOR_SHIFT, GFP_KERNEL);
	filemap_invalidate_unlock(mapping);
	return ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

/* Discard or write-zeroes on vhost_blk_wq; returns the status. */
static int vhost_blk_discard_sync(struct vhost_blk_req *req)
{
	struct vhost_blk_backend *be = req->be;
	bool zero = req->type == VIRTIO_BLK_T_WRITE_ZEROES;
	loff_t pos = req->pos, len = req->len;
	int mode, ret;

	if (be->bdev && !zero)
		return vhost_blk_bdev_discard(be, pos, len);

	/*
	 * Through fallocate, also on a block device: it drops the page cache
	 * of the range, which buffered requests may have filled, first.
	 */
	mode = FALLOC_FL_KEEP_SIZE;
	mode |= zero && !req->unmap ? FALLOC_FL_ZERO_RANGE :
				      FALLOC_FL_PUNCH_HOLE;
	ret = vfs_fallocate(be->file, mode, pos, len);
	/* Without ZERO_RANGE (tmpfs), a punched hole reads back as zeroes. */
	if (ret == -EOPNOTSUPP && mode & FALLOC_FL_ZERO_RANGE && !be->bdev)
		ret = vfs_fallocate(be->file,
				    FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
				    pos, len);
	/*
	 * A block device punches a hole only where it can unmap and zero at
	 * once; UNMAP is a hint, zeroes are what was asked.
	 */
	if (ret == -EOPNOTSUPP && mode & FALLOC_FL_PUNCH_HOLE && be->bdev)
		ret = vfs_fallocate(be->file,
				    FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE,
				    pos, len);
	if (ret == -EOPNOTSUPP && !zero)
		return VIRTIO_BLK_S_UNSUPP;
	return ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

/*
 * One segment of a discard or write-zeroes request; returns a status or
 * -EIOCBQUEUED.  On a block device whose page cache is empty, a bio;
 * otherwise the page cache is kept coherent on vhost_blk_wq.
 */
static int vhost_blk_discard(struct vhost_blk_req *req,
			     struct iov_iter *data, bool read_only)
{
	struct virtio_blk_discard_write_zeroes seg;
	struct vhost_blk_backend *be = req->be;
	bool zero = req->type == VIRTIO_BLK_T_WRITE_ZEROES;
	struct bio *bio = &req->inline_bio;
	blk_opf_t opf;
	u64 sector, nr;
	u32 flags;

	if (iov_iter_count(data) != sizeof(seg) * VHOST_BLK_MAX_DISCARD_SEG)
		return VIRTIO_BLK_S_UNSUPP;
	if (copy_from_iter(&seg, sizeof(seg), data) != sizeof(seg))
		return VIRTIO_BLK_S_IOERR;
	sector = le64_to_cpu(seg.sector);
	nr = le32_to_cpu(seg.num_sectors);
	flags = le32_to_cpu(seg.flags);
	req->unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
	if (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP || (req->unmap && !zero))
		return VIRTIO_BLK_S_UNSUPP;
	if (read_only || nr > VHOST_BLK_MAX_DISCARD_SECTORS ||
	    !vhost_blk_range_ok(be, sector, nr))
		return VIRTIO_BLK_S_IOERR;
	if (!nr)
		return VIRTIO_BLK_S_OK;
	req->pos = sector << SECTOR_SHIFT;
	req->len = nr << SECTOR_SHIFT;

	if (be->bdev) {
		if (!zero && !bdev_max_discard_sectors(be->bdev))
			return VIRTIO_BLK_S_UNSUPP;
		if ((req->pos | req->len) &
		    (bdev_logical_block_size(be->bdev) - 1))
			return VIRTIO_BLK_S_IOERR;
		if (!READ_ONCE(be->file->f_mapping->nrpages) &&
		    (!zero || bdev_write_zeroes_sectors(be->bdev))) {
			opf = zero ? REQ_OP_WRITE_ZEROES : REQ_OP_DISCARD;
			if (zero && !req->unmap)
				opf |= REQ_NOUNMAP;
			bio_init(bio, be->bdev, NULL, 0, opf);
			bio->bi_iter.bi_sector = sector;
			bio->bi_iter.bi_size = req->len;
			vhost_blk_bio_submit(req, bio, false);
			return -EIOCBQUEUED;
		}
	}
	vhost_blk_slow(req, VHOST_BLK_SLOW_DISCARD);
	return -EIOCBQUEUED;
}

/*
 * What the worker handed off, on vhost_blk_wq: here a request may wait.
 * A read or write reaches the guest's memory through the device owner's
 * address space, and the file is used with its opener's credentials.
 */
static void vhost_blk_slow_work(struct work_struct *work)
{
	struct vhost_blk_req *req = container_of(work, struct vhost_blk_req,
						 work);
	struct mm_struct *mm = req->bvq->blk->dev.mm;
	const struct cred *cred;
	ssize_t ret;

	if (req->slow == VHOST_BLK_SLOW_BIO) {
		vhost_blk_bio_resubmit(req);
		return;
	}
	cred = override_creds(req->be->file->f_cred);
	switch (req->slow) {
	case VHOST_BLK_SLOW_RW:
		kthread_use_mm(mm);
		ret = vhost_blk_rw_sync(req);
		kthread_unuse_mm(mm);
		revert_creds(cred);
		vhost_blk_rw_done(req, ret);
		return;
	case VHOST_BLK_SLOW_FLUSH:
		req->status = vfs_fsync(req->be->file, 0) ? VIRTIO_BLK_S_IOERR :
							    VIRTIO_BLK_S_OK;
		break;
	default:
		req->status = vhost_blk_discard_sync(req);
		break;
	}
	revert_creds(cred);
	vhost_blk_req_done(req);
}

static int vhost_blk_get_id(struct vhost_blk *blk, struct iov_iter *data,
			    u32 *written)
{
	size_t len = min_t(size_t, iov_iter_count(data), VIRTIO_BLK_ID_BYTES);

	if (copy_to_iter(blk->serial, len, data) != len)
		return VIRTIO_BLK_S_IOERR;
	*written = len;
	return VIRTIO_BLK_S_OK;
}

/*
 * Serve one chain.  Returns 0 when the request is answered or under way,
 * -EINVAL when the chain has no status byte and cannot be answered, or
 * -ENOBUFS / -ENOMEM when it went back to the ring (no free request, no
 * memory).
 */
static int vhost_blk_handle_req(struct vhost_blk_vq *bvq,
				struct vhost_blk_backend *be, int head,
				unsigned int out, unsigned int in,
				unsigned int log_num)
{
	struct vhost_virtqueue *vq = &bvq->vq;
	struct vhost_blk *blk = bvq->blk;
	struct virtio_blk_outhdr hdr;
	struct iov_iter out_iter, in_iter;
	struct vhost_blk_req *req;
	struct iovec *last;
	u32 written = 0;
	size_t in_len;
	u64 sector;
	int status;

	in_len = iov_length(vq->iov + out, in);
	if (!in || !in_len) {
		vq_err(vq, "request %d has no status byte\n", head);
		return -EINVAL;
	}

	req = vhost_blk_req_get(bvq);
	if (!req) {
		status = -ENOBUFS;
		goto err_discard;
	}
	req->be = be;
	req->head = head;
	req->out_num = out;
	req->in_num = in;
	/* A file's request may be done again off the worker. */
	if (!be->bdev || log_num) {
		status = vhost_blk_copy_chain(req, log_num);
		if (status)
			goto err_put;
	}

	/* The status byte is the last byte the device may write. */
	last = &vq->iov[out + in - 1];
	while (!last->iov_len)
		last--;
	req->status_ptr = (u8 __user *)last->iov_base + last->iov_len - 1;
	req->in_len = in_len;
	vhost_blk_set_written(req, 0);

	iov_iter_init(&out_iter, ITER_SOURCE, vq->iov, out,
		      iov_length(vq->iov, out));
	iov_iter_init(&in_iter, ITER_DEST, vq->iov + out, in, in_len - 1);

	if (copy_from_iter(&hdr, sizeof(hdr), &out_iter) != sizeof(hdr)) {
		status = VIRTIO_BLK_S_IOERR;
		goto answer;
	}
	req->type = vhost32_to_cpu(vq, hdr.type);
	sector = vhost64_to_cpu(vq, hdr.sector);

	switch (req->type) {
	case VIRTIO_BLK_T_IN:
		status = iov_iter_count(&out_iter) ? VIRTIO_BLK_S_IOERR :
			 vhost_blk_rw(req, &in_iter, sector, false);
		break;
	case VIRTIO_BLK_T_OUT:
		status = iov_iter_count(&in_iter) ? VIRTIO_BLK_S_IOERR :
			 vhost_blk_rw(req, &out_iter, sector, true);
		break;
	case VIRTIO_BLK_T_FLUSH:
		vhost_blk_flush(req);
		status = -EIOCBQUEUED;
		break;
	case VIRTIO_BLK_T_GET_ID:
		status = vhost_blk_get_id(blk, &in_iter, &written);
		req->dirty_len = written;
		break;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		/* Only what was negotiated (QEMU's discard=off, ...). */
		if (!vhost_has_feature(vq, req->type == VIRTIO_BLK_T_DISCARD ?
				       VIRTIO_BLK_F_DISCARD :
				       VIRTIO_BLK_F_WRITE_ZEROES)) {
			status = VIRTIO_BLK_S_UNSUPP;
			break;
		}
		status = vhost_blk_discard(req, &out_iter,
					   vhost_blk_read_only(bvq, be));
		break;
	default:
		status = VIRTIO_BLK_S_UNSUPP;
		break;
	}
	if (status == -EIOCBQUEUED)
		return 0;
	if (unlikely(status == -ENOMEM))
		goto err_put;
answer:
	req->status = status;
	vhost_blk_set_written(req, written);
	vhost_blk_req_done(req);
	return 0;

err_put:
	vhost_blk_req_put(req);
err_discard:
	/* Give the chain back; it is served again later. */
	vhost_discard_vq_desc(vq, 1);
	return status;
}

/*
 * Take the requests the guest has made available, until the ring is empty,
 * the ring's share of the worker is used up or its pool is (*weight set,
 * bvq->starved).  Returns how many were taken, or -EIO when the ring
 * stopped.
 */
static int vhost_blk_take(struct vhost_blk_vq *bvq,
			  struct vhost_blk_backend *be, struct vhost_log *log,
			  bool *weight)
{
	struct vhost_virtqueue *vq = &bvq->vq;
	struct vhost_dev *dev = &bvq->blk->dev;
	unsigned int out, in, log_num = 0;
	int head, ret, reqs = 0;
	size_t bytes = 0;

	bvq->starved = false;
	for (;;) {
		head = vhost_get_vq_desc(vq, vq->iov, ARRAY_SIZE(vq->iov),
					 &out, &in, log, &log_num);
		/* A corrupt chain: vhost has reported it, the ring stops. */
		if (unlikely(head < 0)) {
			bvq->broken = true;
			return -EIO;
		}
		if (head == vq->num)
			return reqs;
		bytes += iov_length(vq->iov, out + in);
		ret = vhost_blk_handle_req(bvq, be, head, out, in, log_num);
		if (unlikely(ret == -ENOBUFS)) {
			/* Every request is in flight: resumed by an answer. */
			bvq->starved = true;
			return reqs;
		}
		if (unlikely(ret == -ENOMEM)) {
			/* The chain went back to the ring: try again later. */
			*weight = true;
			return reqs;
		}
		if (unlikely(ret)) {
			/* No status byte to answer with: the ring stops. */
			bvq->broken = true;
			return -EIO;
		}
		reqs++;
		if (reqs >= dev->weight || bytes >= dev->byte_weight) {
			*weight = true;
			return reqs;
		}
	}
}

/*
 * The worker's loop over one ring.  While there is work, guest kicks stay
 * disabled and the ring and the completions are polled; after the ring's
 * poll budget (busyloop_timeout, microseconds) without work, notifications
 * are enabled again, the ring re-checked, and the worker sleeps.  It yields
 * to other work, the scheduler and signals by queueing itself again.
 * While it loops, the requests whose I/O ends are answered by the loop
 * (bvq->polling), without waking it.
 */
static void vhost_blk_serve(struct vhost_blk_vq *bvq)
{
	struct vhost_virtqueue *vq = &bvq->vq;
	struct vhost_dev *dev = &bvq->blk->dev;
	struct vhost_blk_backend *be;
	struct vhost_log *log = NULL;
	struct blk_plug plug;
	u64 budget_ns, now = 0;
	bool weight = false;
	int taken, done;

	mutex_lock(&vq->mutex);
	vhost_blk_complete(bvq);
	be = vhost_vq_get_backend(vq);
	if (!be || bvq->broken)
		goto stopped;
	if (!vq_meta_prefetch(vq))
		goto out;
	/* Migration: the pages the device writes are logged as dirty. */
	if (unlikely(vhost_has_feature(vq, VHOST_F_LOG_ALL)))
		log = vq->log;
	budget_ns = (u64)vq->busyloop_timeout * NSEC_PER_USEC;

	WRITE_ONCE(bvq->polling, true);
	vhost_disable_notify(dev, vq);
	for (;;) {
		blk_start_plug(&plug);
		taken = vhost_blk_take(bvq, be, log, &weight);
		blk_finish_plug(&plug);
		if (taken < 0)
			break;
		vhost_blk_poll_io(bvq);
		done = vhost_blk_complete(bvq);
		if (taken || done) {
			bvq->stats.busy_passes++;
			bvq->idle_since = 0;
		} else {
			bvq->stats.idle_passes++;
			now = local_clock();
			if (!bvq->idle_since)
				bvq->idle_since = now;
		}
		if (!taken && !done && list_empty(&bvq->polled)) {
			/* Out of requests: the next answer resumes it. */
			if (bvq->starved)
				break;
			/* The budget counts across yields: idle polling ends. */
			if (now - bvq->idle_since >= budget_ns) {
				bvq->idle_since = 0;
				/* Sleep until kicked, unless more snuck in. */
				if (unlikely(vhost_enable_notify(dev, vq))) {
					vhost_disable_notify(dev, vq);
					continue;
				}
				break;
			}
		}
		/* Let other work of this worker, the scheduler, signals in. */
		if (weight || need_resched() || signal_pending(current) ||
		    vhost_vq_has_work(vq)) {
			vhost_vq_work_queue(vq, &bvq->poll_work);
			break;
		}
		if (!taken && !done)
			cpu_relax();
	}
	/*
	 * What ends from now on wakes the worker: one of it and the
	 * completion sees the other.
	 */
	WRITE_ONCE(bvq->polling, false);
	/* The flag before the list; pairs with vhost_blk_req_done(). */
	smp_mb();
	if (!llist_empty(&bvq->done))
		vhost_vq_work_queue(vq, &bvq->done_work);
	if (taken < 0)
		goto stopped;
out:
	mutex_unlock(&vq->mutex);
	return;

stopped:
	/*
	 * The ring takes no new request, but the polled ones it took still
	 * complete only when polled: keep polling them, one pass at a time.
	 */
	if (!list_empty(&bvq->polled)) {
		vhost_blk_poll_io(bvq);
		vhost_blk_complete(bvq);
		if (!list_empty(&bvq->polled))
			vhost_vq_work_queue(vq, &bvq->poll_work);
	}
	mutex_unlock(&vq->mutex);
}

static void vhost_blk_handle_kick(struct vhost_work *work)
{
	struct vhost_virtqueue *vq = container_of(work, struct vhost_virtqueue,
						  poll.work);
	struct vhost_blk_vq *bvq = container_of(vq, struct vhost_blk_vq, vq);

	/* Only the kick eventfd queues this work: every run is a guest kick. */
	bvq->stats.kicks++;
	vhost_blk_serve(bvq);
}

static void vhost_blk_poll_work(struct vhost_work *work)
{
	vhost_blk_serve(container_of(work, struct vhost_blk_vq, poll_work));
}

/*
 * Wait until every request taken from a ring has been answered.  The
 * ring's backend must be gone, so that no new request is taken.
 */
static void vhost_blk_drain_vq(struct vhost_blk_vq *bvq)
{
	/* Requests on polled queues complete only when polled. */
	while (!list_empty_careful(&bvq->polled)) {
		mutex_lock(&bvq->vq.mutex);
		vhost_blk_poll_io(bvq);
		mutex_unlock(&bvq->vq.mutex);
		if (wait_event_timeout(bvq->blk->inflight_wq,
				       !atomic_read(&bvq->inflight), 1))
			break;
	}
	wait_event(bvq->blk->inflight_wq, !atomic_read(&bvq->inflight));
}

/*
 * After the rings have drained: completions may still be queueing the
 * work that answered them (vhost_blk_req_done()), and that work may still
 * be running.  Wait for both.  Called with dev.mutex held.
 */
static void vhost_blk_settle(struct vhost_blk *blk)
{
	bool taken = false;
	unsigned int i;

	/* No grace period where no request was (opening and closing). */
	for (i = 0; i < blk->nvqs; i++) {
		if (READ_ONCE(blk->vqs[i].taken)) {
			WRITE_ONCE(blk->vqs[i].taken, false);
			taken = true;
		}
	}
	if (taken)
		synchronize_rcu();
	vhost_dev_flush(&blk->dev);
	for (i = 0; i < blk->nvqs; i++)
		flush_work(&blk->vqs[i].reap_work);
}

/* Take the backend from a ring: it takes no new request. */
static void vhost_blk_detach_vq(struct vhost_blk_vq *bvq)
{
	mutex_lock(&bvq->vq.mutex);
	vhost_vq_set_backend(&bvq->vq, NULL);
	bvq->broken = false;
	mutex_unlock(&bvq->vq.mutex);
}

/*
 * Take the backend from every virtqueue and wait for its requests; returns
 * the backend, for the caller to release.  Called with dev.mutex held.
 */
static struct vhost_blk_backend *vhost_blk_stop(struct vhost_blk *blk)
{
	struct vhost_blk_backend *be = blk->backend;
	unsigned int i;

	/* All rings first, so that none takes requests while others drain. */
	for (i = 0; i < blk->nvqs; i++)
		vhost_blk_detach_vq(&blk->vqs[i]);
	for (i = 0; i < blk->nvqs; i++)
		vhost_blk_drain_vq(&blk->vqs[i]);
	vhost_blk_settle(blk);
	for (i = 0; i < blk->nvqs; i++) {
		mutex_lock(&blk->vqs[i].vq.mutex);
		vhost_blk_pool_free(&blk->vqs[i]);
		mutex_unlock(&blk->vqs[i].vq.mutex);
	}
	blk->backend = NULL;
	return be;
}

static void vhost_blk_backend_put(struct vhost_blk_backend *be)
{
	if (!be)
		return;
	fput(be->file);
	kfree(be);
}

static struct vhost_blk_backend *vhost_blk_backend_get(int fd)
{
	struct vhost_blk_backend *be;
	struct inode *inode;
	struct file *file;
	int ret;

	file = fget(fd);
	if (!file)
		return ERR_PTR(-EBADF);
	inode = file_inode(file);
	ret = -EINVAL;
	if (!S_ISBLK(inode->i_mode) && !S_ISREG(inode->i_mode))
		goto err_fput;
	if (!(file->f_mode & FMODE_READ) || !file->f_op->read_iter ||
	    !file->f_op->write_iter)
		goto err_fput;
	/*
	 * The guest writes at any sector: an append-only open (the only
	 * writable one of a chattr +a file) would let it past that.
	 */
	if (file->f_flags & O_APPEND)
		goto err_fput;

	ret = -ENOMEM;
	be = kzalloc(sizeof(*be), GFP_KERNEL);
	if (!be)
		goto err_fput;
	be->file = file;
	be->read_only = !(file->f_mode & FMODE_WRITE);
	be->dsync = file->f_flags & O_DSYNC || IS_SYNC(file->f_mapping->host);
	if (S_ISBLK(inode->i_mode)) {
		be->bdev = I_BDEV(file->f_mapping->host);
		be->capacity = bdev_nr_sectors(be->bdev);
		be->nowait = bdev_nowait(be->bdev);
		/*
		 * The worker must not wait while it owes polls, so only a
		 * device that can refuse instead of waiting is polled.
		 */
		be->poll = be->nowait &&
			   bdev_get_queue(be->bdev)->limits.features &
			   BLK_FEAT_POLL;
	} else {
		be->capacity = i_size_read(inode) >> SECTOR_SHIFT;
	}
	return be;

err_fput:
	fput(file);
	return ERR_PTR(ret);
}

/*
 * Give every set-up ring the backend and serve what the guest queued
 * meanwhile; on failure no ring has it.  Called with dev.mutex held and
 * no backend attached.
 */
static int vhost_blk_start(struct vhost_blk *blk,
			   struct vhost_blk_backend *be)
{
	struct vhost_virtqueue *vq;
	unsigned int i;
	int ret = 0;

	for (i = 0; i < blk->nvqs; i++) {
		vq = &blk->vqs[i].vq;
		mutex_lock(&vq->mutex);
		if (vq->desc) {
			if (!vhost_vq_access_ok(vq)) {
				ret = -EFAULT;
			} else if (!blk->vqs[i].pool) {
				ret = vhost_blk_pool_alloc(&blk->vqs[i],
							   vq->num);
			}
			if (!ret) {
				vhost_vq_set_backend(vq, be);
				ret = vhost_vq_init_access(vq);
				if (ret)
					vhost_vq_set_backend(vq, NULL);
			}
		}
		mutex_unlock(&vq->mutex);
		if (ret)
			goto err_stop;
	}
	blk->backend = be;

	for (i = 0; i < blk->nvqs; i++)
		if (blk->vqs[i].vq.kick)
			vhost_vq_work_queue(&blk->vqs[i].vq,
					    &blk->vqs[i].poll_work);
	return 0;

err_stop:
	blk->backend = be;
	vhost_blk_stop(blk);
	return ret;
}

static long vhost_blk_set_backend(struct vhost_blk *blk, int fd)
{
	struct vhost_blk_backend *be = NULL, *old;
	long ret;

	mutex_lock(&blk->dev.mutex);
	ret = vhost_dev_check_owner(&blk->dev);
	if (ret)
		goto out_unlock;

	if (fd != -1) {
		be = vhost_blk_backend_get(fd);
		if (IS_ERR(be)) {
			ret = PTR_ERR(be);
			goto out_unlock;
		}
	}

	old = vhost_blk_stop(blk);
	if (be) {
		ret = vhost_blk_start(blk, be);
		if (ret)
			goto err_put;
	}
	vhost_blk_backend_put(old);
	mutex_unlock(&blk->dev.mutex);
	return 0;

err_put:
	vhost_blk_backend_put(be);
	vhost_blk_backend_put(old);
out_unlock:
	mutex_unlock(&blk->dev.mutex);
	return ret;
}

/*
 * VHOST_GET_VRING_BASE stops the ring and waits for its requests, so that
 * the index it returns has no request half done behind it.  The ring is
 * served again once a backend is set.
 */
static long vhost_blk_get_vring_base(struct vhost_blk *blk, void __user *argp)
{
	struct vhost_vring_state s;
	struct vhost_blk_vq *bvq;
	long ret;

	if (copy_from_user(&s, argp, sizeof(s)))
		return -EFAULT;
	mutex_lock(&blk->dev.mutex);
	ret = vhost_dev_check_owner(&blk->dev);
	if (ret)
		goto out_unlock;
	if (s.index >= blk->nvqs) {
		ret = -ENOBUFS;
		goto out_unlock;
	}
	bvq = &blk->vqs[array_index_nospec(s.index, blk->nvqs)];
	vhost_blk_detach_vq(bvq);
	vhost_blk_drain_vq(bvq);
	vhost_blk_settle(blk);
	ret = vhost_vring_ioctl(&blk->dev, VHOST_GET_VRING_BASE, argp);
out_unlock:
	mutex_unlock(&blk->dev.mutex);
	return ret;
}

static void vhost_blk_pin_work(struct vhost_work *work)
{
	struct vhost_blk_vq *bvq = container_of(work, struct vhost_blk_vq,
						pin_work);

	bvq->pin_ret = set_cpus_allowed_ptr(current, &bvq->pin_mask);
}

/*
 * Pin the worker serving a vring to a CPU (-1: let it run anywhere).  The
 * pinning is done by the worker itself, so it also holds for a worker of
 * the VMM's (VHOST_NEW_WORKER); a worker shared by several vrings is
 * pinned for all of them.
 *
 * The worker gets no CPU its caller could not run on: the CPU must be in
 * the calling thread's affinity (which its cpuset bounds), and -1 gives
 * the worker that affinity, so a confined VMM cannot place a polling
 * worker on another tenant's or an isolated CPU.
 */
static long vhost_blk_set_vring_cpu(struct vhost_blk *blk, void __user *argp)
{
	struct vhost_vring_state s;
	struct vhost_blk_vq *bvq;
	int cpu;
	long ret;

	if (copy_from_user(&s, argp, sizeof(s)))
		return -EFAULT;
	cpu = (int)s.num;
	mutex_lock(&blk->dev.mutex);
	ret = vhost_dev_check_owner(&blk->dev);
	if (ret)
		goto out_unlock;
	ret = -ENOBUFS;
	if (s.index >= blk->nvqs)
		goto out_unlock;
	ret = -EINVAL;
	if (cpu < -1 || (cpu >= 0 && (cpu >= nr_cpu_ids || !cpu_online(cpu))))
		goto out_unlock;
	bvq = &blk->vqs[array_index_nospec(s.index, blk->nvqs)];
	if (cpu >= 0) {
		if (!cpumask_test_cpu(cpu, current->cpus_ptr))
			goto out_unlock;
		cpumask_copy(&bvq->pin_mask, cpumask_of(cpu));
	} else {
		cpumask_copy(&bvq->pin_mask, current->cpus_ptr);
	}
	bvq->pin_ret = -ESRCH;
	ret = -EBUSY;
	if (!vhost_vq_work_queue(&bvq->vq, &bvq->pin_work))
		goto out_unlock;
	vhost_dev_flush(&blk->dev);
	ret = bvq->pin_ret;
	if (!ret)
		bvq->cpu = cpu;
out_unlock:
	mutex_unlock(&blk->dev.mutex);
	return ret;
}

static int vhost_blk_stats_show(struct seq_file *m, void *data)
{
	struct vhost_blk *blk = m->private;
	unsigned int i;

	seq_puts(m, "vq requests kicks signals busy_passes idle_passes batches inflight poll_us cpu polled slow\n");
	for (i = 0; i < blk->nvqs; i++) {
		struct vhost_blk_vq *bvq = &blk->vqs[i];
		struct vhost_blk_stats *st = &bvq->stats;

		seq_printf(m, "%u %llu %llu %llu %llu %llu %llu %d %u %d %llu %llu\n",
			   i,
			   READ_ONCE(st->requests), READ_ONCE(st->kicks),
			   READ_ONCE(st->signals), READ_ONCE(st->busy_passes),
			   READ_ONCE(st->idle_passes), READ_ONCE(st->batches),
			   atomic_read(&bvq->inflight),
			   READ_ONCE(bvq->vq.busyloop_timeout),
			   READ_ONCE(bvq->cpu), READ_ONCE(st->polled),
			   READ_ONCE(st->slow));
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(vhost_blk_stats);

/* Vrings start with the module's poll budget (also after a reset). */
static void vhost_blk_default_poll(struct vhost_blk *blk)
{
	unsigned int i, us = READ_ONCE(poll_us);

	for (i = 0; i < blk->nvqs; i++) {
		mutex_lock(&blk->vqs[i].vq.mutex);
		blk->vqs[i].vq.busyloop_timeout = us;
		mutex_unlock(&blk->vqs[i].vq.mutex);
	}
}

static long vhost_blk_set_serial(struct vhost_blk *blk, void __user *argp)
{
	u8 serial[VIRTIO_BLK_ID_BYTES];

	if (copy_from_user(serial, argp, sizeof(serial)))
		return -EFAULT;
	mutex_lock(&blk->dev.mutex);
	memcpy(blk->serial, serial, sizeof(serial));
	mutex_unlock(&blk->dev.mutex);
	return 0;
}

static int vhost_blk_open(struct inode *inode, struct file *f)
{
	unsigned int nvqs = READ_ONCE(max_queues);
	struct vhost_virtqueue **vqs;
	struct vhost_blk *blk;
	char name[32];
	unsigned int i;

	/* Large (every vq embeds its iovec array): fall back to vmalloc. */
	blk = kvzalloc(struct_size(blk, vqs, nvqs),
		       GFP_KERNEL | __GFP_RETRY_MAYFAIL);
	if (!blk)
		return -ENOMEM;
	blk->nvqs = nvqs;
	init_waitqueue_head(&blk->inflight_wq);

	vqs = kmalloc_array(nvqs, sizeof(*vqs), GFP_KERNEL);
	if (!vqs)
		goto err_free_blk;

	for (i = 0; i < nvqs; i++) {
		struct vhost_blk_vq *bvq = &blk->vqs[i];

		vqs[i] = &bvq->vq;
		bvq->blk = blk;
		bvq->vq.handle_kick = vhost_blk_handle_kick;
		bvq->cpu = -1;
		vhost_work_init(&bvq->poll_work, vhost_blk_poll_work);
		vhost_work_init(&bvq->pin_work, vhost_blk_pin_work);
		init_llist_head(&bvq->done);
		INIT_LIST_HEAD(&bvq->polled);
		atomic_set(&bvq->inflight, 0);
		vhost_work_init(&bvq->done_work, vhost_blk_done_work);
		INIT_WORK(&bvq->reap_work, vhost_blk_reap_work);
	}
	vhost_dev_init(&blk->dev, vqs, nvqs, UIO_MAXIOV, VHOST_BLK_PKT_WEIGHT,
		       VHOST_BLK_WEIGHT, true, NULL);
	vhost_blk_default_poll(blk);

	/* Statistics under <pid>-<id>; nothing fails for want of them. */
	snprintf(name, sizeof(name), "%d-%u", task_tgid_nr(current),
		 (unsigned int)atomic_inc_return(&vhost_blk_ids));
	blk->debugfs = debugfs_create_dir(name, vhost_blk_debugfs);
	debugfs_create_file("stats", 0400, blk->debugfs, blk,
			    &vhost_blk_stats_fops);

	f->private_data = blk;
	return 0;

err_free_blk:
	kvfree(blk);
	return -ENOMEM;
}

static int vhost_blk_release(struct inode *inode, struct file *f)
{
	struct vhost_blk *blk = f->private_data;

	/*
	 * No more statistics; stop serving and wait for the requests in
	 * flight, stop the kicks, let queued work finish, then tear down.
	 */
	debugfs_remove_recursive(blk->debugfs);
	mutex_lock(&blk->dev.mutex);
	vhost_blk_backend_put(vhost_blk_stop(blk));
	mutex_unlock(&blk->dev.mutex);
	vhost_dev_stop(&blk->dev);
	vhost_dev_flush(&blk->dev);
	vhost_dev_cleanup(&blk->dev);
	kfree(blk->dev.vqs);
	kvfree(blk);
	return 0;
}

static int vhost_blk_set_features(struct vhost_blk *blk, u64 features)
{
	struct vhost_blk_backend *be = NULL;
	struct vhost_virtqueue *vq;
	unsigned int i;
	int ret = 0;

	if (features & ~VHOST_BLK_FEATURES)
		return -EOPNOTSUPP;

	mutex_lock(&blk->dev.mutex);
	if ((features & (1ULL << VHOST_F_LOG_ALL)) &&
	    !vhost_log_access_ok(&blk->dev)) {
		ret = -EFAULT;
		goto out_unlock;
	}

	/*
	 * Whether a request is logged is decided when it is taken: when
	 * logging starts (migration), the requests in flight must end
	 * first, or their data would reach the guest unlogged.
	 */
	if (blk->backend && (features & (1ULL << VHOST_F_LOG_ALL)) &&
	    !vhost_has_feature(&blk->vqs[0].vq, VHOST_F_LOG_ALL))
		be = vhost_blk_stop(blk);

	for (i = 0; i < blk->nvqs; i++) {
		vq = &blk->vqs[i].vq;
		mutex_lock(&vq->mutex);
		vq->acked_features = features;
		mutex_unlock(&vq->mutex);
	}
	if (be) {
		ret = vhost_blk_start(blk, be);
		if (ret)
			vhost_blk_backend_put(be);
	}
out_unlock:
	mutex_unlock(&blk->dev.mutex);
	return ret;
}

static long vhost_blk_reset_owner(struct vhost_blk *blk)
{
	struct vhost_iotlb *umem;
	long ret;

	mutex_lock(&blk->dev.mutex);
	ret = vhost_dev_check_owner(&blk->dev);
	if (ret)
		goto out_unlock;

	umem = vhost_dev_reset_owner_prepare();
	if (!umem) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	vhost_blk_backend_put(vhost_blk_stop(blk));
	vhost_dev_stop(&blk->dev);
	vhost_dev_flush(&blk->dev);
	vhost_dev_reset_owner(&blk->dev, umem);
	vhost_blk_default_poll(blk);
out_unlock:
	mutex_unlock(&blk->dev.mutex);
	return ret;
}

static long vhost_blk_ioctl(struct file *f, unsigned int ioctl,
			    unsigned long arg)
{
	struct vhost_blk *blk = f->private_data;
	void __user *argp = (void __user *)arg;
	u64 __user *featurep = argp;
	u64 features;
	long ret;
	int fd;

	switch (ioctl) {
	case VHOST_GET_FEATURES:
		features = VHOST_BLK_FEATURES;
		if (copy_to_user(featurep, &features, sizeof(features)))
			return -EFAULT;
		return 0;
	case VHOST_SET_FEATURES:
		if (copy_from_user(&features, featurep, sizeof(features)))
			return -EFAULT;
		return vhost_blk_set_features(blk, features);
	case VHOST_RESET_OWNER:
		return vhost_blk_reset_owner(blk);
	case VHOST_BLK_SET_BACKEND:
		if (copy_from_user(&fd, argp, sizeof(fd)))
			return -EFAULT;
		return vhost_blk_set_backend(blk, fd);
	case VHOST_BLK_SET_SERIAL:
		return vhost_blk_set_serial(blk, argp);
	case VHOST_GET_VRING_BASE:
		return vhost_blk_get_vring_base(blk, argp);
	case VHOST_BLK_SET_VRING_CPU:
		return vhost_blk_set_vring_cpu(blk, argp);
	case VHOST_NEW_WORKER:
	case VHOST_FREE_WORKER:
	case VHOST_ATTACH_VRING_WORKER:
	case VHOST_GET_VRING_WORKER:
		mutex_lock(&blk->dev.mutex);
		ret = vhost_worker_ioctl(&blk->dev, ioctl, argp);
		mutex_unlock(&blk->dev.mutex);
		return ret;
	default:
		mutex_lock(&blk->dev.mutex);
		ret = vhost_dev_ioctl(&blk->dev, ioctl, argp);
		if (ret == -ENOIOCTLCMD)
			ret = vhost_vring_ioctl(&blk->dev, ioctl, argp);
		else
			vhost_dev_flush(&blk->dev);
		mutex_unlock(&blk->dev.mutex);
		return ret;
	}
}

static const struct file_operations vhost_blk_fops = {
	.owner		= THIS_MODULE,
	.open		= vhost_blk_open,
	.release	= vhost_blk_release,
	.unlocked_ioctl	= vhost_blk_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

static struct miscdevice vhost_blk_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "vhost-blk-poll",
	.fops	= &vhost_blk_fops,
	.mode	= 0600,
};

static int __init vhost_blk_init(void)
{
	int ret;

	ret = bioset_init(&vhost_blk_bio_set, BIO_POOL_SIZE, 0,
			  BIOSET_NEED_BVECS);
	if (ret)
		return ret;
	ret = -ENOMEM;
	vhost_blk_wq = alloc_workqueue(KBUILD_MODNAME, WQ_UNBOUND, 0);
	if (!vhost_blk_wq)
		goto err_bioset;
	vhost_blk_debugfs = debugfs_create_dir(KBUILD_MODNAME, NULL);
	ret = misc_register(&vhost_blk_misc);
	if (ret)
		goto err_remove_debugfs;
	return 0;

err_remove_debugfs:
	debugfs_remove_recursive(vhost_blk_debugfs);
	destroy_workqueue(vhost_blk_wq);
err_bioset:
	bioset_exit(&vhost_blk_bio_set);
	return ret;
}
module_init(vhost_blk_init);

static void __exit vhost_blk_exit(void)
{
	misc_deregister(&vhost_blk_misc);
	debugfs_remove_recursive(vhost_blk_debugfs);
	destroy_workqueue(vhost_blk_wq);
	bioset_exit(&vhost_blk_bio_set);
}
module_exit(vhost_blk_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Host kernel accelerator for virtio-blk with polling workers");
