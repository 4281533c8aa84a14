#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Live migration of a guest with vhost-blk-pci, nested: this VM (L1) loads
# vhost_blk_poll and runs two QEMUs with vhost-blk-pci ($VBP_QEMU,
# qemu/build.sh) on the same backend, a raw file.  The guest (L2,
# vhost_blk_migrate_guest.sh) writes and verifies its disk with fio without
# pause; it is migrated from one QEMU to a fresh one three times, once with
# each driver: virtio_blk_poll in poll mode, in hybrid mode, and the stock
# virtio_blk.  After each switch-over the guest's writes and verifying
# reads must go on on the destination, and at the end of each phase fio
# must have found every block it wrote, across the switch-over.  Then a
# migration to a QEMU whose backend has another size must fail with the
# reason, and the source go on running.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

vbp_require_qemu

W=/tmp/mig
IMG=$W/data.img
BIG=$W/big.img
CTL=$W/ctl.img
INITRD=$W/initrd.cpio
QMP=$VBP_SELFTEST_DIR/vbp_qmp.py
# The guest runs this VM's kernel.
KERNEL=/boot/vmlinuz-$(uname -r)
MODES="poll hybrid stock"
# Guest lines wait up to this long (s): its boot, or a fio run, in an
# emulated guest inside an emulated machine.
BOOT_S=1200
RUN_S=600
# The poll budget of the vring: 1 s (vhost_blk_e2e.sh says why).
POLL_US=1000000

# The initramfs of L2: static busybox, fio with its libraries, the two
# drivers, and the guest script as /init.  Not compressed: the emulated
# guest would spend long inflating it.
make_initrd() {
	local t=$W/root f lib

	rm -rf "$t"
	mkdir -p "$t"/{bin,usr/bin,dev,proc,sys,tmp,modules} || return 1
	cp /bin/busybox "$t/bin/busybox" || return 1
	cp "$(command -v fio)" "$t/usr/bin/fio" || return 1
	while read -r lib; do
		mkdir -p "$t${lib%/*}" && cp -L "$lib" "$t$lib" || return 1
	done < <(ldd "$(command -v fio)" | grep -o '/[^ ]*')
	f=$(modinfo -n virtio_blk) || return 1
	case $f in
	*.xz) xz -dc "$f" > "$t/modules/virtio_blk.ko" ;;
	*.zst) zstd -qdc "$f" > "$t/modules/virtio_blk.ko" ;;
	*) cp "$f" "$t/modules/virtio_blk.ko" ;;
	esac || return 1
	cp "$VIRTIO_BLK_POLL_KO" "$t/modules/virtio_blk_poll.ko" || return 1
	cp "$VBP_SELFTEST_DIR/vhost_blk_migrate_guest.sh" "$t/init" || return 1
	chmod 0755 "$t/init"
	(cd "$t" && find . | cpio -o -H newc --quiet) > "$INITRD"
}

ACCEL=$("$VBP_SELFTEST_DIR/vm-run" --accel)
CPU=max
[ "$ACCEL" = kvm ] && CPU=host

# start NAME BACKEND [QEMU-ARG...]: a QEMU for the guest, in the
# background; its console in $W/NAME.out, its messages in $W/NAME.err, its
# monitor on $W/NAME.qmp.  The same machine on every side of a migration.
start() {
	local name=$1 backend=$2

	shift 2
	rm -f "$W/$name".{out,err,qmp}
	"$QEMU" -machine "q35,accel=$ACCEL" -cpu "$CPU" -smp 1 -m 512M \
		-nodefaults -display none -vga none -no-reboot \
		-kernel "$KERNEL" -initrd "$INITRD" \
		-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init" \
		-serial "file:$W/$name.out" \
		-qmp "unix:$W/$name.qmp,server=on,wait=off" \
		-device "vhost-blk-pci,id=disk0,backend=$backend,serial=mig-data,num-queues=1,poll-us=$POLL_US" \
		-device "vhost-blk-pci,id=ctl0,backend=$CTL,serial=mig-ctl" \
		"$@" </dev/null >/dev/null 2>"$W/$name.err" &
	eval "pid_$name=$!"
	vbp_until 60 test -S "$W/$name.qmp"
}

qmp() {
	local name=$1

	shift
	"$QMP" "$W/$name.qmp" "$@"
}

# alive NAME: NAME's QEMU runs, and its guest has not ended.
alive() {
	local pid

	pid=$(eval "echo \${pid_$1:-}")
	if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
		echo "# QEMU $1 is gone"
		return 1
	fi
	! grep -q '^mig: end: ' "$W/$1.out" 2>/dev/null
}

# wait_line NAME REGEX SECONDS: a line of the guest's (after "mig: ") on
# NAME's console; the last such line in $line.
wait_line() {
	local end=$((SECONDS + $3))

	while [ $SECONDS -lt $end ]; do
		line=$(sed -n 's/^mig: //p' "$W/$1.out" 2>/dev/null |
		       tr -d '\r' | grep -E "^$2\$" | tail -n 1)
		[ -n "$line" ] && return 0
		alive "$1" || return 1
		sleep 1
	done
	return 1
}

# last_io NAME PHASE: the writes and reads of the guest's last report on
# NAME's console in $io_w and $io_r (0 0 without one).
last_io() {
	local l

	l=$(sed -n "s/^mig: phase $2 io \([0-9]*\) writes \([0-9]*\) reads.*/\1 \2/p" \
	    "$W/$1.out" 2>/dev/null | tail -n 1)
	read -r io_w io_r <<< "${l:-0 0}"
}

# wait_io NAME PHASE WRITES READS SECONDS: until the guest reports more
# writes and more reads than these on NAME's console.
wait_io() {
	local end=$((SECONDS + $5))

	while [ $SECONDS -lt $end ]; do
		last_io "$1" "$2"
		[ "$io_w" -gt "$3" ] && [ "$io_r" -gt "$4" ] && return 0
		alive "$1" || return 1
		sleep 1
	done
	return 1
}

stop() {
	local pid

	pid=$(eval "echo \${pid_$1:-}")
	[ -n "$pid" ] || return 0
	qmp "$1" quit >/dev/null 2>&1 || kill "$pid" 2>/dev/null
	timeout 60 tail --pid="$pid" -f /dev/null || kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	eval "pid_$1="
}

cleanup() {
	stop a
	stop b
	stop c
}
trap cleanup EXIT

# Lines of the guest's that are no test result: shown as comments.
show() {
	echo "# the end of L2's console on QEMU $1:"
	tail -n 40 "$W/$1.out" | tr -d '\r' | sed 's/^/# /'
	sed 's/^/# QEMU: /' "$W/$1.err"
}

# migrate SRC DST: migrate with the return path (the source learns of a
# failure on the destination); the status in $mig_status, the figures in
# $mig_info.
migrate() {
	local src=$1 dst=$2 caps='{"capabilities": [{"capability": "return-path", "state": true}]}'

	mig_status=error mig_info=
	qmp "$dst" migrate-set-capabilities "$caps" >/dev/null || return 1
	qmp "$dst" migrate-incoming "{\"uri\": \"unix:$W/$dst.mig\"}" >/dev/null || return 1
	qmp "$src" migrate-set-capabilities "$caps" >/dev/null || return 1
	qmp "$src" migrate "{\"uri\": \"unix:$W/$dst.mig\"}" >/dev/null || return 1
	{
		read -r mig_status
		read -r mig_info
	} < <(qmp "$src" --wait-migration 600)
	[ "$mig_status" = completed ]
}

# fio_verified NAME PHASE DESCRIPTION: the test that the phase's fio, told
# to end, found every block it wrote.
fio_verified() {
	if wait_line "$1" "phase $2 fio (ok|FAILED).*" "$RUN_S" &&
	   [[ "$line" == *" fio ok"* ]]; then
		ktap_test_pass "$3"
	else
		show "$1"
		ktap_test_fail "$3"
	fi
}

status_of() {
	qmp "$1" query-status | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'
}

ktap_print_header
# Boot; for each mode: migration, I/O goes on, every block verified; the
# error case (2); the guest's end, its kernel log.
ktap_set_plan $((1 + 3 * 3 + 2 + 2))

mkdir -p "$W"
vbp_load_host || exit "$KSFT_FAIL"
vbp_wait_for "$VBP_DEV" || exit "$KSFT_FAIL"
truncate -s 64M "$IMG" && truncate -s 128M "$BIG" && truncate -s 1M "$CTL" ||
	exit "$KSFT_FAIL"
if ! make_initrd; then
	echo "# cannot make the initramfs of the guest"
	exit "$KSFT_FAIL"
fi
echo "# L2: $(du -h "$INITRD" | cut -f1) initramfs, $ACCEL"

t0=$SECONDS
start a "$IMG"
if wait_io a 1 0 0 "$BOOT_S"; then
	ktap_test_pass "L2 boots and writes and verifies its disk ($((SECONDS - t0)) s)"
else
	show a
	ktap_test_fail "L2 boots and writes and verifies its disk"
	exit "$KSFT_FAIL"
fi

src=a
phase=0
for mode in $MODES; do
	phase=$((phase + 1))
	dst=b
	[ "$src" = b ] && dst=a
	start "$dst" "$IMG" -incoming defer
	if migrate "$src" "$dst" && [ "$(status_of "$src")" = postmigrate ]; then
		ktap_test_pass "migration with $mode: $mig_info"
	else
		show "$src"
		show "$dst"
		ktap_test_fail "migration with $mode: $mig_status"
		exit "$KSFT_FAIL"
	fi
	# What the guest had done when the source stopped.
	last_io "$src" "$phase"
	w0=$io_w r0=$io_r
	stop "$src"
	if wait_io "$dst" "$phase" "$w0" "$r0" "$RUN_S"; then
		ktap_test_pass "with $mode, the guest's writes and verifying reads go on after the switch-over ($w0 -> $io_w writes, $r0 -> $io_r reads)"
	else
		show "$dst"
		ktap_test_fail "with $mode, the guest's writes and verifying reads go on after the switch-over"
		exit "$KSFT_FAIL"
	fi
	src=$dst
	[ "$phase" = 3 ] && break
	echo "phase $((phase + 1))" | dd of="$CTL" bs=512 count=1 conv=notrunc,sync status=none
	fio_verified "$src" "$phase" "with $mode, fio verified every block it wrote, across the switch-over"
	if ! wait_io "$src" "$((phase + 1))" 0 0 "$RUN_S"; then
		show "$src"
		ktap_test_fail "the guest goes on to phase $((phase + 1))"
		exit "$KSFT_FAIL"
	fi
done

# A destination whose backend is twice the size.
start c "$BIG" -incoming defer
migrate "$src" c
err=$(grep -m 1 'vhost-blk:' "$W/c.err")
echo "# destination: $err"
stop c
if [ "$mig_status" = failed ] &&
   grep -q "vhost-blk: backend '$BIG' has 262144 sectors of 512 bytes, the source's had 131072 of 512" <<< "$err"; then
	ktap_test_pass "a migration to another backend size fails with the reason"
else
	show c
	ktap_test_fail "a migration to another backend size fails with the reason ($mig_status)"
fi
last_io "$src" "$phase"
w0=$io_w r0=$io_r
if [ "$(status_of "$src")" = running ] &&
   wait_io "$src" "$phase" "$w0" "$r0" "$RUN_S"; then
	ktap_test_pass "the source goes on running: $w0 -> $io_w writes, $r0 -> $io_r reads"
else
	show "$src"
	ktap_test_fail "the source goes on running"
fi

echo stop | dd of="$CTL" bs=512 count=1 conv=notrunc,sync status=none
fio_verified "$src" "$phase" "with $mode, fio verified every block it wrote, across the switch-over and the failed migration"
pid=$(eval "echo \$pid_$src")
if timeout "$RUN_S" tail --pid="$pid" -f /dev/null && wait "$pid" &&
   grep -q '^mig: end: stopped' "$W/$src.out"; then
	ktap_test_pass "the guest stops and powers off"
else
	show "$src"
	ktap_test_fail "the guest stops and powers off"
fi
eval "pid_$src="
if cat "$W"/{a,b}.out 2>/dev/null | grep -E -q 'WARNING:|BUG:|Oops|Call Trace|I/O error|FAILED'; then
	show a
	show b
	ktap_test_fail "L2's kernel log is clean and no fio failed"
else
	ktap_test_pass "L2's kernel log is clean and no fio failed"
fi
vbp_unload_host
ktap_finished
