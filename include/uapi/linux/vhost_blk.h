/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vhost-blk-poll: an in-kernel virtio-blk device with polling workers.
 *
 * The device is /dev/vhost-blk-poll.  A virtual machine monitor drives it
 * with the standard vhost ioctls of <linux/vhost.h> (VHOST_SET_OWNER,
 * VHOST_SET_FEATURES, VHOST_SET_MEM_TABLE, VHOST_SET_VRING_*, ...) and with
 * the block-specific ioctls below.
 */
#ifndef _UAPI_LINUX_VHOST_BLK_H
#define _UAPI_LINUX_VHOST_BLK_H

#include <linux/ioctl.h>
#include <linux/vhost.h>
#include <linux/virtio_blk.h>

/**
 * define VHOST_BLK_SET_BACKEND - attach or detach the backing store
 *
 * The argument points to an int: the file descriptor of a block device or
 * of a regular file, opened by the caller with the access the guest gets
 * (O_RDONLY makes the device read-only; O_DSYNC makes every write durable
 * before it is answered).  -1 detaches the backend once the requests in
 * flight have completed.
 */
#define VHOST_BLK_SET_BACKEND		_IOW(VHOST_VIRTIO, 0x90, int)

/**
 * define VHOST_BLK_SET_VRING_CPU - pin the worker of a vring to a CPU
 *
 * The argument points to a struct vhost_vring_state: .index is the vring,
 * .num the CPU its worker runs on; .num == -1 removes the pinning.
 */
#define VHOST_BLK_SET_VRING_CPU		_IOW(VHOST_VIRTIO, 0x91, \
					     struct vhost_vring_state)

/**
 * define VHOST_BLK_SET_SERIAL - set the device's serial number
 *
 * The argument points to VIRTIO_BLK_ID_BYTES (20) bytes that the device
 * returns for VIRTIO_BLK_T_GET_ID requests; shorter serials are padded with
 * NUL bytes.  The default is all NUL bytes.
 */
#define VHOST_BLK_SET_SERIAL		_IOW(VHOST_VIRTIO, 0x92, \
					     char[VIRTIO_BLK_ID_BYTES])

/**
 * define VHOST_BLK_MAX_DISCARD_SECTORS - limit of one discard segment
 *
 * The most 512-byte sectors one discard or write-zeroes segment may cover;
 * a virtual machine monitor advertises it (or less) as max_discard_sectors
 * and max_write_zeroes_sectors in the device's configuration space.
 */
#define VHOST_BLK_MAX_DISCARD_SECTORS	(1U << 22)

/**
 * define VHOST_BLK_MAX_DISCARD_SEG - segments in one discard request
 *
 * The most segments one discard or write-zeroes request may carry
 * (max_discard_seg and max_write_zeroes_seg in configuration space).
 */
#define VHOST_BLK_MAX_DISCARD_SEG	1

/**
 * define VHOST_BLK_SIZE_MAX - largest data segment of a read or write
 *
 * A virtual machine monitor advertises it (or less) as size_max in the
 * device's configuration space, with VIRTIO_BLK_F_SIZE_MAX.  The device
 * answers VIRTIO_BLK_S_IOERR to a read or write that carries more data
 * than 1024 such segments, the most iovecs of one chain.
 */
#define VHOST_BLK_SIZE_MAX		(1U << 20)

#endif /* _UAPI_LINUX_VHOST_BLK_H */
