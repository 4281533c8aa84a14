// SPDX-License-Identifier: GPL-2.0
/*
 * virtio_blk_poll: a virtio-blk guest driver with one virtqueue per CPU whose
 * completions can be polled instead of signalled by interrupts.
 *
 * This version binds virtio-blk devices (virtio device ID 2), negotiates the
 * queue count and brings the virtqueues up; it does not yet expose a disk.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cpumask.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>

#define VBP_VQ_NAME_LEN	16

struct vbp_queue {
	struct virtqueue *vq;
	char name[VBP_VQ_NAME_LEN];
};

struct vbp_device {
	struct virtio_device *vdev;
	/* Capacity in 512-byte sectors, read at probe. */
	u64 capacity;
	/* Number of virtqueues in use: min(device's num_queues, CPUs). */
	unsigned int nr_queues;
	struct vbp_queue *queues;
};

static int vbp_init_vqs(struct vbp_device *vbp)
{
	struct virtio_device *vdev = vbp->vdev;
	struct virtqueue_info *vqs_info;
	struct virtqueue **vqs;
	u16 num_queues;
	unsigned int i;
	int err;

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_MQ,
				   struct virtio_blk_config, num_queues,
				   &num_queues);
	if (err) {
		num_queues = 1;
	} else if (!num_queues) {
		dev_err(&vdev->dev, "device offers MQ with zero queues\n");
		return -EINVAL;
	}
	vbp->nr_queues = min_t(unsigned int, num_queues, nr_cpu_ids);

	vbp->queues = kcalloc(vbp->nr_queues, sizeof(*vbp->queues), GFP_KERNEL);
	vqs_info = kcalloc(vbp->nr_queues, sizeof(*vqs_info), GFP_KERNEL);
	vqs = kcalloc(vbp->nr_queues, sizeof(*vqs), GFP_KERNEL);
	if (!vbp->queues || !vqs_info || !vqs) {
		err = -ENOMEM;
		goto out_free;
	}

	for (i = 0; i < vbp->nr_queues; i++) {
		snprintf(vbp->queues[i].name, VBP_VQ_NAME_LEN, "req.%u", i);
		vqs_info[i].name = vbp->queues[i].name;
	}

	err = virtio_find_vqs(vdev, vbp->nr_queues, vqs, vqs_info, NULL);
	if (err)
		goto out_free;

	for (i = 0; i < vbp->nr_queues; i++)
		vbp->queues[i].vq = vqs[i];

out_free:
	kfree(vqs);
	kfree(vqs_info);
	if (err) {
		kfree(vbp->queues);
		vbp->queues = NULL;
	}
	return err;
}

static int vbp_probe(struct virtio_device *vdev)
{
	struct vbp_device *vbp;
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

	err = vbp_init_vqs(vbp);
	if (err)
		goto err_free_vbp;

	virtio_cread(vdev, struct virtio_blk_config, capacity, &vbp->capacity);
	virtio_device_ready(vdev);

	dev_info(&vdev->dev, "%llu sectors, %u virtqueues\n",
		 vbp->capacity, vbp->nr_queues);
	return 0;

err_free_vbp:
	vdev->priv = NULL;
	kfree(vbp);
	return err;
}

static void vbp_remove(struct virtio_device *vdev)
{
	struct vbp_device *vbp = vdev->priv;

	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
	kfree(vbp->queues);
	kfree(vbp);
}

static const struct virtio_device_id vbp_id_table[] = {
	{ VIRTIO_ID_BLOCK, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vbp_id_table);

static const unsigned int vbp_features[] = {
	VIRTIO_BLK_F_MQ,
};

static struct virtio_driver vbp_driver = {
	.feature_table		= vbp_features,
	.feature_table_size	= ARRAY_SIZE(vbp_features),
	.driver.name		= KBUILD_MODNAME,
	.id_table		= vbp_id_table,
	.probe			= vbp_probe,
	.remove			= vbp_remove,
};
module_virtio_driver(vbp_driver);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("virtio-blk guest driver with per-CPU polled virtqueues");
