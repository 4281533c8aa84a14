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
links=(lib.mk kselftest.h kselftest_harness.h kselftest)

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
	echo "$want" > "$stamp"
fi

for l in "${links[@]}"; do
	ln -sfn "$VBP_KSRC_DIR/tools/testing/selftests/$l" \
		"$VBP_ROOT/tools/testing/selftests/$l"
done
