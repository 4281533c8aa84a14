// SPDX-License-Identifier: GPL-2.0
/*
 * The character device /dev/vhost-blk-poll and the standard vhost ioctls on
 * it: permissions, ownership, features, vrings, workers.  Needs the module
 * loaded (vhost_blk_dev.sh does that) and root.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/vhost.h>
#include <linux/vhost_blk.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#include "../kselftest_harness.h"

#define DEV_PATH	"/dev/vhost-blk-poll"
#define MAXQ_PARAM	"/sys/module/vhost_blk_poll/parameters/max_queues"
#define RING_SIZE	256
#define MEM_SIZE	(1024 * 1024UL)

static const uint64_t required_features =
	(1ULL << VIRTIO_F_VERSION_1) |
	(1ULL << VIRTIO_RING_F_INDIRECT_DESC) |
	(1ULL << VIRTIO_RING_F_EVENT_IDX) |
	(1ULL << VHOST_F_LOG_ALL) |
	(1ULL << VIRTIO_BLK_F_SEG_MAX) |
	(1ULL << VIRTIO_BLK_F_BLK_SIZE) |
	(1ULL << VIRTIO_BLK_F_FLUSH) |
	(1ULL << VIRTIO_BLK_F_MQ) |
	(1ULL << VIRTIO_BLK_F_DISCARD) |
	(1ULL << VIRTIO_BLK_F_WRITE_ZEROES) |
	(1ULL << VIRTIO_BLK_F_RO);

static int read_max_queues(void)
{
	char buf[32] = "";
	int fd, n;

	fd = open(MAXQ_PARAM, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? atoi(buf) : -1;
}

TEST(device_node)
{
	struct stat st;

	ASSERT_EQ(0, stat(DEV_PATH, &st));
	EXPECT_TRUE(S_ISCHR(st.st_mode));
	EXPECT_EQ(0600, st.st_mode & 07777);
	EXPECT_EQ(0, st.st_uid);
}

TEST(unprivileged_open_fails)
{
	int status;
	pid_t pid;

	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		int fd;

		if (setgid(65534) || setuid(65534))
			_exit(2);
		fd = open(DEV_PATH, O_RDWR);
		_exit(fd < 0 && errno == EACCES ? 0 : 1);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
}

TEST(open_close_1000)
{
	int i, fd;

	for (i = 0; i < 1000; i++) {
		fd = open(DEV_PATH, O_RDWR);
		ASSERT_LE(0, fd) TH_LOG("open %d: %s", i, strerror(errno));
		ASSERT_EQ(0, close(fd));
	}
}

FIXTURE(dev) {
	int fd;
	int nvqs;
};

FIXTURE_SETUP(dev)
{
	self->fd = open(DEV_PATH, O_RDWR);
	ASSERT_LE(0, self->fd) TH_LOG("open %s: %s", DEV_PATH, strerror(errno));
	self->nvqs = read_max_queues();
	ASSERT_LT(0, self->nvqs);
}

FIXTURE_TEARDOWN(dev)
{
	close(self->fd);
}

TEST_F(dev, set_owner_twice_is_ebusy)
{
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_SET_OWNER));
	EXPECT_EQ(EBUSY, errno);
}

TEST_F(dev, owner_required)
{
	struct vhost_vring_state s = { .index = 0, .num = RING_SIZE };
	struct vhost_memory mem = { .nregions = 0 };

	ASSERT_EQ(-1, ioctl(self->fd, VHOST_SET_MEM_TABLE, &mem));
	EXPECT_EQ(EPERM, errno);
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_SET_VRING_NUM, &s));
	EXPECT_EQ(EPERM, errno);
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_RESET_OWNER));
	EXPECT_EQ(EPERM, errno);
}

TEST_F(dev, get_features)
{
	uint64_t features = 0;

	ASSERT_EQ(0, ioctl(self->fd, VHOST_GET_FEATURES, &features));
	EXPECT_EQ(required_features, features & required_features)
		TH_LOG("features %#llx lack %#llx",
		       (unsigned long long)features,
		       (unsigned long long)(required_features & ~features));
}

TEST_F(dev, set_features)
{
	uint64_t features = 0, bad;
	int bit;

	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_GET_FEATURES, &features));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_FEATURES, &features));

	/* Every bit the device does not offer is refused. */
	for (bit = 0; bit < 64; bit++) {
		if (features & (1ULL << bit))
			continue;
		bad = features | (1ULL << bit);
		ASSERT_EQ(-1, ioctl(self->fd, VHOST_SET_FEATURES, &bad))
			TH_LOG("feature bit %d accepted", bit);
		EXPECT_EQ(EOPNOTSUPP, errno);
	}
}

TEST_F(dev, vring_index_limit)
{
	struct vhost_vring_state s = { .num = RING_SIZE };

	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
	s.index = self->nvqs - 1;
	EXPECT_EQ(0, ioctl(self->fd, VHOST_SET_VRING_NUM, &s));
	s.index = self->nvqs;
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_SET_VRING_NUM, &s));
	EXPECT_EQ(ENOBUFS, errno);
	/* Not a power of two. */
	s.index = 0;
	s.num = 100;
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_SET_VRING_NUM, &s));
	EXPECT_EQ(EINVAL, errno);
}

TEST_F(dev, reset_owner_then_set_owner)
{
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_RESET_OWNER));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
}

TEST_F(dev, workers)
{
	struct vhost_worker_state w = { 0 };
	struct vhost_vring_worker vw = { 0 };

	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_NEW_WORKER, &w));
	vw.index = self->nvqs - 1;
	vw.worker_id = w.worker_id;
	ASSERT_EQ(0, ioctl(self->fd, VHOST_ATTACH_VRING_WORKER, &vw));
	vw.worker_id = 0;
	ASSERT_EQ(0, ioctl(self->fd, VHOST_GET_VRING_WORKER, &vw));
	EXPECT_EQ(w.worker_id, vw.worker_id);
	/* A worker with a vring attached cannot be freed. */
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_FREE_WORKER, &w));
	EXPECT_EQ(EBUSY, errno);
	vw.worker_id = 12345;
	ASSERT_EQ(-1, ioctl(self->fd, VHOST_ATTACH_VRING_WORKER, &vw));
	EXPECT_EQ(ENODEV, errno);
}

/*
 * A complete vring setup on guest memory that is our own, then a kick with
 * no backend: nothing may be consumed from the ring, and closing the device
 * with the ring live tears everything down.
 */
TEST_F(dev, vring_setup_and_kick_without_backend)
{
	struct vhost_memory *mem;
	struct vhost_vring_state s;
	struct vhost_vring_addr a;
	struct vhost_vring_file kick, call;
	struct vring_avail *avail;
	struct vring_used *used;
	uint64_t features, one = 1;
	void *ram;
	int i;

	ram = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, ram);
	memset(ram, 0, MEM_SIZE);

	mem = calloc(1, sizeof(*mem) + sizeof(mem->regions[0]));
	ASSERT_NE(NULL, mem);
	mem->nregions = 1;
	mem->regions[0].guest_phys_addr = 0;
	mem->regions[0].memory_size = MEM_SIZE;
	mem->regions[0].userspace_addr = (uintptr_t)ram;

	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_OWNER));
	features = (1ULL << VIRTIO_F_VERSION_1);
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_FEATURES, &features));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_MEM_TABLE, mem));

	/* descriptors at 0, avail at 64 KiB, used at 128 KiB */
	avail = (void *)((char *)ram + 0x10000);
	used = (void *)((char *)ram + 0x20000);
	for (i = 0; i < self->nvqs; i++) {
		s.index = i;
		s.num = RING_SIZE;
		ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_VRING_NUM, &s));
		s.num = 0;
		ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_VRING_BASE, &s));
		memset(&a, 0, sizeof(a));
		a.index = i;
		a.desc_user_addr = (uintptr_t)ram;
		a.avail_user_addr = (uintptr_t)avail;
		a.used_user_addr = (uintptr_t)used;
		ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_VRING_ADDR, &a))
			TH_LOG("vring %d: %s", i, strerror(errno));
	}

	kick.index = 0;
	kick.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	call.index = 0;
	call.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ASSERT_LE(0, kick.fd);
	ASSERT_LE(0, call.fd);
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_VRING_KICK, &kick));
	ASSERT_EQ(0, ioctl(self->fd, VHOST_SET_VRING_CALL, &call));

	/* One request in the avail ring, then a kick. */
	avail->ring[0] = 0;
	__atomic_store_n(&avail->idx, 1, __ATOMIC_RELEASE);
	ASSERT_EQ(sizeof(one), write(kick.fd, &one, sizeof(one)));
	usleep(100000);
	EXPECT_EQ(0, __atomic_load_n(&used->idx, __ATOMIC_ACQUIRE));

	s.index = 0;
	ASSERT_EQ(0, ioctl(self->fd, VHOST_GET_VRING_BASE, &s));
	EXPECT_EQ(0, s.num);

	close(kick.fd);
	close(call.fd);
	free(mem);
	munmap(ram, MEM_SIZE);
}

TEST_HARNESS_MAIN
