// SPDX-License-Identifier: GPL-2.0
/*
 * virtio_blk_poll: a blk-mq driver for virtio-blk devices whose completions
 * can be reaped by polling instead of interrupts.
 *
 * Each CPU's software queue maps to a virtqueue of its own (CPUs are grouped
 * when the device has fewer queues).  A queue completes its requests in one
 * of three modes, chosen per disk and switchable at run time:
 *
 *  irq     the virtqueue interrupts on completion, as virtio_blk does;
 *  poll    the virtqueue never interrupts: completions are reaped in the
 *          submission path right after a batch is handed to the device
 *          (early completion) and, while requests are in flight, by a
 *          poller thread bound to the queue's CPU, which sleeps when the
 *          queue is idle;
 *  hybrid  as poll, but a queue whose requests make no progress for
 *          poll_budget_us goes back to interrupts until its next request.
 *
 * Queues of type HCTX_TYPE_POLL (module parameter poll_queues) have no
 * interrupt at all and serve io_uring's IOPOLL through ->poll.
 *
 * The device is not trusted: a used buffer id or length that cannot be
 * right, or a status byte the device did not write, fails the request; a
 * virtqueue that the virtio core finds corrupt marks the device broken, and
 * every request in flight on it fails instead of hanging.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/blk-mq-virtio.h>
#include <linux/blkdev.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/kthread.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/clock.h>
#include <linux/scatterlist.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/suspend.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_ring.h>

/* Segments of a request kept in its pdu; longer ones chain an sg table. */
#define VBP_INLINE_SG		2
/* Bound of the segment count, whatever the device says (virtqueue limit). */
#define VBP_MAX_SG		32768
/* Ranges in one discard or write-zeroes request, at most. */
#define VBP_MAX_DISCARD_SEG	256
#define VBP_VQ_NAME_LEN		16
/* Status value no device writes: the status byte was not written at all. */
#define VBP_STATUS_UNSET	0xff

enum vbp_mode {
	VBP_MODE_IRQ,
	VBP_MODE_POLL,
	VBP_MODE_HYBRID,
	VBP_NR_MODES,
};

static const char *const vbp_mode_names[VBP_NR_MODES] = {
	[VBP_MODE_IRQ]		= "irq",
	[VBP_MODE_POLL]		= "poll",
	[VBP_MODE_HYBRID]	= "hybrid",
};

/* Who took a completion from the used ring (debugfs counters). */
enum vbp_reaper {
	VBP_BY_IRQ,
	VBP_BY_SUBMIT,
	VBP_BY_POLLER,
	VBP_BY_BLK_POLL,
	VBP_NR_REAPERS,
};

static unsigned int vbp_default_mode = VBP_MODE_HYBRID;
static unsigned int vbp_poll_queues;
static unsigned int vbp_poll_budget_us = 200;

static DEFINE_IDA(vbp_index_ida);
static struct dentry *vbp_debugfs_root;

struct vbp_device;

/**
 * struct vbp_queue - one virtqueue and the blk-mq hardware queue on it
 * @lock: guards the virtqueue and every field below it
 * @vq: the virtqueue; NULL while the device is frozen for system sleep
 * @vbp: the device
 * @index: index of the virtqueue and of the hardware queue
 * @is_poll_type: an HCTX_TYPE_POLL queue: no interrupt, reaped by ->poll
 * @poller: the thread that reaps completions while @polling (default
 *	queues only)
 * @inflight: requests given to the device and not yet taken back
 * @polling: the poller owns the queue's completions
 * @stopped: the hardware queue was stopped for lack of ring space
 * @reaping: a submission-path reap runs (no nesting through completions)
 * @interrupts: virtqueue interrupts taken
 * @reaped: completions taken, by who took them
 * @bad: requests failed because of what the device returned
 * @fault: fault to inject into the next used buffer (enum vbp_fault)
 * @used_seen: used buffers taken since the virtqueue was created
 * @name: name of the virtqueue
 */
struct vbp_queue {
	spinlock_t lock;	/* virtqueue and the state below */
	struct virtqueue *vq;
	struct vbp_device *vbp;
	unsigned int index;
	bool is_poll_type;
	struct task_struct *poller;

	unsigned int inflight;
	bool polling;
	bool stopped;
	bool reaping;
	u64 interrupts;
	u64 reaped[VBP_NR_REAPERS];
	u64 bad;
#ifdef CONFIG_VIRTIO_BLK_POLL_FAULT_INJECTION
	u8 fault;
	u16 used_seen;
#endif

	char name[VBP_VQ_NAME_LEN];
} ____cacheline_aligned_in_smp;

/**
 * struct vbp_device - a virtio-blk device and its disk
 * @vdev: the virtio device
 * @disk: the disk
 * @tag_set: blk-mq tag set
 * @lock: serialises mode and cache changes, config updates, removal and
 *	system sleep
 * @mode: completion mode (enum vbp_mode); read locklessly in the I/O path
 * @nr_queues: virtqueues in use
 * @io_queues: hardware queues of each blk-mq map type
 * @queues: the per-virtqueue state
 * @index: disk number, vbp<index>
 * @config_work: reads the config space after a config change interrupt
 * @broken_work: fails all I/O of a device that broke the virtio protocol
 * @broken: @broken_work has run or is queued
 * @removing: the device is going away; no config work
 * @frozen: from the start of a freeze for system sleep to the end of a
 *	successful restore: the virtqueues are going or gone, mode and cache
 *	changes are refused
 * @quiesced: the freeze holds new requests back in the quiesced queue
 *	(guarded by the device lock, as freeze, restore and removal are)
 * @debugfs: this disk's debugfs directory
 */
struct vbp_device {
	struct virtio_device *vdev;
	struct gendisk *disk;
	struct blk_mq_tag_set tag_set;
	struct mutex lock;	/* mode, cache, config, removal, sleep */
	unsigned int mode;
	unsigned int nr_queues;
	unsigned int io_queues[HCTX_MAX_TYPES];
	struct vbp_queue *queues;
	int index;
	struct work_struct config_work;
	struct work_struct broken_work;
	atomic_t broken;
	bool removing;
	bool frozen;
	bool quiesced;
	struct dentry *debugfs;
};

/**
 * struct vbp_req - per-request data (the blk-mq pdu)
 * @out_hdr: request header, read by the device
 * @status: status byte, written by the device
 * @in_len: bytes the device may write: data in plus the status byte
 * @next: link in a list of requests taken from the used ring
 * @sg_table: the data segments
 * @sg: inline segments
 */
struct vbp_req {
	struct virtio_blk_outhdr out_hdr;
	u8 status;
	u32 in_len;
	struct vbp_req *next;
	struct sg_table sg_table;
	struct scatterlist sg[];
};

/* Module parameters. */

static int vbp_mode_from_string(const char *s)
{
	int mode = sysfs_match_string(vbp_mode_names, s);

	return mode < 0 ? -EINVAL : mode;
}

static int vbp_mode_param_set(const char *val, const struct kernel_param *kp)
{
	int mode = vbp_mode_from_string(val);

	if (mode < 0) {
		pr_err("mode must be irq, poll or hybrid, not '%s'\n", val);
		return mode;
	}
	*(unsigned int *)kp->arg = mode;
	return 0;
}

static int vbp_mode_param_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n", vbp_mode_names[*(unsigned int *)kp->arg]);
}

static const struct kernel_param_ops vbp_mode_param_ops = {
	.set	= vbp_mode_param_set,
	.get	= vbp_mode_param_get,
};
module_param_cb(mode, &vbp_mode_param_ops, &vbp_default_mode, 0644);
MODULE_PARM_DESC(mode,
		 "Completion mode of new disks: irq, poll or hybrid (default hybrid)");

static int vbp_poll_queues_set(const char *val, const struct kernel_param *kp)
{
	int err = param_set_uint_minmax(val, kp, 0, nr_cpu_ids);

	if (err)
		pr_err("poll_queues must be 0 to %u\n", nr_cpu_ids);
	return err;
}

static const struct kernel_param_ops vbp_poll_queues_ops = {
	.set	= vbp_poll_queues_set,
	.get	= param_get_uint,
};
module_param_cb(poll_queues, &vbp_poll_queues_ops, &vbp_poll_queues, 0644);
MODULE_PARM_DESC(poll_queues,
		 "Virtqueues of new disks set aside for io_uring IOPOLL (default 0)");

static int vbp_budget_set(const char *val, const struct kernel_param *kp)
{
	int err = param_set_uint_minmax(val, kp, 1, USEC_PER_SEC);

	if (err)
		pr_err("poll_budget_us must be 1 to %lu\n", USEC_PER_SEC);
	return err;
}

static const struct kernel_param_ops vbp_budget_ops = {
	.set	= vbp_budget_set,
	.get	= param_get_uint,
};
module_param_cb(poll_budget_us, &vbp_budget_ops, &vbp_poll_budget_us, 0644);
MODULE_PARM_DESC(poll_budget_us,
		 "hybrid: microseconds without a completion before a busy queue goes back to interrupts (default 200)");

/* Requests. */

static blk_status_t vbp_result(struct vbp_req *vr)
{
	switch (vr->status) {
	case VIRTIO_BLK_S_OK:
		return BLK_STS_OK;
	case VIRTIO_BLK_S_UNSUPP:
		return BLK_STS_NOTSUPP;
	default:
		return BLK_STS_IOERR;
	}
}

static int vbp_setup_ranges(struct request *req, bool unmap)
{
	unsigned short segs = blk_rq_nr_discard_segments(req);
	struct virtio_blk_discard_write_zeroes *range;
	u32 flags = unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
	unsigned short n = 0;
	struct bio *bio;

	range = kmalloc_array(segs, sizeof(*range), GFP_ATOMIC);
	if (!range)
		return -ENOMEM;

	/*
	 * With one segment the block layer merges adjacent bios into one
	 * range, so the request, not its bios, describes it.
	 */
	if (queue_max_discard_segments(req->q) == 1) {
		range[0].flags = cpu_to_le32(flags);
		range[0].num_sectors = cpu_to_le32(blk_rq_sectors(req));
		range[0].sector = cpu_to_le64(blk_rq_pos(req));
		n = 1;
	} else {
		__rq_for_each_bio(bio, req) {
			if (n == segs)
				break;
			range[n].flags = cpu_to_le32(flags);
			range[n].num_sectors =
				cpu_to_le32(bio_sectors(bio));
			range[n].sector = cpu_to_le64(bio->bi_iter.bi_sector);
			n++;
		}
	}

	bvec_set_virt(&req->special_vec, range, sizeof(*range) * n);
	req->rq_flags |= RQF_SPECIAL_PAYLOAD;
	return 0;
}

static blk_status_t vbp_setup_cmd(struct virtio_device *vdev,
				  struct request *req, struct vbp_req *vr)
{
	u64 sector = 0;
	u32 type;

	switch (req_op(req)) {
	case REQ_OP_READ:
		type = VIRTIO_BLK_T_IN;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_WRITE:
		type = VIRTIO_BLK_T_OUT;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_FLUSH:
		type = VIRTIO_BLK_T_FLUSH;
		break;
	case REQ_OP_DISCARD:
		type = VIRTIO_BLK_T_DISCARD;
		break;
	case REQ_OP_WRITE_ZEROES:
		type = VIRTIO_BLK_T_WRITE_ZEROES;
		break;
	case REQ_OP_DRV_IN:
		/* The only request of our own: the serial number. */
		type = VIRTIO_BLK_T_GET_ID;
		break;
	default:
		return BLK_STS_NOTSUPP;
	}

	vr->out_hdr.type = cpu_to_virtio32(vdev, type);
	vr->out_hdr.sector = cpu_to_virtio64(vdev, sector);
	vr->out_hdr.ioprio = cpu_to_virtio32(vdev, req_get_ioprio(req));
	vr->status = VBP_STATUS_UNSET;
	vr->in_len = 1;
	if (type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID)
		vr->in_len += blk_rq_bytes(req);

	if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES) {
		bool unmap = type == VIRTIO_BLK_T_WRITE_ZEROES &&
			     !(req->cmd_flags & REQ_NOUNMAP);

		if (vbp_setup_ranges(req, unmap))
			return BLK_STS_RESOURCE;
	}
	return BLK_STS_OK;
}

static void vbp_cleanup_cmd(struct request *req)
{
	if (req->rq_flags & RQF_SPECIAL_PAYLOAD)
		kfree(bvec_virt(&req->special_vec));
}

static int vbp_map_data(struct blk_mq_hw_ctx *hctx, struct request *req,
			struct vbp_req *vr)
{
	int err;

	if (!blk_rq_nr_phys_segments(req))
		return 0;

	vr->sg_table.sgl = vr->sg;
	err = sg_alloc_table_chained(&vr->sg_table,
				     blk_rq_nr_phys_segments(req),
				     vr->sg_table.sgl, VBP_INLINE_SG);
	if (err)
		return -ENOMEM;
	return blk_rq_map_sg(hctx->queue, req, vr->sg_table.sgl);
}

static void vbp_unmap_data(struct request *req, struct vbp_req *vr)
{
	if (blk_rq_nr_phys_segments(req))
		sg_free_table_chained(&vr->sg_table, VBP_INLINE_SG);
}

static void vbp_complete_rq(struct request *req)
{
	struct vbp_req *vr = blk_mq_rq_to_pdu(req);

	vbp_unmap_data(req, vr);
	vbp_cleanup_cmd(req);
	blk_mq_end_request(req, vbp_result(vr));
}

static void vbp_complete_batch(struct io_comp_batch *iob)
{
	struct request *req;

	rq_list_for_each(&iob->req_list, req) {
		vbp_unmap_data(req, blk_mq_rq_to_pdu(req));
		vbp_cleanup_cmd(req);
	}
	blk_mq_end_request_batch(iob);
}

static int vbp_add_req(struct virtqueue *vq, struct vbp_req *vr)
{
	struct scatterlist hdr, status, *sgs[3];
	unsigned int num_out = 0, num_in = 0;

	sg_init_one(&hdr, &vr->out_hdr, sizeof(vr->out_hdr));
	sgs[num_out++] = &hdr;

	if (vr->sg_table.nents) {
		if (vr->out_hdr.type & cpu_to_virtio32(vq->vdev,
						       VIRTIO_BLK_T_OUT))
			sgs[num_out++] = vr->sg_table.sgl;
		else
			sgs[num_out + num_in++] = vr->sg_table.sgl;
	}

	sg_init_one(&status, &vr->status, sizeof(vr->status));
	sgs[num_out + num_in++] = &status;

	return virtqueue_add_sgs(vq, sgs, num_out, num_in, vr, GFP_ATOMIC);
}

/* Completion. */

static void vbp_mark_broken(struct vbp_device *vbp)
{
	if (!atomic_xchg(&vbp->broken, 1))
		schedule_work(&vbp->broken_work);
}

/*
 * Check what the device returned for a request.  A device writes at most
 * the request's device-writable bytes, and a successful read all of them.
 */
static void vbp_check_used(struct vbp_queue *q, struct vbp_req *vr,
			   unsigned int len)
{
	struct virtio_device *vdev = q->vbp->vdev;
	bool bad = len > vr->in_len;

	if (vr->status == VIRTIO_BLK_S_OK && len != vr->in_len &&
	    vr->out_hdr.type == cpu_to_virtio32(vdev, VIRTIO_BLK_T_IN) &&
	    virtio_has_feature(vdev, VIRTIO_F_VERSION_1))
		bad = true;
	if (vr->status != VIRTIO_BLK_S_OK && vr->status != VIRTIO_BLK_S_IOERR &&
	    vr->status != VIRTIO_BLK_S_UNSUPP)
		bad = true;
	if (unlikely(bad)) {
		dev_err_ratelimited(&vdev->dev,
				    "%s: bad completion: status %u, %u of %u bytes\n",
				    q->name, vr->status, len, vr->in_len);
		vr->status = VIRTIO_BLK_S_IOERR;
		q->bad++;
	}
}

#ifdef CONFIG_VIRTIO_BLK_POLL_FAULT_INJECTION
/*
 * Fault injection for the tests: corrupt the next used buffer in the used
 * ring itself, the way a buggy or malicious device would write it.
 */
enum vbp_fault {
	VBP_FAULT_NONE,
	VBP_FAULT_LEN,		/* a used length beyond the buffer */
	VBP_FAULT_ID,		/* a used id out of range */
	VBP_FAULT_IDX,		/* a used index running ahead */
	VBP_NR_FAULTS,
};

static const char *const vbp_fault_names[VBP_NR_FAULTS] = {
	[VBP_FAULT_NONE]	= "none",
	[VBP_FAULT_LEN]		= "len",
	[VBP_FAULT_ID]		= "id",
	[VBP_FAULT_IDX]		= "idx",
};

/*
 * Returns false while a fault waits for a used buffer that is not there yet:
 * the caller takes nothing then, so that a buffer the device adds in the
 * meantime cannot slip past the fault.
 */
static bool vbp_inject_locked(struct vbp_queue *q)
{
	struct virtio_device *vdev = q->vbp->vdev;
	const struct vring *vring;
	u16 idx, slot;

	if (likely(!q->fault))
		return true;
	vring = virtqueue_get_vring(q->vq);
	idx = virtio16_to_cpu(vdev, READ_ONCE(vring->used->idx));
	if (idx == q->used_seen)
		return false;
	/* The device wrote the element before the index. */
	virtio_rmb(true);
	slot = q->used_seen & (vring->num - 1);
	switch (q->fault) {
	case VBP_FAULT_LEN:
		vring->used->ring[slot].len = cpu_to_virtio32(vdev, U32_MAX);
		break;
	case VBP_FAULT_ID:
		vring->used->ring[slot].id = cpu_to_virtio32(vdev, vring->num);
		break;
	case VBP_FAULT_IDX:
		WRITE_ONCE(vring->used->idx,
			   cpu_to_virtio16(vdev, idx + vring->num / 2 + 1));
		break;
	}
	dev_info(&vdev->dev, "%s: injected a bad used %s\n", q->name,
		 vbp_fault_names[q->fault]);
	q->fault = VBP_FAULT_NONE;
	return true;
}

static void vbp_count_used(struct vbp_queue *q)
{
	q->used_seen++;
}

static void vbp_reset_fault_locked(struct vbp_queue *q)
{
	q->fault = VBP_FAULT_NONE;
	q->used_seen = 0;
}
#else
static bool vbp_inject_locked(struct vbp_queue *q)
{
	return true;
}

static void vbp_count_used(struct vbp_queue *q)
{
}

static void vbp_reset_fault_locked(struct vbp_queue *q)
{
}
#endif

/*
 * Take the completed requests from the used ring into a list; called with
 * q->lock held.  Returns how many were taken.
 */
static unsigned int vbp_take_locked(struct vbp_queue *q, struct vbp_req ***tail)
{
	struct vbp_req *vr;
	unsigned int len, n = 0;

	/* A poll of an io_uring queue may come in while the device is frozen. */
	if (unlikely(!q->vq) || !vbp_inject_locked(q))
		return 0;
	while ((vr = virtqueue_get_buf(q->vq, &len))) {
		vbp_count_used(q);
		vbp_check_used(q, vr, len);
		vr->next = NULL;
		**tail = vr;
		*tail = &vr->next;
		n++;
	}
	if (unlikely(virtqueue_is_broken(q->vq)))
		vbp_mark_broken(q->vbp);

	q->inflight -= min(n, q->inflight);
	return n;
}

/* The queue went idle: its poller stops; hybrid queues interrupt again. */
static void vbp_idle_locked(struct vbp_queue *q)
{
	if (!q->polling || q->inflight)
		return;
	q->polling = false;
	if (READ_ONCE(q->vbp->mode) == VBP_MODE_HYBRID)
		virtqueue_enable_cb(q->vq);
}

static void vbp_complete_list(struct vbp_queue *q, struct vbp_req *done,
			      struct io_comp_batch *iob, bool restart)
{
	while (done) {
		struct request *req = blk_mq_rq_from_pdu(done);
		bool err = done->status != VIRTIO_BLK_S_OK;

		done = done->next;
		if (blk_mq_add_to_batch(req, iob, err, vbp_complete_batch))
			continue;
		if (!blk_should_fake_timeout(req->q))
			blk_mq_complete_request(req);
	}
	if (restart)
		blk_mq_start_stopped_hw_queues(q->vbp->disk->queue, true);
}

/* Reap a queue's completions from the submission path, poller or ->poll. */
static unsigned int vbp_reap(struct vbp_queue *q, enum vbp_reaper by,
			     struct io_comp_batch *iob)
{
	struct vbp_req *done = NULL, **tail = &done;
	unsigned long flags;
	unsigned int n;
	bool restart;

	spin_lock_irqsave(&q->lock, flags);
	n = vbp_take_locked(q, &tail);
	q->reaped[by] += n;
	vbp_idle_locked(q);
	restart = n && q->stopped;
	if (restart)
		q->stopped = false;
	spin_unlock_irqrestore(&q->lock, flags);

	vbp_complete_list(q, done, iob, restart);
	return n;
}

static void vbp_vq_done(struct virtqueue *vq)
{
	struct vbp_device *vbp = vq->vdev->priv;
	struct vbp_queue *q = &vbp->queues[vq->index];
	struct vbp_req *done = NULL, **tail = &done;
	unsigned long flags;
	unsigned int n = 0;
	bool restart;

	spin_lock_irqsave(&q->lock, flags);
	q->interrupts++;
	/*
	 * Interrupts stay on only for a queue that no poller owns; take
	 * everything and turn them back on, unless more arrived meanwhile.
	 */
	do {
		virtqueue_disable_cb(vq);
		n += vbp_take_locked(q, &tail);
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (READ_ONCE(vbp->mode) != VBP_MODE_POLL && !q->polling &&
		 !virtqueue_enable_cb(vq));
	q->reaped[VBP_BY_IRQ] += n;
	vbp_idle_locked(q);
	restart = n && q->stopped;
	if (restart)
		q->stopped = false;
	spin_unlock_irqrestore(&q->lock, flags);

	vbp_complete_list(q, done, NULL, restart);
}

static int vbp_poller(void *data)
{
	struct vbp_queue *q = data;
	u64 last = 0;

	while (!kthread_should_stop()) {
		unsigned long flags;
		u64 now;

		if (!READ_ONCE(q->polling)) {
			set_current_state(TASK_IDLE);
			if (!READ_ONCE(q->polling) && !kthread_should_stop())
				schedule();
			__set_current_state(TASK_RUNNING);
			last = local_clock();
			continue;
		}

		now = local_clock();
		if (vbp_reap(q, VBP_BY_POLLER, NULL)) {
			last = now;
		} else if (READ_ONCE(q->vbp->mode) == VBP_MODE_HYBRID &&
			   now - last > (u64)READ_ONCE(vbp_poll_budget_us) *
					NSEC_PER_USEC) {
			/* No progress: let the device interrupt instead. */
			spin_lock_irqsave(&q->lock, flags);
			if (q->polling && virtqueue_enable_cb(q->vq))
				q->polling = false;
			spin_unlock_irqrestore(&q->lock, flags);
		}
		if (unlikely(atomic_read(&q->vbp->broken))) {
			WRITE_ONCE(q->polling, false);
			continue;
		}
		cond_resched();
		cpu_relax();
	}
	return 0;
}

/* Submission. */

/*
 * Called with q->lock held after a request was added: in poll and hybrid
 * modes the queue's poller takes over.  Returns true if it must be woken.
 */
static bool vbp_start_polling_locked(struct vbp_queue *q)
{
	unsigned int mode = READ_ONCE(q->vbp->mode);

	if (q->is_poll_type || mode == VBP_MODE_IRQ || q->polling)
		return false;
	q->polling = true;
	if (mode == VBP_MODE_HYBRID)
		virtqueue_disable_cb(q->vq);
	return true;
}

/* Early completion: what the device finished by now, reaped in place. */
static void vbp_submit_reap(struct vbp_queue *q)
{
	if (q->is_poll_type || READ_ONCE(q->vbp->mode) == VBP_MODE_IRQ ||
	    READ_ONCE(q->reaping))
		return;
	WRITE_ONCE(q->reaping, true);
	vbp_reap(q, VBP_BY_SUBMIT, NULL);
	WRITE_ONCE(q->reaping, false);
}

static void vbp_kick(struct vbp_queue *q, bool kick, bool wake)
{
	if (kick)
		virtqueue_notify(q->vq);
	if (wake)
		wake_up_process(q->poller);
}

static blk_status_t vbp_queue_rq(struct blk_mq_hw_ctx *hctx,
				 const struct blk_mq_queue_data *bd)
{
	struct vbp_queue *q = hctx->driver_data;
	struct vbp_device *vbp = q->vbp;
	struct request *req = bd->rq;
	struct vbp_req *vr = blk_mq_rq_to_pdu(req);
	bool kick, wake = false;
	unsigned long flags;
	blk_status_t status;
	int nents, err;

	/*
	 * The virtqueues are replaced only while the queue is quiesced; a
	 * request dispatched without one is for a device removed while it
	 * was frozen.
	 */
	if (unlikely(!READ_ONCE(q->vq)))
		return BLK_STS_IOERR;

	status = vbp_setup_cmd(vbp->vdev, req, vr);
	if (unlikely(status))
		return status;

	nents = vbp_map_data(hctx, req, vr);
	if (unlikely(nents < 0)) {
		vbp_cleanup_cmd(req);
		return BLK_STS_RESOURCE;
	}
	vr->sg_table.nents = nents;
	blk_mq_start_request(req);

	spin_lock_irqsave(&q->lock, flags);
	err = vbp_add_req(q->vq, vr);
	if (unlikely(err)) {
		kick = virtqueue_kick_prepare(q->vq);
		if (err == -ENOSPC) {
			blk_mq_stop_hw_queue(hctx);
			q->stopped = true;
		}
		spin_unlock_irqrestore(&q->lock, flags);
		vbp_kick(q, kick, false);
		vbp_unmap_data(req, vr);
		vbp_cleanup_cmd(req);
		switch (err) {
		case -ENOSPC:
			return BLK_STS_DEV_RESOURCE;
		case -ENOMEM:
			return BLK_STS_RESOURCE;
		default:
			return BLK_STS_IOERR;
		}
	}
	q->inflight++;
	wake = vbp_start_polling_locked(q);
	kick = bd->last && virtqueue_kick_prepare(q->vq);
	spin_unlock_irqrestore(&q->lock, flags);

	vbp_kick(q, kick, wake);
	if (bd->last)
		vbp_submit_reap(q);
	return BLK_STS_OK;
}

static void vbp_commit_rqs(struct blk_mq_hw_ctx *hctx)
{
	struct vbp_queue *q = hctx->driver_data;
	unsigned long flags;
	bool kick;

	if (unlikely(!READ_ONCE(q->vq)))
		return;
	spin_lock_irqsave(&q->lock, flags);
	kick = virtqueue_kick_prepare(q->vq);
	spin_unlock_irqrestore(&q->lock, flags);

	vbp_kick(q, kick, false);
	vbp_submit_reap(q);
}

static int vbp_poll(struct blk_mq_hw_ctx *hctx, struct io_comp_batch *iob)
{
	return vbp_reap(hctx->driver_data, VBP_BY_BLK_POLL, iob);
}

static enum blk_eh_timer_return vbp_timeout(struct request *req)
{
	struct vbp_queue *q = req->mq_hctx->driver_data;

	if (virtqueue_is_broken(q->vq)) {
		vbp_mark_broken(q->vbp);
		return BLK_EH_RESET_TIMER;
	}
	/* A slow device is not an error; a missed completion is reaped. */
	vbp_reap(q, q->is_poll_type ? VBP_BY_BLK_POLL : VBP_BY_POLLER, NULL);
	if (blk_mq_request_completed(req))
		return BLK_EH_DONE;
	return BLK_EH_RESET_TIMER;
}

static int vbp_init_hctx(struct blk_mq_hw_ctx *hctx, void *data,
			 unsigned int hctx_idx)
{
	struct vbp_device *vbp = data;

	hctx->driver_data = &vbp->queues[hctx_idx];
	return 0;
}

static void vbp_map_queues(struct blk_mq_tag_set *set)
{
	struct vbp_device *vbp = set->driver_data;
	unsigned int i, offset = 0;

	for (i = 0; i < set->nr_maps; i++) {
		struct blk_mq_queue_map *map = &set->map[i];

		map->nr_queues = vbp->io_queues[i];
		map->queue_offset = offset;
		offset += map->nr_queues;
		if (!map->nr_queues)
			continue;
		/*
		 * Default queues follow their interrupt's CPU spreading (so
		 * irq mode completes where it submitted); poll queues have
		 * no interrupt and are spread by topology.
		 */
		if (i == HCTX_TYPE_DEFAULT)
			blk_mq_virtio_map_queues(map, vbp->vdev, 0);
		else
			blk_mq_map_queues(map);
	}
}

static const struct blk_mq_ops vbp_mq_ops = {
	.queue_rq	= vbp_queue_rq,
	.commit_rqs	= vbp_commit_rqs,
	.complete	= vbp_complete_rq,
	.poll		= vbp_poll,
	.timeout	= vbp_timeout,
	.init_hctx	= vbp_init_hctx,
	.map_queues	= vbp_map_queues,
};

/* A device that broke the protocol: stop it and fail everything. */
static void vbp_fail_all(struct vbp_device *vbp)
{
	unsigned int i;

	virtio_break_device(vbp->vdev);
	mutex_lock(&vbp->lock);
	virtio_reset_device(vbp->vdev);
	mutex_unlock(&vbp->lock);

	for (i = 0; i < vbp->nr_queues; i++) {
		struct vbp_queue *q = &vbp->queues[i];
		struct vbp_req *done = NULL, **tail = &done, *vr;
		unsigned long flags;

		spin_lock_irqsave(&q->lock, flags);
		while ((vr = virtqueue_detach_unused_buf(q->vq))) {
			vr->status = VIRTIO_BLK_S_IOERR;
			vr->next = NULL;
			*tail = vr;
			tail = &vr->next;
		}
		q->inflight = 0;
		q->polling = false;
		spin_unlock_irqrestore(&q->lock, flags);
		vbp_complete_list(q, done, NULL, false);
	}
}

static void vbp_broken_work(struct work_struct *work)
{
	struct vbp_device *vbp = container_of(work, struct vbp_device,
					      broken_work);

	dev_err(&vbp->vdev->dev,
		"device broke the virtqueue protocol: disk %s failed\n",
		vbp->disk->disk_name);
	blk_mark_disk_dead(vbp->disk);
	vbp_fail_all(vbp);
}

/* Modes. */

/* Called with the queue frozen: nothing is in flight. */
static void vbp_apply_mode(struct vbp_device *vbp, unsigned int mode)
{
	unsigned int i;

	WRITE_ONCE(vbp->mode, mode);
	for (i = 0; i < vbp->io_queues[HCTX_TYPE_DEFAULT]; i++) {
		struct vbp_queue *q = &vbp->queues[i];
		unsigned long flags;

		spin_lock_irqsave(&q->lock, flags);
		q->polling = false;
		if (mode == VBP_MODE_POLL)
			virtqueue_disable_cb(q->vq);
		else
			virtqueue_enable_cb(q->vq);
		spin_unlock_irqrestore(&q->lock, flags);
	}
}

/* Config space. */

static void vbp_update_capacity(struct vbp_device *vbp, bool notify)
{
	u64 capacity;

	virtio_cread(vbp->vdev, struct virtio_blk_config, capacity, &capacity);
	if (notify) {
		if (set_capacity_and_notify(vbp->disk, capacity))
			dev_info(&vbp->vdev->dev,
				 "%s: capacity changed to %llu sectors\n",
				 vbp->disk->disk_name, capacity);
	} else {
		set_capacity(vbp->disk, capacity);
	}
}

static void vbp_config_work(struct work_struct *work)
{
	struct vbp_device *vbp = container_of(work, struct vbp_device,
					      config_work);

	mutex_lock(&vbp->lock);
	if (!vbp->removing && !atomic_read(&vbp->broken))
		vbp_update_capacity(vbp, true);
	mutex_unlock(&vbp->lock);
}

static void vbp_config_changed(struct virtio_device *vdev)
{
	struct vbp_device *vbp = vdev->priv;

	schedule_work(&vbp->config_work);
}

static bool vbp_writeback(struct virtio_device *vdev)
{
	u8 wce;

	if (!virtio_has_feature(vdev, VIRTIO_BLK_F_FLUSH))
		return false;
	if (virtio_cread_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE,
				 struct virtio_blk_config, wce, &wce))
		return true;
	return wce;
}

static int vbp_update_cache(struct vbp_device *vbp)
{
	struct request_queue *rq = vbp->disk->queue;
	struct queue_limits lim;
	int err;

	lim = queue_limits_start_update(rq);
	if (vbp_writeback(vbp->vdev))
		lim.features |= BLK_FEAT_WRITE_CACHE;
	else
		lim.features &= ~BLK_FEAT_WRITE_CACHE;
	blk_mq_freeze_queue(rq);
	err = queue_limits_commit_update(rq, &lim);
	blk_mq_unfreeze_queue(rq);
	return err;
}

/* sysfs attributes of the disk. */

static struct vbp_device *vbp_from_dev(struct device *dev)
{
	return dev_to_disk(dev)->private_data;
}

static int vbp_get_id(struct vbp_device *vbp, char *id)
{
	struct request_queue *q = vbp->disk->queue;
	struct request *req;
	int err;

	req = blk_mq_alloc_request(q, REQ_OP_DRV_IN, 0);
	if (IS_ERR(req))
		return PTR_ERR(req);
	err = blk_rq_map_kern(q, req, id, VIRTIO_BLK_ID_BYTES, GFP_KERNEL);
	if (!err)
		err = blk_status_to_errno(blk_execute_rq(req, false));
	blk_mq_free_request(req);
	return err;
}

static ssize_t serial_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	char *id;
	int err;

	id = kzalloc(VIRTIO_BLK_ID_BYTES, GFP_KERNEL);
	if (!id)
		return -ENOMEM;
	err = vbp_get_id(vbp_from_dev(dev), id);
	if (!err)
		err = sysfs_emit(buf, "%.*s\n", (int)strnlen(id, VIRTIO_BLK_ID_BYTES),
				 id);
	kfree(id);
	return err;
}
static DEVICE_ATTR_RO(serial);

static const char *const vbp_cache_types[] = {
	"write through",
	"write back",
};

static ssize_t cache_type_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n",
			  vbp_cache_types[vbp_writeback(vbp_from_dev(dev)->vdev)]);
}

static ssize_t cache_type_store(struct device *dev,
				struct device_attribute *attr, const char *buf,
				size_t count)
{
	struct vbp_device *vbp = vbp_from_dev(dev);
	int i, err;

	i = sysfs_match_string(vbp_cache_types, buf);
	if (i < 0)
		return -EINVAL;
	mutex_lock(&vbp->lock);
	if (vbp->frozen) {
		err = -EBUSY;
	} else {
		virtio_cwrite8(vbp->vdev, offsetof(struct virtio_blk_config, wce), i);
		err = vbp_update_cache(vbp);
	}
	mutex_unlock(&vbp->lock);
	return err ? err : count;
}
static DEVICE_ATTR_RW(cache_type);

static ssize_t completion_mode_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n",
			  vbp_mode_names[READ_ONCE(vbp_from_dev(dev)->mode)]);
}

static ssize_t completion_mode_store(struct device *dev,
				     struct device_attribute *attr,
				     const char *buf, size_t count)
{
	struct vbp_device *vbp = vbp_from_dev(dev);
	struct request_queue *rq = vbp->disk->queue;
	int mode = vbp_mode_from_string(buf);

	if (mode < 0)
		return mode;
	mutex_lock(&vbp->lock);
	/* Frozen: the queue's freeze would wait for held-back requests. */
	if (vbp->frozen) {
		mutex_unlock(&vbp->lock);
		return -EBUSY;
	}
	blk_mq_freeze_queue(rq);
	vbp_apply_mode(vbp, mode);
	blk_mq_unfreeze_queue(rq);
	mutex_unlock(&vbp->lock);
	return count;
}
static DEVICE_ATTR_RW(completion_mode);

static struct attribute *vbp_attrs[] = {
	&dev_attr_serial.attr,
	&dev_attr_cache_type.attr,
	&dev_attr_completion_mode.attr,
	NULL,
};

static umode_t vbp_attr_visible(struct kobject *kobj, struct attribute *a,
				int n)
{
	struct vbp_device *vbp = vbp_from_dev(kobj_to_dev(kobj));

	if (a == &dev_attr_cache_type.attr &&
	    !virtio_has_feature(vbp->vdev, VIRTIO_BLK_F_CONFIG_WCE))
		return 0444;
	return a->mode;
}

static const struct attribute_group vbp_attr_group = {
	.attrs		= vbp_attrs,
	.is_visible	= vbp_attr_visible,
};

static const struct attribute_group *vbp_attr_groups[] = {
	&vbp_attr_group,
	NULL,
};

/* debugfs. */

static int vbp_queues_show(struct seq_file *m, void *unused)
{
	struct vbp_device *vbp = m->private;
	unsigned int i;

	seq_puts(m, "queue type inflight polling interrupts irq submit poller blk_poll bad\n");
	for (i = 0; i < vbp->nr_queues; i++) {
		struct vbp_queue *q = &vbp->queues[i];
		unsigned long flags;
		u64 r[VBP_NR_REAPERS], irqs, bad;
		unsigned int inflight;
		bool polling;

		spin_lock_irqsave(&q->lock, flags);
		memcpy(r, q->reaped, sizeof(r));
		irqs = q->interrupts;
		bad = q->bad;
		inflight = q->inflight;
		polling = q->polling;
		spin_unlock_irqrestore(&q->lock, flags);

		seq_printf(m, "%u %s %u %d %llu %llu %llu %llu %llu %llu\n", i,
			   q->is_poll_type ? "poll" : "default", inflight,
			   polling, irqs, r[VBP_BY_IRQ], r[VBP_BY_SUBMIT],
			   r[VBP_BY_POLLER], r[VBP_BY_BLK_POLL], bad);
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(vbp_queues);

#ifdef CONFIG_VIRTIO_BLK_POLL_FAULT_INJECTION
/* "<queue> <fault>": corrupt that queue's next used buffer. */
static ssize_t vbp_inject_write(struct file *file, const char __user *ubuf,
				size_t count, loff_t *ppos)
{
	struct vbp_device *vbp = file->private_data;
	unsigned long flags;
	char buf[32], name[8];
	unsigned int qi;
	int fault;

	if (count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	if (sscanf(buf, "%u %7s", &qi, name) != 2 || qi >= vbp->nr_queues)
		return -EINVAL;
	fault = match_string(vbp_fault_names, VBP_NR_FAULTS, name);
	if (fault < 0)
		return -EINVAL;
	if (virtio_has_feature(vbp->vdev, VIRTIO_F_RING_PACKED))
		return -EOPNOTSUPP;

	spin_lock_irqsave(&vbp->queues[qi].lock, flags);
	vbp->queues[qi].fault = fault;
	spin_unlock_irqrestore(&vbp->queues[qi].lock, flags);
	return count;
}

static const struct file_operations vbp_inject_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.write	= vbp_inject_write,
	.llseek	= noop_llseek,
};

#ifdef CONFIG_PM_SLEEP
/*
 * "<ms>": take the device through the virtio core's freeze and restore, as
 * a system sleep does, and keep it frozen for that many milliseconds.
 */
static ssize_t vbp_sleep_write(struct file *file, const char __user *ubuf,
			       size_t count, loff_t *ppos)
{
	struct vbp_device *vbp = file->private_data;
	struct device *dev = &vbp->vdev->dev;
	unsigned int ms, sleep_flags;
	int err;

	err = kstrtouint_from_user(ubuf, count, 0, &ms);
	if (err)
		return err;
	if (ms > 10 * MSEC_PER_SEC)
		return -EINVAL;

	/*
	 * Not during a system sleep, nor against removal (which holds the
	 * device lock while it waits for this file's writers).
	 */
	sleep_flags = lock_system_sleep();
	if (!device_trylock(dev)) {
		unlock_system_sleep(sleep_flags);
		return -EBUSY;
	}
	err = virtio_device_freeze(vbp->vdev);
	if (!err) {
		msleep(ms);
		err = virtio_device_restore(vbp->vdev);
	}
	device_unlock(dev);
	unlock_system_sleep(sleep_flags);
	return err ? err : count;
}

static const struct file_operations vbp_sleep_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.write	= vbp_sleep_write,
	.llseek	= noop_llseek,
};
#endif

static void vbp_debugfs_inject(struct vbp_device *vbp)
{
	debugfs_create_file("inject", 0200, vbp->debugfs, vbp,
			    &vbp_inject_fops);
#ifdef CONFIG_PM_SLEEP
	debugfs_create_file("sleep", 0200, vbp->debugfs, vbp,
			    &vbp_sleep_fops);
#endif
}
#else
static void vbp_debugfs_inject(struct vbp_device *vbp)
{
}
#endif

/* Probe and removal. */

static int vbp_read_num_queues(struct vbp_device *vbp, u16 *num_queues)
{
	struct virtio_device *vdev = vbp->vdev;

	if (virtio_cread_feature(vdev, VIRTIO_BLK_F_MQ,
				 struct virtio_blk_config, num_queues,
				 num_queues)) {
		*num_queues = 1;
	} else if (!*num_queues) {
		dev_err(&vdev->dev, "device offers MQ with zero queues\n");
		return -EINVAL;
	}
	return 0;
}

/* The queues of the disk, fixed for its lifetime. */
static int vbp_init_queues(struct vbp_device *vbp)
{
	unsigned int i, nr_poll;
	u16 num_queues;
	int err;

	err = vbp_read_num_queues(vbp, &num_queues);
	if (err)
		return err;
	vbp->nr_queues = min_t(unsigned int, num_queues, nr_cpu_ids);
	nr_poll = min(READ_ONCE(vbp_poll_queues), vbp->nr_queues - 1);
	vbp->io_queues[HCTX_TYPE_DEFAULT] = vbp->nr_queues - nr_poll;
	vbp->io_queues[HCTX_TYPE_READ] = 0;
	vbp->io_queues[HCTX_TYPE_POLL] = nr_poll;

	vbp->queues = kcalloc(vbp->nr_queues, sizeof(*vbp->queues), GFP_KERNEL);
	if (!vbp->queues)
		return -ENOMEM;

	for (i = 0; i < vbp->nr_queues; i++) {
		struct vbp_queue *q = &vbp->queues[i];

		spin_lock_init(&q->lock);
		q->vbp = vbp;
		q->index = i;
		q->is_poll_type = i >= vbp->io_queues[HCTX_TYPE_DEFAULT];
		snprintf(q->name, VBP_VQ_NAME_LEN, "%s.%u",
			 q->is_poll_type ? "poll" : "req", i);
	}
	return 0;
}

/*
 * The virtqueues of the queues, at probe and again on restore from system
 * sleep; a queue starts empty, not polling, with its interrupts on.
 */
static int vbp_init_vqs(struct vbp_device *vbp)
{
	struct virtio_device *vdev = vbp->vdev;
	struct irq_affinity desc = { 0, };
	struct virtqueue_info *vqs_info;
	struct virtqueue **vqs;
	u16 num_queues;
	unsigned int i;
	int err;

	err = vbp_read_num_queues(vbp, &num_queues);
	if (err)
		return err;
	if (num_queues < vbp->nr_queues) {
		dev_err(&vdev->dev, "device has %u queues, the disk %u\n",
			num_queues, vbp->nr_queues);
		return -EINVAL;
	}

	vqs_info = kcalloc(vbp->nr_queues, sizeof(*vqs_info), GFP_KERNEL);
	vqs = kcalloc(vbp->nr_queues, sizeof(*vqs), GFP_KERNEL);
	if (!vqs_info || !vqs) {
		err = -ENOMEM;
		goto out_free;
	}

	for (i = 0; i < vbp->nr_queues; i++) {
		vqs_info[i].name = vbp->queues[i].name;
		if (!vbp->queues[i].is_poll_type)
			vqs_info[i].callback = vbp_vq_done;
	}

	err = virtio_find_vqs(vdev, vbp->nr_queues, vqs, vqs_info, &desc);
	if (err)
		goto out_free;

	for (i = 0; i < vbp->nr_queues; i++) {
		struct vbp_queue *q = &vbp->queues[i];
		unsigned long flags;

		spin_lock_irqsave(&q->lock, flags);
		WRITE_ONCE(q->vq, vqs[i]);
		q->inflight = 0;
		q->polling = false;
		q->stopped = false;
		vbp_reset_fault_locked(q);
		spin_unlock_irqrestore(&q->lock, flags);
	}

out_free:
	kfree(vqs);
	kfree(vqs_info);
	return err;
}

/* Called with the device reset: no callback runs, nothing is in flight. */
static void vbp_del_vqs(struct vbp_device *vbp)
{
	unsigned int i;

	for (i = 0; i < vbp->nr_queues; i++) {
		struct vbp_queue *q = &vbp->queues[i];
		unsigned long flags;

		spin_lock_irqsave(&q->lock, flags);
		WRITE_ONCE(q->vq, NULL);
		spin_unlock_irqrestore(&q->lock, flags);
	}
	vbp->vdev->config->del_vqs(vbp->vdev);
}

static int vbp_read_limits(struct vbp_device *vbp, struct queue_limits *lim)
{
	struct virtio_device *vdev = vbp->vdev;
	u32 v, seg_max, max_size, ring;
	u16 min_io;
	u8 exp;

	/* A request takes its header and status descriptors too. */
	ring = virtqueue_get_vring_size(vbp->queues[0].vq);
	if (ring < 3) {
		dev_err(&vdev->dev, "virtqueue of %u entries is too small\n",
			ring);
		return -EINVAL;
	}
	if (virtio_cread_feature(vdev, VIRTIO_BLK_F_SEG_MAX,
				 struct virtio_blk_config, seg_max, &seg_max) ||
	    !seg_max)
		seg_max = 1;
	seg_max = min_t(u32, seg_max, VBP_MAX_SG - 2);
	if (!virtio_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC))
		seg_max = min(seg_max, ring - 2);
	lim->max_segments = seg_max;
	lim->max_hw_sectors = UINT_MAX;

	max_size = min_t(size_t, virtio_max_dma_size(vdev), U32_MAX);
	if (!virtio_cread_feature(vdev, VIRTIO_BLK_F_SIZE_MAX,
				  struct virtio_blk_config, size_max, &v))
		max_size = min(max_size, v);
	lim->max_segment_size = max_size;

	virtio_cread_feature(vdev, VIRTIO_BLK_F_BLK_SIZE,
			     struct virtio_blk_config, blk_size,
			     &lim->logical_block_size);

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_TOPOLOGY)) {
		u32 lbs = lim->logical_block_size ?: SECTOR_SIZE;

		virtio_cread(vdev, struct virtio_blk_config,
			     physical_block_exp, &exp);
		if (exp && exp < 16)
			lim->physical_block_size = lbs << exp;
		virtio_cread(vdev, struct virtio_blk_config,
			     alignment_offset, &exp);
		lim->alignment_offset = lbs * exp;
		virtio_cread(vdev, struct virtio_blk_config, min_io_size,
			     &min_io);
		lim->io_min = lbs * min_io;
		virtio_cread(vdev, struct virtio_blk_config, opt_io_size, &v);
		lim->io_opt = lbs * min_t(u32, v, UINT_MAX / lbs);
	}

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_DISCARD)) {
		u32 align, segs;

		virtio_cread(vdev, struct virtio_blk_config,
			     max_discard_sectors, &v);
		lim->max_hw_discard_sectors = v ?: UINT_MAX;
		virtio_cread(vdev, struct virtio_blk_config, max_discard_seg,
			     &segs);
		lim->max_discard_segments = clamp_t(u32, segs ?: seg_max, 1,
						    VBP_MAX_DISCARD_SEG);
		virtio_cread(vdev, struct virtio_blk_config,
			     discard_sector_alignment, &align);
		lim->discard_granularity = align && align < (UINT_MAX >> SECTOR_SHIFT) ?
			align << SECTOR_SHIFT : lim->logical_block_size;
	}

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_WRITE_ZEROES)) {
		virtio_cread(vdev, struct virtio_blk_config,
			     max_write_zeroes_sectors, &v);
		lim->max_write_zeroes_sectors = v ?: UINT_MAX;
	}

	if (vbp_writeback(vdev))
		lim->features |= BLK_FEAT_WRITE_CACHE;
	return 0;
}

static int vbp_start_pollers(struct vbp_device *vbp)
{
	struct blk_mq_queue_map *map = &vbp->tag_set.map[HCTX_TYPE_DEFAULT];
	cpumask_var_t mask;
	unsigned int i, cpu;
	int err = 0;

	if (!zalloc_cpumask_var(&mask, GFP_KERNEL))
		return -ENOMEM;

	for (i = 0; i < vbp->io_queues[HCTX_TYPE_DEFAULT]; i++) {
		struct vbp_queue *q = &vbp->queues[i];
		struct task_struct *t;

		t = kthread_create(vbp_poller, q, "vbp%d-q%u", vbp->index, i);
		if (IS_ERR(t)) {
			err = PTR_ERR(t);
			break;
		}
		/* The poller runs where the queue's requests come from. */
		cpumask_clear(mask);
		for_each_possible_cpu(cpu)
			if (map->mq_map[cpu] == map->queue_offset + i)
				cpumask_set_cpu(cpu, mask);
		if (cpumask_intersects(mask, cpu_online_mask))
			set_cpus_allowed_ptr(t, mask);
		q->poller = t;
		wake_up_process(t);
	}
	free_cpumask_var(mask);
	return err;
}

static void vbp_stop_pollers(struct vbp_device *vbp)
{
	unsigned int i;

	for (i = 0; i < vbp->nr_queues; i++) {
		if (vbp->queues[i].poller)
			kthread_stop(vbp->queues[i].poller);
		vbp->queues[i].poller = NULL;
	}
}

static const struct block_device_operations vbp_fops = {
	.owner		= THIS_MODULE,
};

static int vbp_probe(struct virtio_device *vdev)
{
	struct queue_limits lim = { };
	struct vbp_device *vbp;
	unsigned int depth;
	int err;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "device has no config space access\n");
		return -EINVAL;
	}

	vbp = kzalloc(sizeof(*vbp), GFP_KERNEL);
	if (!vbp)
		return -ENOMEM;
	vbp->vdev = vdev;
	vdev->priv = vbp;
	mutex_init(&vbp->lock);
	INIT_WORK(&vbp->config_work, vbp_config_work);
	INIT_WORK(&vbp->broken_work, vbp_broken_work);
	vbp->mode = READ_ONCE(vbp_default_mode);

	vbp->index = ida_alloc(&vbp_index_ida, GFP_KERNEL);
	if (vbp->index < 0) {
		err = vbp->index;
		goto err_free_vbp;
	}

	err = vbp_init_queues(vbp);
	if (err)
		goto err_free_index;
	err = vbp_init_vqs(vbp);
	if (err)
		goto err_free_queues;

	depth = virtqueue_get_vring_size(vbp->queues[0].vq);
	if (!virtio_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC))
		depth /= 2;
	vbp->tag_set.ops = &vbp_mq_ops;
	vbp->tag_set.nr_hw_queues = vbp->nr_queues;
	vbp->tag_set.nr_maps = vbp->io_queues[HCTX_TYPE_POLL] ? 3 : 1;
	vbp->tag_set.queue_depth = max(depth, 1U);
	vbp->tag_set.numa_node = NUMA_NO_NODE;
	vbp->tag_set.flags = BLK_MQ_F_SHOULD_MERGE;
	vbp->tag_set.cmd_size = sizeof(struct vbp_req) +
				sizeof(struct scatterlist) * VBP_INLINE_SG;
	vbp->tag_set.driver_data = vbp;
	err = blk_mq_alloc_tag_set(&vbp->tag_set);
	if (err)
		goto err_del_vqs;

	err = vbp_read_limits(vbp, &lim);
	if (err)
		goto err_free_tags;

	vbp->disk = blk_mq_alloc_disk(&vbp->tag_set, &lim, vbp);
	if (IS_ERR(vbp->disk)) {
		err = PTR_ERR(vbp->disk);
		dev_err(&vdev->dev, "cannot create a disk: %d\n", err);
		goto err_free_tags;
	}
	snprintf(vbp->disk->disk_name, DISK_NAME_LEN, "vbp%d", vbp->index);
	vbp->disk->fops = &vbp_fops;
	vbp->disk->private_data = vbp;
	if (virtio_has_feature(vdev, VIRTIO_BLK_F_RO))
		set_disk_ro(vbp->disk, true);
	vbp_update_capacity(vbp, false);

	err = vbp_start_pollers(vbp);
	if (err)
		goto err_stop_pollers;

	virtio_device_ready(vdev);
	vbp_apply_mode(vbp, vbp->mode);

	err = device_add_disk(&vdev->dev, vbp->disk, vbp_attr_groups);
	if (err)
		goto err_reset;

	vbp->debugfs = debugfs_create_dir(vbp->disk->disk_name,
					  vbp_debugfs_root);
	debugfs_create_file("queues", 0444, vbp->debugfs, vbp,
			    &vbp_queues_fops);
	vbp_debugfs_inject(vbp);

	dev_info(&vdev->dev,
		 "%s: %llu sectors, %u virtqueues (%u poll), %s completions\n",
		 vbp->disk->disk_name, get_capacity(vbp->disk), vbp->nr_queues,
		 vbp->io_queues[HCTX_TYPE_POLL], vbp_mode_names[vbp->mode]);
	return 0;

err_reset:
	virtio_reset_device(vdev);
err_stop_pollers:
	vbp_stop_pollers(vbp);
	put_disk(vbp->disk);
err_free_tags:
	blk_mq_free_tag_set(&vbp->tag_set);
err_del_vqs:
	vbp_del_vqs(vbp);
err_free_queues:
	kfree(vbp->queues);
err_free_index:
	ida_free(&vbp_index_ida, vbp->index);
err_free_vbp:
	vdev->priv = NULL;
	kfree(vbp);
	return err;
}

/*
 * A frozen device that does not come back: the requests held back fail,
 * in vbp_queue_rq, for want of virtqueues.
 */
static void vbp_fail_frozen(struct vbp_device *vbp)
{
	if (!vbp->quiesced)
		return;
	vbp->quiesced = false;
	blk_mark_disk_dead(vbp->disk);
	blk_mq_unquiesce_queue(vbp->disk->queue);
}

static void vbp_remove(struct virtio_device *vdev)
{
	struct vbp_device *vbp = vdev->priv;

	mutex_lock(&vbp->lock);
	vbp->removing = true;
	mutex_unlock(&vbp->lock);
	flush_work(&vbp->config_work);

	if (vbp->frozen) {
		/* Removed while frozen, or after a failed restore. */
		vbp_fail_frozen(vbp);
	} else if (virtqueue_is_broken(vbp->queues[0].vq)) {
		/*
		 * A device that is gone (surprise removal breaks its
		 * virtqueues) never completes what it holds: fail it, or
		 * del_gendisk would wait forever.  A present device finishes
		 * its requests first.
		 */
		vbp_mark_broken(vbp);
	}
	flush_work(&vbp->broken_work);

	debugfs_remove_recursive(vbp->debugfs);
	del_gendisk(vbp->disk);
	vbp_stop_pollers(vbp);

	mutex_lock(&vbp->lock);
	virtio_reset_device(vdev);
	mutex_unlock(&vbp->lock);
	flush_work(&vbp->broken_work);

	if (!vbp->frozen)
		vbp_del_vqs(vbp);
	put_disk(vbp->disk);
	blk_mq_free_tag_set(&vbp->tag_set);
	kfree(vbp->queues);
	ida_free(&vbp_index_ida, vbp->index);
	kfree(vbp);
}

#ifdef CONFIG_PM_SLEEP
/* System sleep. */

/*
 * Wait for the requests on the virtqueues.  Those of the poll queues
 * complete only when polled, and who would poll them may be a frozen task:
 * reap them meanwhile.
 */
static void vbp_drain(struct vbp_device *vbp)
{
	struct request_queue *rq = vbp->disk->queue;
	unsigned int i;

	blk_freeze_queue_start(rq);
	while (!blk_mq_freeze_queue_wait_timeout(rq, 1)) {
		for (i = vbp->io_queues[HCTX_TYPE_DEFAULT]; i < vbp->nr_queues;
		     i++)
			vbp_reap(&vbp->queues[i], VBP_BY_BLK_POLL, NULL);
	}
}

static int vbp_freeze(struct virtio_device *vdev)
{
	struct vbp_device *vbp = vdev->priv;
	struct request_queue *rq = vbp->disk->queue;

	/* No mode or cache change may freeze the queue from here on. */
	mutex_lock(&vbp->lock);
	vbp->frozen = true;
	mutex_unlock(&vbp->lock);

	/*
	 * What the device holds completes; what comes later waits in the
	 * quiesced queue for restore.  The queue is not left frozen, so
	 * that no task waits to enter it while the system goes to sleep.
	 */
	vbp_drain(vbp);
	blk_mq_quiesce_queue(rq);
	vbp->quiesced = true;
	blk_mq_unfreeze_queue(rq);
	flush_work(&vbp->broken_work);

	/* No interrupt, poller or config work touches the device now. */
	virtio_reset_device(vdev);
	vbp_stop_pollers(vbp);
	flush_work(&vbp->config_work);
	vbp_del_vqs(vbp);
	return 0;
}

static int vbp_restore(struct virtio_device *vdev)
{
	struct vbp_device *vbp = vdev->priv;
	int err;

	err = vbp_init_vqs(vbp);
	if (err)
		goto err_fail;
	err = vbp_start_pollers(vbp);
	if (err)
		goto err_del_vqs;

	/* A device that was powered off forgot the cache mode the disk has. */
	if (virtio_has_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE) &&
	    virtio_has_feature(vdev, VIRTIO_BLK_F_FLUSH))
		virtio_cwrite8(vdev, offsetof(struct virtio_blk_config, wce),
			       !!(vbp->disk->queue->limits.features &
				  BLK_FEAT_WRITE_CACHE));

	virtio_device_ready(vdev);
	vbp_apply_mode(vbp, READ_ONCE(vbp->mode));

	/* Unquiesced before a mode change may freeze the queue again. */
	vbp->quiesced = false;
	blk_mq_unquiesce_queue(vbp->disk->queue);
	mutex_lock(&vbp->lock);
	vbp->frozen = false;
	mutex_unlock(&vbp->lock);
	return 0;

err_del_vqs:
	vbp_stop_pollers(vbp);
	virtio_reset_device(vdev);
	vbp_del_vqs(vbp);
err_fail:
	dev_err(&vdev->dev, "%s: cannot restore the device: %d\n",
		vbp->disk->disk_name, err);
	vbp_fail_frozen(vbp);
	return err;
}
#endif

static const struct virtio_device_id vbp_id_table[] = {
	{ VIRTIO_ID_BLOCK, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vbp_id_table);

static const unsigned int vbp_features[] = {
	VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_RO,
	VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY,
	VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD,
	VIRTIO_BLK_F_WRITE_ZEROES,
};

static struct virtio_driver vbp_driver = {
	.feature_table		= vbp_features,
	.feature_table_size	= ARRAY_SIZE(vbp_features),
	.driver.name		= KBUILD_MODNAME,
	.id_table		= vbp_id_table,
	.probe			= vbp_probe,
	.remove			= vbp_remove,
	.config_changed		= vbp_config_changed,
#ifdef CONFIG_PM_SLEEP
	.freeze			= vbp_freeze,
	.restore		= vbp_restore,
#endif
};

static int __init vbp_init(void)
{
	int err;

	vbp_debugfs_root = debugfs_create_dir(KBUILD_MODNAME, NULL);
	err = register_virtio_driver(&vbp_driver);
	if (err)
		debugfs_remove(vbp_debugfs_root);
	return err;
}

static void __exit vbp_exit(void)
{
	unregister_virtio_driver(&vbp_driver);
	debugfs_remove(vbp_debugfs_root);
}

module_init(vbp_init);
module_exit(vbp_exit);

MODULE_DESCRIPTION("Virtio block driver with polled, interrupt-free completions");
MODULE_LICENSE("GPL");
