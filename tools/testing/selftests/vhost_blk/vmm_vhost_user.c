// SPDX-License-Identifier: GPL-2.0
/*
 * The mini-VMM's vhost-user transport (vmm.h): the VMM as a vhost-user
 * front-end on a unix socket (QEMU's docs/interop/vhost-user.rst), such as
 * qemu-storage-daemon's vhost-user-blk export.  The vhost requests become
 * messages; the guest memory regions' memfds, and the rings' eventfds, go
 * to the back-end with SCM_RIGHTS.  Ring addresses are the VMM's own, as
 * the memory table's user addresses are.
 *
 * Every reply is checked: its request, flags and size, and the connection
 * closed on anything wrong (the spec's rule for a front-end), with the
 * error said on standard error.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vmm.h"

#define VHOST_USER_VERSION		0x1
#define VHOST_USER_VERSION_MASK		0x3
#define VHOST_USER_REPLY		0x4
#define VHOST_USER_NEED_REPLY		0x8

#define VHOST_USER_F_PROTOCOL_FEATURES	30

#define VHOST_USER_PROTOCOL_F_MQ	0
#define VHOST_USER_PROTOCOL_F_REPLY_ACK	3
#define VHOST_USER_PROTOCOL_F_CONFIG	9
/* The protocol features the VMM can use. */
#define VU_PROTOCOL_FEATURES	((1ULL << VHOST_USER_PROTOCOL_F_MQ) | \
				 (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) | \
				 (1ULL << VHOST_USER_PROTOCOL_F_CONFIG))

/* A vring's fd message: the index, and this bit when no fd comes. */
#define VHOST_USER_VRING_NOFD		0x100

#define VU_MAX_FDS	8		/* of one message */
#define VU_MAX_QUEUES	0x100		/* the index mask's */
#define VU_TIMEOUT_MS	10000		/* longest wait for a reply */

enum vu_request {
	VHOST_USER_GET_FEATURES = 1,
	VHOST_USER_SET_FEATURES = 2,
	VHOST_USER_SET_OWNER = 3,
	VHOST_USER_SET_MEM_TABLE = 5,
	VHOST_USER_SET_VRING_NUM = 8,
	VHOST_USER_SET_VRING_ADDR = 9,
	VHOST_USER_SET_VRING_BASE = 10,
	VHOST_USER_GET_VRING_BASE = 11,
	VHOST_USER_SET_VRING_KICK = 12,
	VHOST_USER_SET_VRING_CALL = 13,
	VHOST_USER_SET_VRING_ERR = 14,
	VHOST_USER_GET_PROTOCOL_FEATURES = 15,
	VHOST_USER_SET_PROTOCOL_FEATURES = 16,
	VHOST_USER_GET_QUEUE_NUM = 17,
	VHOST_USER_SET_VRING_ENABLE = 18,
	VHOST_USER_GET_CONFIG = 24,
	VHOST_USER_MAX = 25,
};

static const char *const vu_names[VHOST_USER_MAX] = {
	[VHOST_USER_GET_FEATURES] = "GET_FEATURES",
	[VHOST_USER_SET_FEATURES] = "SET_FEATURES",
	[VHOST_USER_SET_OWNER] = "SET_OWNER",
	[VHOST_USER_SET_MEM_TABLE] = "SET_MEM_TABLE",
	[VHOST_USER_SET_VRING_NUM] = "SET_VRING_NUM",
	[VHOST_USER_SET_VRING_ADDR] = "SET_VRING_ADDR",
	[VHOST_USER_SET_VRING_BASE] = "SET_VRING_BASE",
	[VHOST_USER_GET_VRING_BASE] = "GET_VRING_BASE",
	[VHOST_USER_SET_VRING_KICK] = "SET_VRING_KICK",
	[VHOST_USER_SET_VRING_CALL] = "SET_VRING_CALL",
	[VHOST_USER_SET_VRING_ERR] = "SET_VRING_ERR",
	[VHOST_USER_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
	[VHOST_USER_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES",
	[VHOST_USER_GET_QUEUE_NUM] = "GET_QUEUE_NUM",
	[VHOST_USER_SET_VRING_ENABLE] = "SET_VRING_ENABLE",
	[VHOST_USER_GET_CONFIG] = "GET_CONFIG",
};

/* The message header; the payload follows it unpadded. */
struct vu_hdr {
	uint32_t request;
	uint32_t flags;
	uint32_t size;		/* of the payload */
};

struct vu_region {
	uint64_t guest_phys_addr;
	uint64_t memory_size;
	uint64_t userspace_addr;
	uint64_t mmap_offset;
};

struct vu_memory {
	uint32_t nregions;
	uint32_t padding;
	struct vu_region regions[VU_MAX_FDS];
};

struct vu_config {
	uint32_t offset;
	uint32_t size;
	uint32_t flags;
	uint8_t region[256];
};

#define VU_CONFIG_HDR	offsetof(struct vu_config, region)

static const char *vu_name(uint32_t req)
{
	return req < VHOST_USER_MAX && vu_names[req] ? vu_names[req] : "?";
}

/*
 * What went wrong with request req, said on standard error; the connection
 * is closed, as the spec has a front-end do, so that nothing is read out
 * of step after it.  Returns err.
 */
static int vu_broken(struct vmm *v, uint32_t req, int err, const char *fmt,
		     ...)
{
	va_list ap;

	fprintf(stderr, "# vhost-user %s: %s: ", v->path, vu_name(req));
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
	return err;
}

static int64_t vu_now_ms(void)
{
	return now_us() / 1000;
}

/* Sends header and payload, with fds attached to the first byte. */
static int vu_send(struct vmm *v, uint32_t req, uint32_t flags,
		   const void *payload, uint32_t size, const int *fds,
		   unsigned int nfds)
{
	struct vu_hdr h = {
		.request = req,
		.flags = VHOST_USER_VERSION | flags,
		.size = size,
	};
	char cbuf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
	struct iovec iov[2] = {
		{ .iov_base = &h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)payload, .iov_len = size },
	};
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };
	size_t left = sizeof(h) + size;
	struct cmsghdr *cm;
	ssize_t n;

	if (v->fd < 0)
		return -ENOTCONN;
	if (nfds) {
		memset(cbuf, 0, sizeof(cbuf));
		m.msg_control = cbuf;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm = CMSG_FIRSTHDR(&m);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	while (left) {
		n = sendmsg(v->fd, &m, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return vu_broken(v, req, -errno, "send: %s",
					 strerror(errno));
		/* The rest, if any, without the fds sent already. */
		m.msg_control = NULL;
		m.msg_controllen = 0;
		left -= n;
		while (n && m.msg_iovlen) {
			size_t k = (size_t)n < m.msg_iov->iov_len ?
				   (size_t)n : m.msg_iov->iov_len;

			m.msg_iov->iov_base = (char *)m.msg_iov->iov_base + k;
			m.msg_iov->iov_len -= k;
			n -= k;
			if (!m.msg_iov->iov_len) {
				m.msg_iov++;
				m.msg_iovlen--;
			}
		}
	}
	return 0;
}

/*
 * Reads len bytes of a reply by the deadline: 0, -ETIMEDOUT, -ECONNRESET
 * when the back-end closed the connection first (*got says after how many
 * bytes), or another negative errno.
 */
static int vu_read(struct vmm *v, void *buf, size_t len, int64_t deadline,
		   size_t *got)
{
	struct pollfd pfd = { .fd = v->fd, .events = POLLIN };
	int64_t left;
	ssize_t n;

	*got = 0;
	while (*got < len) {
		left = deadline - vu_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		n = poll(&pfd, 1, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (!n)
			return -ETIMEDOUT;
		n = recv(v->fd, (char *)buf + *got, len - *got, 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -errno;
		if (!n)
			return -ECONNRESET;
		*got += n;
	}
	return 0;
}

/*
 * Receives the reply to req, whose payload must be size bytes (any size up
 * to that when exact is false: *size gets it).
 */
static int vu_recv(struct vmm *v, uint32_t req, void *payload, uint32_t *size,
		   bool exact)
{
	int64_t deadline = vu_now_ms() + VU_TIMEOUT_MS;
	struct vu_hdr h;
	size_t got;
	int ret;

	ret = vu_read(v, &h, sizeof(h), deadline, &got);
	if (ret == -ETIMEDOUT)
		return vu_broken(v, req, ret, "no reply within %d ms",
				 VU_TIMEOUT_MS);
	if (ret == -ECONNRESET && !got)
		return vu_broken(v, req, ret,
				 "the back-end closed the connection");
	if (ret == -ECONNRESET)
		return vu_broken(v, req, -EPROTO,
				 "reply header cut short: %zu of %zu bytes",
				 got, sizeof(h));
	if (ret)
		return vu_broken(v, req, ret, "%s", strerror(-ret));
	if (h.request != req)
		return vu_broken(v, req, -EPROTO,
				 "reply to request %#x (%s), not a vhost-user back-end?",
				 h.request, vu_name(h.request));
	if ((h.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION ||
	    !(h.flags & VHOST_USER_REPLY))
		return vu_broken(v, req, -EPROTO,
				 "reply flags %#x: not a version 1 reply",
				 h.flags);
	if (exact ? h.size != *size : h.size > *size)
		return vu_broken(v, req, -EPROTO,
				 "reply of %u bytes, %s%u expected", h.size,
				 exact ? "" : "at most ", *size);
	ret = vu_read(v, payload, h.size, deadline, &got);
	if (ret == -ECONNRESET)
		return vu_broken(v, req, -EPROTO,
				 "reply cut short: %zu of %u bytes", got,
				 h.size);
	if (ret)
		return vu_broken(v, req, ret, "reply: %s", strerror(-ret));
	*size = h.size;
	return 0;
}

/*
 * One request and its answer: reply, of reply_size bytes, for the requests
 * that have one; otherwise the back-end's acknowledgment when REPLY_ACK
 * is negotiated (nonzero: it refused the request, -EIO).
 */
static int vu_call(struct vmm *v, uint32_t req, const void *payload,
		   uint32_t size, const int *fds, unsigned int nfds,
		   void *reply, uint32_t reply_size)
{
	bool ack = !reply &&
		   v->protocol_features & (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK);
	uint64_t status;
	uint32_t len = sizeof(status);
	int ret;

	ret = vu_send(v, req, ack ? VHOST_USER_NEED_REPLY : 0, payload, size,
		      fds, nfds);
	if (ret)
		return ret;
	if (reply)
		return vu_recv(v, req, reply, &reply_size, true);
	if (!ack)
		return 0;
	ret = vu_recv(v, req, &status, &len, true);
	if (ret)
		return ret;
	if (status) {
		fprintf(stderr, "# vhost-user %s: %s: refused (%#llx)\n",
			v->path, vu_name(req), (unsigned long long)status);
		return -EIO;
	}
	return 0;
}

static int vu_get_u64(struct vmm *v, uint32_t req, uint64_t *val)
{
	return vu_call(v, req, NULL, 0, NULL, 0, val, sizeof(*val));
}

static int vu_set_u64(struct vmm *v, uint32_t req, uint64_t val)
{
	return vu_call(v, req, &val, sizeof(val), NULL, 0, NULL, 0);
}

/*
 * Connects, then what a front-end asks first: the features, the protocol
 * features the VMM can use, and the number of queues.
 */
static int vu_connect(struct vmm *v)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t features, protocol, nq = 1;
	int ret;

	v->protocol_features = 0;
	v->started = false;
	memcpy(sa.sun_path, v->path, sizeof(v->path));
	v->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (v->fd < 0) {
		ret = -errno;
		fprintf(stderr, "# vhost-user: socket: %s\n", strerror(-ret));
		return ret;
	}
	if (connect(v->fd, (struct sockaddr *)&sa, sizeof(sa))) {
		ret = -errno;
		fprintf(stderr, "# vhost-user %s: connect: %s%s\n", v->path,
			strerror(-ret), ret == -ECONNREFUSED ||
			ret == -ENOENT ? " (no back-end listens there)" : "");
		close(v->fd);
		v->fd = -1;
		return ret;
	}

	ret = vu_get_u64(v, VHOST_USER_GET_FEATURES, &features);
	if (ret)
		return ret;
	if (features & (1ULL << VHOST_USER_F_PROTOCOL_FEATURES)) {
		ret = vu_get_u64(v, VHOST_USER_GET_PROTOCOL_FEATURES,
				 &protocol);
		if (ret)
			return ret;
		protocol &= VU_PROTOCOL_FEATURES;
		ret = vu_set_u64(v, VHOST_USER_SET_PROTOCOL_FEATURES,
				 protocol);
		if (ret)
			return ret;
		v->protocol_features = protocol;
	}
	if (v->protocol_features & (1ULL << VHOST_USER_PROTOCOL_F_MQ)) {
		ret = vu_get_u64(v, VHOST_USER_GET_QUEUE_NUM, &nq);
		if (ret)
			return ret;
		if (!nq || nq > VU_MAX_QUEUES)
			return vu_broken(v, VHOST_USER_GET_QUEUE_NUM, -EPROTO,
					 "%llu queues", (unsigned long long)nq);
	}
	v->nvqs = nq;
	return 0;
}

/* Stops the rings it started (GET_VRING_BASE), then hangs up. */
static void vu_disconnect(struct vmm *v)
{
	unsigned int q, num;

	for (q = 0; v->started && v->fd >= 0 && q < v->nq; q++)
		vmm_vring_base(v, q, &num);
	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
	v->started = false;
	v->protocol_features = 0;
}

static int vu_set_owner(struct vmm *v)
{
	return vu_call(v, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0, NULL, 0);
}

static int vu_get_features(struct vmm *v, uint64_t *features)
{
	return vu_get_u64(v, VHOST_USER_GET_FEATURES, features);
}

static int vu_set_features(struct vmm *v, uint64_t features)
{
	return vu_set_u64(v, VHOST_USER_SET_FEATURES, features);
}

static int vu_set_mem_table(struct vmm *v, unsigned int nregions)
{
	struct vu_memory mem = { .nregions = nregions };
	unsigned int i;

	if (nregions > NREGIONS)
		return -EINVAL;
	for (i = 0; i < nregions; i++) {
		mem.regions[i].guest_phys_addr = region_gpa[i];
		mem.regions[i].memory_size = REGION_SIZE;
		mem.regions[i].userspace_addr = (uintptr_t)v->mem[i];
		mem.regions[i].mmap_offset = 0;
	}
	return vu_call(v, VHOST_USER_SET_MEM_TABLE, &mem,
		       offsetof(struct vu_memory, regions[nregions]),
		       v->memfd, nregions, NULL, 0);
}

static int vu_vring_state(struct vmm *v, unsigned long req,
			  struct vhost_vring_state *s)
{
	struct vhost_vring_state r = { 0 };
	int ret;

	switch (req) {
	case VHOST_SET_VRING_NUM:
		return vu_call(v, VHOST_USER_SET_VRING_NUM, s, sizeof(*s),
			       NULL, 0, NULL, 0);
	case VHOST_SET_VRING_BASE:
		return vu_call(v, VHOST_USER_SET_VRING_BASE, s, sizeof(*s),
			       NULL, 0, NULL, 0);
	case VHOST_GET_VRING_BASE:
		ret = vu_call(v, VHOST_USER_GET_VRING_BASE, s, sizeof(*s),
			      NULL, 0, &r, sizeof(r));
		if (ret)
			return ret;
		if (r.index != s->index)
			return vu_broken(v, VHOST_USER_GET_VRING_BASE, -EPROTO,
					 "the base of ring %u, %u asked for",
					 r.index, s->index);
		s->num = r.num;
		return 0;
	}
	return -EOPNOTSUPP;
}

static int vu_vring_addr(struct vmm *v, const struct vhost_vring_addr *a)
{
	return vu_call(v, VHOST_USER_SET_VRING_ADDR, a, sizeof(*a), NULL, 0,
		       NULL, 0);
}

static int vu_vring_file(struct vmm *v, unsigned long req,
			 const struct vhost_vring_file *f)
{
	uint64_t u = f->index;
	uint32_t msg;

	switch (req) {
	case VHOST_SET_VRING_KICK:
		msg = VHOST_USER_SET_VRING_KICK;
		break;
	case VHOST_SET_VRING_CALL:
		msg = VHOST_USER_SET_VRING_CALL;
		break;
	case VHOST_SET_VRING_ERR:
		msg = VHOST_USER_SET_VRING_ERR;
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (f->fd < 0)
		u |= VHOST_USER_VRING_NOFD;
	return vu_call(v, msg, &u, sizeof(u), &f->fd, f->fd < 0 ? 0 : 1,
		       NULL, 0);
}

static int vu_vring_enable(struct vmm *v, unsigned int q, bool enable)
{
	struct vhost_vring_state s = { .index = q, .num = enable };

	/* Without protocol features a ring is enabled when it starts. */
	if (!(v->features & (1ULL << VHOST_USER_F_PROTOCOL_FEATURES)))
		return 0;
	return vu_call(v, VHOST_USER_SET_VRING_ENABLE, &s, sizeof(s), NULL, 0,
		       NULL, 0);
}

static int vu_get_config(struct vmm *v, void *buf, uint32_t len)
{
	struct vu_config c = { .offset = 0, .size = len };
	uint32_t size = VU_CONFIG_HDR + len;
	int ret;

	if (!(v->protocol_features & (1ULL << VHOST_USER_PROTOCOL_F_CONFIG)))
		return -EOPNOTSUPP;
	if (len > sizeof(c.region))
		return -EINVAL;
	ret = vu_send(v, VHOST_USER_GET_CONFIG, 0, &c, size, NULL, 0);
	if (ret)
		return ret;
	ret = vu_recv(v, VHOST_USER_GET_CONFIG, &c, &size, false);
	if (ret)
		return ret;
	/* A reply without payload is the back-end's error. */
	if (!size) {
		fprintf(stderr, "# vhost-user %s: GET_CONFIG: %s %u bytes\n",
			v->path, "the back-end failed to read", len);
		return -EIO;
	}
	if (size != VU_CONFIG_HDR + len || c.offset || c.size != len)
		return vu_broken(v, VHOST_USER_GET_CONFIG, -EPROTO,
				 "reply of %u bytes for %u at %u, %u asked for",
				 size, c.size, c.offset, len);
	memcpy(buf, c.region, len);
	return 0;
}

const struct vmm_transport vmm_vhost_user = {
	.name = "vhost-user",
	.features = 1ULL << VHOST_USER_F_PROTOCOL_FEATURES,
	.connect = vu_connect,
	.disconnect = vu_disconnect,
	.set_owner = vu_set_owner,
	.get_features = vu_get_features,
	.set_features = vu_set_features,
	.set_mem_table = vu_set_mem_table,
	.vring_state = vu_vring_state,
	.vring_addr = vu_vring_addr,
	.vring_file = vu_vring_file,
	.vring_enable = vu_vring_enable,
	.get_config = vu_get_config,
};
