// SPDX-License-Identifier: GPL-2.0
/*
 * vhost-blk-poll: a virtio-blk device in the host kernel, served by one
 * vhost worker per virtqueue.
 *
 * A virtual machine monitor opens /dev/vhost-blk-poll, hands it the guest's
 * memory map and rings with the standard vhost ioctls and attaches a backing
 * block device or file with VHOST_BLK_SET_BACKEND (<linux/vhost_blk.h>).
 *
 * Reads and writes go to the backend as asynchronous direct I/O through its
 * read_iter/write_iter on the guest's own pages (for a block device, the
 * block layer pins them into bios and submits them from the worker).  The
 * completion hands the request back to the worker of its virtqueue, which
 * writes the status byte and returns the buffers in batches.
 *
 * Lock order: vhost_blk.dev.mutex -> vhost_virtqueue.mutex.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blkdev.h>
#include <linux/compat.h>
#include <linux/falloc.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/llist.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/nospec.h>
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

#define VHOST_BLK_SECTOR_SHIFT	9

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

static struct kmem_cache *vhost_blk_req_cache;

/* The backing store, shared by all virtqueues of a device. */
struct vhost_blk_backend {
	struct file *file;
	/* NULL for a regular file. */
	struct block_device *bdev;
	/* In 512-byte sectors. */
	u64 capacity;
	bool read_only;
};

struct vhost_blk_vq {
	struct vhost_virtqueue vq;
	struct vhost_blk *blk;
	/* Requests whose I/O has ended, waiting for done_work. */
	struct llist_head done;
	struct vhost_work done_work;
	/* Frees the done requests when the worker is gone. */
	struct work_struct reap_work;
	/* Requests taken from this ring and not yet answered. */
	atomic_t inflight;
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
	/* Number of virtqueues, fixed at open. */
	unsigned int nvqs;
	/* vqs[i].vq is guarded by its own mutex. */
	struct vhost_blk_vq vqs[] __counted_by(nvqs);
};

struct vhost_blk_req {
	struct vhost_blk_vq *bvq;
	struct llist_node node;
	struct kiocb iocb;
	/* Two holders: the submitter and the I/O completion. */
	atomic_t ref;
	u16 head;
	u8 status;
	/* Bytes written into the guest's buffers, status byte included. */
	u32 used_len;
	/* Bytes of data a read or write moves. */
	size_t data_len;
	u8 __user *status_ptr;
	/* Copies of the chain's iovecs and dirty-log entries. */
	struct iovec *iov;
	unsigned int out_num;
	unsigned int in_num;
	struct vhost_log *log;
	unsigned int log_num;
};

static void vhost_blk_req_free(struct vhost_blk_req *req)
{
	struct vhost_blk_vq *bvq = req->bvq;

	kfree(req->iov);
	kfree(req->log);
	kmem_cache_free(vhost_blk_req_cache, req);
	if (atomic_dec_and_test(&bvq->inflight))
		wake_up_all(&bvq->blk->inflight_wq);
}

/* Answer the requests whose I/O ended, in the worker of their virtqueue. */
static void vhost_blk_done_work(struct vhost_work *work)
{
	struct vhost_blk_vq *bvq = container_of(work, struct vhost_blk_vq,
						done_work);
	struct vhost_virtqueue *vq = &bvq->vq;
	struct vhost_blk_req *req, *tmp;
	struct llist_node *list;
	unsigned int n = 0;

	list = llist_reverse_order(llist_del_all(&bvq->done));
	if (!list)
		return;

	mutex_lock(&vq->mutex);
	llist_for_each_entry_safe(req, tmp, list, node) {
		if (put_user(req->status, req->status_ptr)) {
			vq_err(vq, "cannot write the status of request %u\n",
			       req->head);
			req->used_len = 0;
		}
		if (unlikely(req->log) && req->used_len)
			vhost_log_write(vq, req->log, req->log_num,
					req->used_len, req->iov + req->out_num,
					req->in_num);
		vq->heads[n].id = cpu_to_vhost32(vq, req->head);
		vq->heads[n].len = cpu_to_vhost32(vq, req->used_len);
		n++;
		vhost_blk_req_free(req);
		if (n == UIO_MAXIOV) {
			vhost_add_used_and_signal_n(vq->dev, vq, vq->heads, n);
			n = 0;
		}
	}
	if (n)
		vhost_add_used_and_signal_n(vq->dev, vq, vq->heads, n);
	mutex_unlock(&vq->mutex);
}

/*
 * The worker is gone (its owner was killed): nobody can write to the
 * guest's memory any more, so only free what is done.
 */
static void vhost_blk_reap_work(struct work_struct *work)
{
	struct vhost_blk_vq *bvq = container_of(work, struct vhost_blk_vq,
						reap_work);
	struct vhost_blk_req *req, *tmp;

	llist_for_each_entry_safe(req, tmp, llist_del_all(&bvq->done), node)
		vhost_blk_req_free(req);
}

static void vhost_blk_req_done(struct vhost_blk_req *req)
{
	struct vhost_blk_vq *bvq = req->bvq;

	if (!atomic_dec_and_test(&req->ref))
		return;
	llist_add(&req->node, &bvq->done);
	if (!vhost_vq_work_queue(&bvq->vq, &bvq->done_work))
		queue_work(system_wq, &bvq->reap_work);
}

static void vhost_blk_rw_complete(struct kiocb *iocb, long ret)
{
	struct vhost_blk_req *req = container_of(iocb, struct vhost_blk_req,
						 iocb);

	if (iocb->ki_flags & IOCB_WRITE)
		kiocb_end_write(iocb);
	/* A short transfer (past the end of a shrunk file) is an error. */
	req->status = ret == req->data_len ? VIRTIO_BLK_S_OK :
					     VIRTIO_BLK_S_IOERR;
	if (ret > 0 && !(iocb->ki_flags & IOCB_WRITE))
		req->used_len = ret + 1;
	vhost_blk_req_done(req);
}

static bool vhost_blk_range_ok(struct vhost_blk_backend *be, u64 sector,
			       u64 bytes)
{
	u64 nr = bytes >> VHOST_BLK_SECTOR_SHIFT;

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
	return !(iov_iter_alignment(data) & ((1 << VHOST_BLK_SECTOR_SHIFT) - 1));
}

static ssize_t vhost_blk_rw_submit(struct vhost_blk_req *req,
				   struct iov_iter *data, bool write)
{
	struct file *file = req->iocb.ki_filp;

	if (write)
		return file->f_op->write_iter(&req->iocb, data);
	return file->f_op->read_iter(&req->iocb, data);
}

/*
 * Reads and writes: asynchronous direct I/O on the guest's pages; buffers
 * that direct I/O cannot take (virtio lets a guest place them anywhere) go
 * through the page cache, synchronously.
 */
static int vhost_blk_rw(struct vhost_blk_req *req,
			struct vhost_blk_backend *be, struct iov_iter *data,
			u64 sector, bool write)
{
	loff_t pos = sector << VHOST_BLK_SECTOR_SHIFT;
	size_t len = iov_iter_count(data);
	struct iov_iter saved;
	ssize_t ret;

	if (len & ((1 << VHOST_BLK_SECTOR_SHIFT) - 1) ||
	    !vhost_blk_range_ok(be, sector, len))
		return VIRTIO_BLK_S_IOERR;
	if (write && be->read_only)
		return VIRTIO_BLK_S_IOERR;
	if (!len)
		return VIRTIO_BLK_S_OK;

	req->data_len = len;
	init_sync_kiocb(&req->iocb, be->file);
	/* The guest addresses sectors, whatever the file's open flags. */
	req->iocb.ki_flags &= ~(IOCB_APPEND | IOCB_DIRECT);
	req->iocb.ki_pos = pos;
	if (vhost_blk_dio_ok(be, data, pos)) {
		req->iocb.ki_flags |= IOCB_DIRECT;
		req->iocb.ki_complete = vhost_blk_rw_complete;
	}
	if (write) {
		req->iocb.ki_flags |= IOCB_WRITE;
		kiocb_start_write(&req->iocb);
	}
	atomic_set(&req->ref, 2);

	/* An iovec iterator does not change its array: a copy restores it. */
	saved = *data;
	ret = vhost_blk_rw_submit(req, data, write);
	if (ret == -EINVAL && req->iocb.ki_flags & IOCB_DIRECT) {
		/* The file system's own alignment rules: go buffered. */
		*data = saved;
		req->iocb.ki_flags &= ~IOCB_DIRECT;
		req->iocb.ki_complete = NULL;
		req->iocb.ki_pos = pos;
		ret = vhost_blk_rw_submit(req, data, write);
	}
	if (ret != -EIOCBQUEUED)
		vhost_blk_rw_complete(&req->iocb, ret);
	vhost_blk_req_done(req);
	return -EIOCBQUEUED;
}

/* One segment of a discard or write-zeroes request. */
static int vhost_blk_discard(struct vhost_blk_backend *be,
			     struct iov_iter *data, u32 type)
{
	struct virtio_blk_discard_write_zeroes seg;
	bool unmap, zero = type == VIRTIO_BLK_T_WRITE_ZEROES;
	u64 sector, nr;
	u32 flags;
	int mode, ret;

	if (iov_iter_count(data) != sizeof(seg) * VHOST_BLK_MAX_DISCARD_SEG)
		return VIRTIO_BLK_S_UNSUPP;
	if (copy_from_iter(&seg, sizeof(seg), data) != sizeof(seg))
		return VIRTIO_BLK_S_IOERR;
	sector = le64_to_cpu(seg.sector);
	nr = le32_to_cpu(seg.num_sectors);
	flags = le32_to_cpu(seg.flags);
	unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
	if (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP || (unmap && !zero))
		return VIRTIO_BLK_S_UNSUPP;
	if (be->read_only || nr > VHOST_BLK_MAX_DISCARD_SECTORS ||
	    !vhost_blk_range_ok(be, sector, nr << VHOST_BLK_SECTOR_SHIFT))
		return VIRTIO_BLK_S_IOERR;
	if (!nr)
		return VIRTIO_BLK_S_OK;

	if (be->bdev && zero) {
		ret = blkdev_issue_zeroout(be->bdev, sector, nr, GFP_KERNEL,
					   unmap ? 0 : BLKDEV_ZERO_NOUNMAP);
		return ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
	}
	if (be->bdev) {
		if (!bdev_max_discard_sectors(be->bdev))
			return VIRTIO_BLK_S_UNSUPP;
		ret = blkdev_issue_discard(be->bdev, sector, nr, GFP_KERNEL);
		return ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
	}

	mode = FALLOC_FL_KEEP_SIZE;
	mode |= zero && !unmap ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE;
	ret = vfs_fallocate(be->file, mode, sector << VHOST_BLK_SECTOR_SHIFT,
			    nr << VHOST_BLK_SECTOR_SHIFT);
	/* Without ZERO_RANGE (tmpfs), a punched hole reads back as zeroes. */
	if (ret == -EOPNOTSUPP && mode & FALLOC_FL_ZERO_RANGE)
		ret = vfs_fallocate(be->file,
				    FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
				    sector << VHOST_BLK_SECTOR_SHIFT,
				    nr << VHOST_BLK_SECTOR_SHIFT);
	if (ret == -EOPNOTSUPP && !zero)
		return VIRTIO_BLK_S_UNSUPP;
	return ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
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
 * or -EINVAL when the chain has no status byte and cannot be answered.
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
	u32 type, written = 0;
	size_t in_len;
	u64 sector;
	int status;

	in_len = iov_length(vq->iov + out, in);
	if (!in || !in_len) {
		vq_err(vq, "request %d has no status byte\n", head);
		return -EINVAL;
	}

	req = kmem_cache_zalloc(vhost_blk_req_cache, GFP_KERNEL);
	if (!req)
		goto err_nomem;
	req->iov = kmemdup_array(vq->iov, out + in, sizeof(*req->iov),
				 GFP_KERNEL);
	if (!req->iov)
		goto err_free_req;
	if (unlikely(log_num)) {
		req->log = kmemdup_array(vq->log, log_num, sizeof(*req->log),
					 GFP_KERNEL);
		if (!req->log)
			goto err_free_iov;
		req->log_num = log_num;
	}
	req->bvq = bvq;
	req->head = head;
	req->out_num = out;
	req->in_num = in;
	atomic_inc(&bvq->inflight);

	/* The status byte is the last byte the device may write. */
	last = &req->iov[out + in - 1];
	while (!last->iov_len)
		last--;
	req->status_ptr = (u8 __user *)last->iov_base + last->iov_len - 1;
	req->used_len = 1;

	iov_iter_init(&out_iter, ITER_SOURCE, req->iov, out,
		      iov_length(req->iov, out));
	iov_iter_init(&in_iter, ITER_DEST, req->iov + out, in, in_len - 1);

	if (copy_from_iter(&hdr, sizeof(hdr), &out_iter) != sizeof(hdr)) {
		status = VIRTIO_BLK_S_IOERR;
		goto answer;
	}
	type = vhost32_to_cpu(vq, hdr.type);
	sector = vhost64_to_cpu(vq, hdr.sector);

	switch (type) {
	case VIRTIO_BLK_T_IN:
		status = iov_iter_count(&out_iter) ? VIRTIO_BLK_S_IOERR :
			 vhost_blk_rw(req, be, &in_iter, sector, false);
		break;
	case VIRTIO_BLK_T_OUT:
		status = iov_iter_count(&in_iter) ? VIRTIO_BLK_S_IOERR :
			 vhost_blk_rw(req, be, &out_iter, sector, true);
		break;
	case VIRTIO_BLK_T_FLUSH:
		status = vfs_fsync(be->file, 0) ? VIRTIO_BLK_S_IOERR :
						  VIRTIO_BLK_S_OK;
		break;
	case VIRTIO_BLK_T_GET_ID:
		status = vhost_blk_get_id(blk, &in_iter, &written);
		break;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		status = vhost_blk_discard(be, &out_iter, type);
		break;
	default:
		status = VIRTIO_BLK_S_UNSUPP;
		break;
	}
	if (status == -EIOCBQUEUED)
		return 0;
answer:
	req->status = status;
	req->used_len = written + 1;
	atomic_set(&req->ref, 1);
	vhost_blk_req_done(req);
	return 0;

err_free_iov:
	kfree(req->iov);
err_free_req:
	kmem_cache_free(vhost_blk_req_cache, req);
err_nomem:
	/* Give the chain back; it is served on the next kick. */
	vhost_discard_vq_desc(vq, 1);
	return -ENOMEM;
}

static void vhost_blk_handle_kick(struct vhost_work *work)
{
	struct vhost_virtqueue *vq = container_of(work, struct vhost_virtqueue,
						  poll.work);
	struct vhost_blk_vq *bvq = container_of(vq, struct vhost_blk_vq, vq);
	struct vhost_blk *blk = bvq->blk;
	struct vhost_blk_backend *be;
	unsigned int out, in, log_num = 0;
	struct vhost_log *log = NULL;
	int head, ret, reqs = 0;
	size_t bytes = 0;

	mutex_lock(&vq->mutex);
	be = vhost_vq_get_backend(vq);
	if (!be || bvq->broken)
		goto out;
	if (vq_meta_prefetch(vq) == 0)
		goto out;
	/* Migration: the pages the device writes are logged as dirty. */
	if (unlikely(vhost_has_feature(vq, VHOST_F_LOG_ALL)))
		log = vq->log;

	vhost_disable_notify(&blk->dev, vq);
	do {
		head = vhost_get_vq_desc(vq, vq->iov, ARRAY_SIZE(vq->iov),
					 &out, &in, log, &log_num);
		/* A corrupt chain: vhost has reported it, the ring stops. */
		if (unlikely(head < 0))
			break;
		if (head == vq->num) {
			if (unlikely(vhost_enable_notify(&blk->dev, vq))) {
				vhost_disable_notify(&blk->dev, vq);
				continue;
			}
			break;
		}
		bytes += iov_length(vq->iov, out + in);
		ret = vhost_blk_handle_req(bvq, be, head, out, in, log_num);
		if (unlikely(ret == -ENOMEM)) {
			/* The chain went back to the ring: try again later. */
			vhost_poll_queue(&vq->poll);
			break;
		}
		if (unlikely(ret)) {
			/* No status byte to answer with: the ring stops. */
			bvq->broken = true;
			break;
		}
	} while (!vhost_exceeds_weight(vq, ++reqs, bytes));
out:
	mutex_unlock(&vq->mutex);
}

/*
 * Wait until every request taken from a ring has been answered.  The
 * ring's backend must be gone, so that no new request is taken.
 */
static void vhost_blk_drain_vq(struct vhost_blk_vq *bvq)
{
	wait_event(bvq->blk->inflight_wq, !atomic_read(&bvq->inflight));
	/* The answers are written by work that may still be running. */
	vhost_dev_flush(&bvq->blk->dev);
	flush_work(&bvq->reap_work);
}

/*
 * Take the backend from every virtqueue and wait for its requests; returns
 * the backend, for the caller to release.  Called with dev.mutex held.
 */
static struct vhost_blk_backend *vhost_blk_stop(struct vhost_blk *blk)
{
	struct vhost_blk_backend *be = blk->backend;
	struct vhost_virtqueue *vq;
	unsigned int i;

	for (i = 0; i < blk->nvqs; i++) {
		vq = &blk->vqs[i].vq;
		mutex_lock(&vq->mutex);
		vhost_vq_set_backend(vq, NULL);
		blk->vqs[i].broken = false;
		mutex_unlock(&vq->mutex);
	}
	for (i = 0; i < blk->nvqs; i++)
		vhost_blk_drain_vq(&blk->vqs[i]);
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

	ret = -ENOMEM;
	be = kzalloc(sizeof(*be), GFP_KERNEL);
	if (!be)
		goto err_fput;
	be->file = file;
	be->read_only = !(file->f_mode & FMODE_WRITE);
	if (S_ISBLK(inode->i_mode)) {
		be->bdev = I_BDEV(file->f_mapping->host);
		be->capacity = bdev_nr_sectors(be->bdev);
	} else {
		be->capacity = i_size_read(inode) >> VHOST_BLK_SECTOR_SHIFT;
	}
	return be;

err_fput:
	fput(file);
	return ERR_PTR(ret);
}

static long vhost_blk_set_backend(struct vhost_blk *blk, int fd)
{
	struct vhost_blk_backend *be = NULL, *old;
	struct vhost_virtqueue *vq;
	unsigned int i;
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
	for (i = 0; be && i < blk->nvqs; i++) {
		vq = &blk->vqs[i].vq;
		mutex_lock(&vq->mutex);
		if (vq->desc) {
			if (!vhost_vq_access_ok(vq)) {
				ret = -EFAULT;
			} else {
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
	vhost_blk_backend_put(old);

	/* Serve what the guest queued while there was no backend. */
	for (i = 0; be && i < blk->nvqs; i++)
		if (blk->vqs[i].vq.kick)
			vhost_poll_queue(&blk->vqs[i].vq.poll);
	mutex_unlock(&blk->dev.mutex);
	return 0;

err_stop:
	blk->backend = be;
	vhost_blk_stop(blk);
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
	mutex_lock(&bvq->vq.mutex);
	vhost_vq_set_backend(&bvq->vq, NULL);
	mutex_unlock(&bvq->vq.mutex);
	vhost_blk_drain_vq(bvq);
	ret = vhost_vring_ioctl(&blk->dev, VHOST_GET_VRING_BASE, argp);
out_unlock:
	mutex_unlock(&blk->dev.mutex);
	return ret;
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
		init_llist_head(&bvq->done);
		atomic_set(&bvq->inflight, 0);
		vhost_work_init(&bvq->done_work, vhost_blk_done_work);
		INIT_WORK(&bvq->reap_work, vhost_blk_reap_work);
	}
	vhost_dev_init(&blk->dev, vqs, nvqs, UIO_MAXIOV, VHOST_BLK_PKT_WEIGHT,
		       VHOST_BLK_WEIGHT, true, NULL);

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
	 * Stop serving and wait for the requests in flight, stop the kicks,
	 * let queued work finish, then tear down.
	 */
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
	struct vhost_virtqueue *vq;
	unsigned int i;

	if (features & ~VHOST_BLK_FEATURES)
		return -EOPNOTSUPP;

	mutex_lock(&blk->dev.mutex);
	if ((features & (1ULL << VHOST_F_LOG_ALL)) &&
	    !vhost_log_access_ok(&blk->dev)) {
		mutex_unlock(&blk->dev.mutex);
		return -EFAULT;
	}

	for (i = 0; i < blk->nvqs; i++) {
		vq = &blk->vqs[i].vq;
		mutex_lock(&vq->mutex);
		vq->acked_features = features;
		mutex_unlock(&vq->mutex);
	}
	mutex_unlock(&blk->dev.mutex);
	return 0;
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
		/* Part of the ABI, not supported by this version. */
		return -ENOTTY;
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

	vhost_blk_req_cache = KMEM_CACHE(vhost_blk_req, 0);
	if (!vhost_blk_req_cache)
		return -ENOMEM;
	ret = misc_register(&vhost_blk_misc);
	if (ret)
		goto err_destroy_cache;
	return 0;

err_destroy_cache:
	kmem_cache_destroy(vhost_blk_req_cache);
	return ret;
}
module_init(vhost_blk_init);

static void __exit vhost_blk_exit(void)
{
	misc_deregister(&vhost_blk_misc);
	kmem_cache_destroy(vhost_blk_req_cache);
}
module_exit(vhost_blk_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Host kernel accelerator for virtio-blk with polling workers");
