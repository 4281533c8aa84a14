// SPDX-License-Identifier: GPL-2.0
/*
 * vhost-blk-poll: a virtio-blk device in the host kernel, served by one
 * vhost worker per virtqueue.
 *
 * A virtual machine monitor opens /dev/vhost-blk-poll, hands it the guest's
 * memory map and rings with the standard vhost ioctls and attaches a backing
 * block device or file with VHOST_BLK_SET_BACKEND (<linux/vhost_blk.h>).
 *
 * Lock order: vhost_blk.dev.mutex -> vhost_virtqueue.mutex.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/compat.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/uio.h>
#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>

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

struct vhost_blk_vq {
	struct vhost_virtqueue vq;
};

struct vhost_blk {
	struct vhost_dev dev;
	/* Number of virtqueues, fixed at open. */
	unsigned int nvqs;
	/* vqs[i].vq is guarded by its own mutex. */
	struct vhost_blk_vq vqs[] __counted_by(nvqs);
};

static void vhost_blk_handle_kick(struct vhost_work *work)
{
	/*
	 * Nothing is served while no backend is attached: the requests stay
	 * in the avail ring.
	 */
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

	vqs = kmalloc_array(nvqs, sizeof(*vqs), GFP_KERNEL);
	if (!vqs)
		goto err_free_blk;

	for (i = 0; i < nvqs; i++) {
		vqs[i] = &blk->vqs[i].vq;
		blk->vqs[i].vq.handle_kick = vhost_blk_handle_kick;
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

	/* Stop the kicks, let queued work finish, then tear down. */
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
	return misc_register(&vhost_blk_misc);
}
module_init(vhost_blk_init);

static void __exit vhost_blk_exit(void)
{
	misc_deregister(&vhost_blk_misc);
}
module_exit(vhost_blk_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Host kernel accelerator for virtio-blk with polling workers");
