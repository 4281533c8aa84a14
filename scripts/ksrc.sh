#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Take from Debian's kernel source tarball the few files that the build, the
# selftests and the lint need, into $VBP_KSRC_DIR (once per source version),
# and link the kselftest framework next to tools/testing/selftests/vhost_blk
# so that it builds and runs as it would in a kernel tree.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

paths=(
	drivers/vhost/vhost.h
	include/uapi
	scripts/checkpatch.pl
	scripts/spelling.txt
	scripts/const_structs.checkpatch
	scripts/kernel-doc
	tools/testing/selftests/lib.mk
	tools/testing/selftests/kselftest.h
	tools/testing/selftests/kselftest_harness.h
	tools/testing/selftests/kselftest
)
links=(kselftest.h kselftest_harness.h kselftest)

[ -r "$VBP_SRC_TARBALL" ] ||
	{ echo "ksrc: $VBP_SRC_TARBALL missing (make deps)" >&2; exit 1; }
version=$(vbp_ksrc_version)
stamp="$VBP_KSRC_DIR/.version"
want="$version ${paths[*]}"

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	echo "  KSRC    $VBP_KSRC_PKG $version -> $VBP_KSRC_DIR"
	rm -rf "$VBP_KSRC_DIR"
	mkdir -p "$VBP_KSRC_DIR"
	tar -xJf "$VBP_SRC_TARBALL" -C "$VBP_KSRC_DIR" --strip-components=1 \
		"${paths[@]/#/$VBP_SRC_TOP/}"
	# User-space copies of the vhost uapi headers, newer than the C
	# library's, for the selftests; the rest comes from /usr/include.
	mkdir -p "$VBP_KSRC_DIR/usr/include/linux"
	for h in vhost.h vhost_types.h; do
		sed -E -e 's/([[:space:](])__user[[:space:]]/\1/g' \
			-e 's@^#include <linux/compiler(|_types).h>@@' \
			-e 's@#(ifndef|define|endif[[:space:]]*/[*])[[:space:]]*_UAPI@#\1 @' \
			"$VBP_KSRC_DIR/include/uapi/linux/$h" \
			> "$VBP_KSRC_DIR/usr/include/linux/$h"
	done
	echo "$want" > "$stamp"
fi

# lib.mk finds the framework and the tests' settings relative to its own
# real path: copy it, link the rest (not in a copy without the selftests,
# such as DKMS's).
[ -d "$VBP_ROOT/tools/testing/selftests" ] || exit 0
cp "$VBP_KSRC_DIR/tools/testing/selftests/lib.mk" "$VBP_ROOT/tools/testing/selftests/lib.mk"
for l in "${links[@]}"; do
	ln -sfn "$VBP_KSRC_DIR/tools/testing/selftests/$l" \
		"$VBP_ROOT/tools/testing/selftests/$l"
done
