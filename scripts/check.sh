#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Run the project's tests in virtual machines and print TAP; the last line is
#   check: N passed, M failed, K skipped
# and the exit status is non-zero when anything failed.  Run "make" first
# (make check does).
#
# CHECK_SUITES selects suites (default: all):
#   vmrun      the VM runner's own tests: exit status, timeout, kernel
#              reports and a dead guest fail a run, a guest may reboot
#   kselftest  tools/testing/selftests/vhost_blk in one VM
#   e2e        end to end, nested: QEMU with vhost-blk-pci (built by
#              qemu/build.sh, cached) in a VM, its guest on vhost_blk_poll;
#              then, in another VM, live migration of such a guest
#   dkms       dkms.conf: dkms add, build, install and remove of both
#              modules for the target kernel, in a tree of its own; the
#              installed modules load in a VM
#   plugin     the instruction counter of make bench-host: the TCG plugin
#              counts a loop's instructions and a run of system calls
#              between two marks exactly
#   intree     make patches: the series applies to Debian's kernel source
#              and both drivers build in that tree (W=1, no warning);
#              the extracted tree is kept in $VBP_CACHE/intree; the
#              series is the same with each awk installed (gawk, mawk,
#              original-awk, busybox)
# CHECK_TESTS narrows the kselftest suite to the named tests (e.g.
# "virtio_blk_poll.sh"; default: all of TEST_PROGS).  CHECK_TIME_SCALE
# (default 1; make check KERNEL=debug sets its own) multiplies the
# kselftest VM's and each test's time limit, for kernels that run that
# much slower.  The fuzzer's knobs (VBP_FUZZ_REQUESTS, VBP_RACE_ROUNDS,
# VBP_FUZZ_SEED) reach the kselftest VM when set.

set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

suites=${CHECK_SUITES:-vmrun plugin kselftest e2e dkms intree}
scale=${CHECK_TIME_SCALE:-1}
[[ "$scale" =~ ^[1-9][0-9]*$ ]] ||
	{ echo "check: CHECK_TIME_SCALE wants a positive whole number, not '$scale'" >&2; exit 2; }
st=$VBP_ROOT/tools/testing/selftests/vhost_blk
vmrun=$st/vm-run
out=$VBP_BUILD/check
rm -rf "$out"
mkdir -p "$out"

pass=0
fail=0
skip=0
num=0

# tap STATUS DESCRIPTION [DIRECTIVE]: one result line; it is counted in the
# summary unless nocount=1.
nocount=0
tap() {
	num=$((num + 1))
	case "$1:${3:-}" in
	ok:SKIP*)
		[ $nocount = 1 ] || skip=$((skip + 1))
		echo "ok $num $2 # ${3}" ;;
	ok:*)
		[ $nocount = 1 ] || pass=$((pass + 1))
		echo "ok $num $2" ;;
	*)
		[ $nocount = 1 ] || fail=$((fail + 1))
		echo "not ok $num $2${3:+ # $3}" ;;
	esac
}

elapsed() {
	echo "# $1: $(( $(date +%s) - $2 )) s"
}

# not_ok_with_log LOG NAME REASON: a failed result, after the last lines of
# the log that tell why.
not_ok_with_log() {
	sed 's/^/# /' "$1" | tail -n 20
	tap "not ok" "$2" "$3"
}

# expect_run NAME WANT_RC OUTPUT_REGEX VM-RUN-ARGS...: run vm-run and check
# its exit status and (if the regex is not empty) its combined output.
expect_run() {
	local name=$1 want=$2 re=$3 log rc

	shift 3
	log="$out/vmrun-$((num + 1)).log"
	"$vmrun" "$@" > "$log" 2>&1
	rc=$?
	if [ "$rc" != "$want" ]; then
		not_ok_with_log "$log" "$name" "exit $rc, expected $want"
	elif [ -n "$re" ] && ! grep -Eq "$re" "$log"; then
		not_ok_with_log "$log" "$name" "output lacks /$re/"
	else
		tap ok "$name"
	fi
}

suite_vmrun() {
	local t0 d here_now=$PWD

	t0=$(date +%s)
	# A command in a directory below one that is tmpfs in the guest (as a
	# checkout in /root is) finds its directory and files there, and /tmp
	# stays writable.
	d=$(mktemp -d /tmp/vbp-vmrun-path.XXXXXX)
	echo here-42 > "$d/data"
	# shellcheck disable=SC2016 # expanded by the guest's shell
	echo 'echo writable > /tmp/w && echo "probe: $(cat data) $(cat /tmp/w)"' > "$d/probe.sh"
	cd "$d" || return
	expect_run "vm-run: a command whose directory and script are in /tmp runs there" 0 \
		'^probe: here-42 writable$' -t 300 -- bash "$d/probe.sh"
	cd "$here_now" || return
	rm -rf "$d"
	# shellcheck disable=SC2016 # expanded by the guest's shell
	expect_run "vm-run: a clean command passes and its output is shown (-p: a kernel parameter)" 0 \
		'^marker-42$' -t 300 -p vbp.marker=42 -- \
		bash -c 'grep -qw vbp.marker=42 /proc/cmdline && echo marker-$((6 * 7))'
	expect_run "vm-run: the command's exit status is returned" 3 '' \
		-t 300 -- bash -c 'exit 3'
	expect_run "vm-run: a kernel warning fails the run" 125 \
		'kernel reports.*|WARNING:' \
		-t 300 -- insmod "$st/test_modules/test_vmrun_warn.ko"
	expect_run "vm-run: a guest that dies fails the run" 125 \
		'guest died' -t 300 -- bash -c 'echo c > /proc/sysrq-trigger'
	expect_run "vm-run: a guest that fails before its command is booted once more" \
		125 'booting it once more' -t 300 -a -device -a no-such-device -- true
	expect_run "vm-run: the timeout stops a hung command" 124 'timeout' \
		-t 40 -- sleep 100000
	# shellcheck disable=SC2016 # expanded by the guest's shell
	expect_run "vm-run -r: the guest reboots and runs the command again" 0 \
		'^boot-2$' -r -t 400 -- bash -c '[ "$VMRUN_BOOT" = 1 ] &&
			{ echo b > /proc/sysrq-trigger; sleep 100; }; echo boot-$VMRUN_BOOT'
	elapsed "vm-run suite" "$t0"
}

# Count a kselftest run's results: the subtests of each test where it
# reports them, the test itself otherwise; a test that failed with all its
# subtests passing counts as one more failure.
count_kselftest() {
	awk '
	/^# (not )?ok [0-9]+ / {
		if ($0 ~ /^# ok .*# *SKIP/) bs++
		else if ($2 == "ok") bp++
		else bf++
		next
	}
	/^(not )?ok [0-9]+ selftests: / {
		if (bp + bf + bs == 0) {
			if ($0 ~ /^ok .*# *SKIP/) s++
			else if ($1 == "ok") p++
			else f++
		} else {
			p += bp; f += bf; s += bs
			if ($1 == "not" && bf == 0)
				f++
		}
		bp = bf = bs = 0
	}
	END { print p + 0, f + 0, s + 0 }
	' "$1"
}

suite_kselftest() {
	local t0 tests imgs disks dargs log rc counts p f s limit

	t0=$(date +%s)
	mapfile -t tests < <(make -s --no-print-directory -C "$st" emit_tests 2>/dev/null |
			     sed -n 's/^[^:]*://p')
	if [ ${#tests[@]} = 0 ]; then
		tap "not ok" "kselftest: list of tests" "make emit_tests listed none"
		return
	fi
	if [ -n "${CHECK_TESTS:-}" ]; then
		for p in $CHECK_TESTS; do
			[[ " ${tests[*]} " = *" $p "* ]] ||
				{ tap "not ok" "kselftest: $p" "no such test (CHECK_TESTS)"; return; }
		done
		read -ra tests <<< "$CHECK_TESTS"
	fi
	# Stock virtio-blk disks for virtio_blk_poll, raw files: two queues,
	# one queue (resizable), read-only with 4 KiB blocks, and one that can
	# be unplugged.
	imgs=$(mktemp -d /dev/shm/vbp-check.XXXXXX)
	disks=() dargs=()
	vdisk() {
		local serial=$1 size=$2 q=$3 flags=$4 opts=$5 dev=$6 img

		img=$imgs/$serial.img
		truncate -s "$size" "$img"
		dargs+=(-a -drive -a "file=$img,if=none,id=$serial,format=raw,aio=threads,discard=unmap$opts"
			-a -device -a "virtio-blk-pci,drive=$serial,id=$serial-pci,num-queues=$q,serial=$serial$dev")
		disks+=("$serial:$(( $(stat -c %s "$img") / 512 )):$q$flags")
	}
	vdisk vbp-q2 64M 2 "" "" ""
	vdisk vbp-q1 64M 1 :resize "" ""
	vdisk vbp-ro 16M 1 :ro:4k ",readonly=on" \
		",logical_block_size=4096,physical_block_size=4096,min_io_size=8192,opt_io_size=65536"
	dargs+=(-a -device -a "pcie-root-port,id=vbp-rp,chassis=1")
	vdisk vbp-hot 64M 1 :hot "" ",bus=vbp-rp"
	for v in VBP_FUZZ_REQUESTS VBP_RACE_ROUNDS VBP_FUZZ_SEED; do
		[ -z "${!v:-}" ] || dargs+=(-e "$v=${!v}")
	done
	# Each test's limit, from the kselftest settings, times the scale.
	limit=$(sed -n 's/^timeout=//p' "$st/settings")
	[ "$scale" = 1 ] ||
		dargs+=(-e "kselftest_override_timeout=$((limit * scale))")
	log=$out/kselftest.log
	# SLUB debugging (slub_debug=U) makes slab counts exact for
	# module_load.sh's leak checks and records who allocated each object.
	run_logged "$log" "$vmrun" -c 2 -m 2G -t $((2400 * scale)) -Q "${dargs[@]}" \
		-p slub_debug=U \
		-e "VBP_TEST_DISKS=${disks[*]}" \
		-e "BASE_DIR=$VBP_ROOT/tools/testing/selftests" \
		-- bash -c '. ../kselftest/runner.sh && run_many "$@"' run \
		"${tests[@]/#/./}"
	rc=$?
	rm -rf "$imgs"
	# One line per test here; the summary counts their subtests.
	tap_lines "$log" kselftest
	counts=$(count_kselftest "$log")
	read -r p f s <<< "$counts"
	pass=$((pass + p))
	fail=$((fail + f))
	skip=$((skip + s))
	if [ "$rc" = 124 ] || [ "$rc" = 125 ]; then
		tap "not ok" "kselftest: the VM ran to the end with a clean kernel log" "vm-run exit $rc"
	fi
	elapsed "kselftest suite" "$t0"
}

# run_logged LOG COMMAND...: run the command in the selftests' directory,
# its output into LOG and shown as it comes as comments of this TAP stream;
# returns the command's exit status.
run_logged() {
	local log=$1 pid

	shift
	(cd "$st" && "$@") > "$log" 2>&1 &
	pid=$!
	tail -n +1 -F --pid=$pid "$log" 2>/dev/null | sed -u 's/^/# /'
	wait $pid
}

# tap_lines LOG NAME: the top-level results of the TAP in LOG as lines
# "NAME: <test>" of this stream, not counted (the callers count subtests).
tap_lines() {
	local line

	nocount=1
	while read -r line; do
		if [[ "$line" =~ ^(not\ )?ok\ [0-9]+\ (selftests:\ )?([^#]*)(#\ *(.*))?$ ]]; then
			if [ -z "${BASH_REMATCH[1]}" ]; then
				tap ok "$2: ${BASH_REMATCH[3]% }" "${BASH_REMATCH[5]}"
			else
				tap "not ok" "$2: ${BASH_REMATCH[3]% }" "${BASH_REMATCH[5]}"
			fi
		elif [[ "$line" =~ ^1\.\.0\ \#\ *(SKIP.*) ]]; then
			tap ok "$2" "${BASH_REMATCH[1]}"
		fi
	done < "$1"
	nocount=0
}

# The failed tests of every log with the lines before them, repeated at the
# end of the output, where a shortened copy of it still shows them.
failures() {
	local log

	for log in "$out"/*.log; do
		grep -Eq '^(# )*not ok ' "$log" || continue
		echo "# failures in $log:"
		grep -E -B 12 '^(# )*not ok ' "$log" | tail -n 80 | sed 's/^/#   /'
	done
}

# count_ktap LOG: "passed failed skipped" of the KTAP lines of one test.
count_ktap() {
	awk '
	/^ok [0-9]+ .*# *SKIP/ { s++; next }
	/^ok [0-9]+ / { p++; next }
	/^not ok [0-9]+ / { f++ }
	/^1\.\.0 # *SKIP/ { s++ }
	END { print p + 0, f + 0, s + 0 }
	' "$1"
}

# e2e_vm NAME TEST: TEST in a VM with the QEMU of suite_e2e, its log in
# $out/NAME.log and its results counted as lines "NAME: <test>".
e2e_vm() {
	local log=$out/$1.log rc p f s

	run_logged "$log" "$vmrun" -c 2 -m 3G -t 2400 -e "VBP_QEMU=$qemu" -- "$2"
	rc=$?
	read -r p f s <<< "$(count_ktap "$log")"
	# One line per test of the nested run; those are counted below.
	tap_lines "$log" "$1"
	pass=$((pass + p))
	fail=$((fail + f))
	skip=$((skip + s))
	if [ "$rc" != 0 ] && [ "$rc" != 4 ]; then
		tap "not ok" "$1: the VM ran to the end with a clean kernel log" "vm-run exit $rc"
	fi
}

suite_e2e() {
	local t0 qemu

	t0=$(date +%s)
	echo "# e2e: QEMU with vhost-blk-pci (qemu/build.sh; minutes when not cached)"
	# Its phases and steps as comments, all it says in the log.
	if ! "$VBP_ROOT/qemu/build.sh" 2>&1 >"$out/qemu.path" |
		tee "$out/qemu-build.log" | sed -un 's/^qemu: /# &/p'; then
		not_ok_with_log "$out/qemu-build.log" \
			"e2e: QEMU with vhost-blk-pci builds" "make qemu failed"
		return
	fi
	qemu=$(cat "$out/qemu.path")
	tap ok "e2e: QEMU with vhost-blk-pci builds ($(( $(date +%s) - t0 )) s)"
	e2e_vm e2e ./vhost_blk_e2e.sh
	elapsed "e2e suite" "$t0"

	# Live migration, in a VM of its own: two QEMUs and their guest.
	t0=$(date +%s)
	e2e_vm e2e-migrate ./vhost_blk_migrate.sh
	elapsed "e2e migration" "$t0"
}

# step NAME LOG COMMAND...: one result line for a command, its output in
# LOG (the last lines shown on failure); returns its status.
step() {
	local name=$1 log=$2 rc

	shift 2
	"$@" > "$log" 2>&1
	rc=$?
	if [ "$rc" = 0 ]; then
		tap ok "$name"
	else
		not_ok_with_log "$log" "$name" "exit $rc, see $log"
	fi
	return $rc
}

suite_dkms() {
	local t0 root mods m f ko=() vm

	t0=$(date +%s)
	root=$out/dkms
	mods=$root/modules/$KVER/updates/dkms
	step "dkms: add, build and install for $KVER" "$out/dkms-install.log" \
		env DKMS_ROOT="$root" "$here/dkms.sh" install || return
	# Each module, installed and built for that kernel.
	for m in vhost_blk_poll virtio_blk_poll; do
		f=$(find "$mods" -name "$m.ko*" 2>/dev/null | head -n 1)
		[ -n "$f" ] &&
			[ "$(modinfo -F vermagic "$f" | cut -d' ' -f1)" = "$KVER" ] &&
			ko+=("$f")
	done
	if [ ${#ko[@]} = 2 ]; then
		tap ok "dkms: both modules installed for $KVER"
		vm="modprobe vhost && insmod ${ko[0]} && [ -c /dev/vhost-blk-poll ] &&
		    insmod ${ko[1]} && grep -q '^virtio_blk_poll ' /proc/modules &&
		    rmmod virtio_blk_poll vhost_blk_poll"
		expect_run "dkms: the installed modules load and unload" 0 '' \
			-t 300 -- bash -c "$vm"
	else
		find "$root/modules" 2>&1 | sed 's/^/# /'
		tap "not ok" "dkms: both modules installed for $KVER" "not in $mods"
	fi
	step "dkms: remove" "$out/dkms-remove.log" \
		env DKMS_ROOT="$root" "$here/dkms.sh" remove
	elapsed "dkms suite" "$t0"
}

# same_with_every_awk AWK...: make patches run with each AWK as "awk" (a
# PATH of its own) gives the series make patches gave in $VBP_BUILD.
same_with_every_awk() {
	local a d

	for a in "$@"; do
		d=$out/awk-$a
		mkdir -p "$d/bin"
		if [ "$a" = busybox ]; then
			printf '#!/bin/sh\nexec busybox awk "$@"\n' > "$d/bin/awk"
			chmod +x "$d/bin/awk"
		else
			ln -s "$(command -v "$a")" "$d/bin/awk"
		fi
		echo "== $a"
		PATH=$d/bin:$PATH VBP_BUILD=$d "$here/patches.sh" || return
		diff -r -x build.log "$VBP_BUILD/patches" "$d/patches" || return
	done
}

suite_intree() {
	local t0 log=$out/intree.log a awks=()

	t0=$(date +%s)
	echo "# intree: make patches, applied to $VBP_KSRC_PKG in $VBP_CACHE/intree (extracted once)"
	"$here/patches.sh" --check "$VBP_CACHE/intree" > "$log" 2>&1
	if grep -q '^patches: the series applies' "$log"; then
		tap ok "intree: make patches: the series applies to $VBP_KSRC_PKG"
	else
		not_ok_with_log "$log" "intree: make patches: the series applies to $VBP_KSRC_PKG" "see $log"
		return
	fi
	for a in gawk mawk original-awk busybox; do
		command -v "$a" >/dev/null && awks+=("$a")
	done
	step "intree: make patches gives the same series with each awk (${awks[*]})" \
		"$out/intree-awk.log" same_with_every_awk "${awks[@]}"
	if grep -q '^patches: built in' "$log"; then
		tap ok "intree: both drivers build in the tree (W=1, no warning)"
	else
		not_ok_with_log "$log" "intree: both drivers build in the tree (W=1, no warning)" "see $log"
	fi
	elapsed "intree suite" "$t0"
}

# plugin_windows FILE: for each pair of marks, the marking vCPU's counts
# between them: user kernel syscalls irets.
plugin_windows() {
	python3 - "$1" <<'EOF2'
import json, sys
m = [json.loads(line) for line in open(sys.argv[1])]
for a, b in zip(m[::2], m[1::2]):
    c = a["vcpu"]
    print(*[y - x for x, y in zip(a["cpus"][c], b["cpus"][c])])
EOF2
}

suite_plugin() {
	local t0 so probe res log w u k sc

	t0=$(date +%s)
	if [ "$("$vmrun" -A)" != tcg ]; then
		tap ok "plugin: the TCG plugin counts between marks" \
			"SKIP VMs run under KVM here: TCG plugins count emulated guests only"
		return
	fi
	so=$VBP_BUILD/bench/insn_count.so
	probe=$st/insn_count_probe
	res=$out/plugin.jsonl
	log=$out/plugin.log
	step "plugin: the TCG plugin builds against QEMU's plugin API" "$log" \
		make -C "$VBP_ROOT" --no-print-directory "$so" || return
	: > "$res"
	expect_run "plugin: a VM runs with the plugin loaded" 0 \
		'^insn_count_probe: loops 1000000 syscalls 1000$' -c 2 -t 300 \
		-a -plugin -a "$so,out=$res" -- taskset -c 1 "$probe"
	mapfile -t w < <(plugin_windows "$res")
	# The loop: 2 instructions a round, the end mark, the loop's setup.
	if [ "${#w[@]}" = 2 ] && read -r u k _ _ <<< "${w[0]}" &&
	   (( u >= 2000001 && u <= 2000008 )); then
		tap ok "plugin: a loop's user-mode instructions are counted exactly ($u, kernel $k)"
	else
		tap "not ok" "plugin: a loop's user-mode instructions are counted exactly" \
			"windows: ${w[*]:-none}"
	fi
	if [ "${#w[@]}" = 2 ] && read -r _ _ sc _ <<< "${w[1]}" && [ "$sc" = 1000 ]; then
		tap ok "plugin: 1000 system calls are counted as 1000"
	else
		tap "not ok" "plugin: 1000 system calls are counted as 1000" \
			"windows: ${w[*]:-none}"
	fi
	elapsed "plugin suite" "$t0"
}

# The e2e suite's QEMU builds from the start, in the background at the
# lowest priority: the CPU time the suites before it leave idle serves it,
# and suite_e2e's own call waits for it (qemu/build.sh's lock).
qemu_bg=
if [[ " $suites " == *" e2e "* ]]; then
	nice -n 19 "$VBP_ROOT/qemu/build.sh" >/dev/null 2>"$out/qemu-background.log" &
	qemu_bg=$!
fi

echo "TAP version 13"
for s in $suites; do
	case "$s" in
	vmrun) suite_vmrun ;;
	plugin) suite_plugin ;;
	kselftest) suite_kselftest ;;
	e2e) suite_e2e ;;
	dkms) suite_dkms ;;
	intree) suite_intree ;;
	*) tap "not ok" "suite $s" "no such suite" ;;
	esac
done
[ -z "$qemu_bg" ] || wait "$qemu_bg"
[ "$fail" = 0 ] || failures
echo "1..$num"
echo "check: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
