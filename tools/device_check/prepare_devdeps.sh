#!/usr/bin/env bash
# Prepare .devdeps/: the OpenSSL headers (and a libcrypto to link against) for the device
# machine, whose image may lack libssl-dev while our build needs OpenSSL::Crypto. Run it once,
# here, from the repository root of the checkout the device tool sends; then name `.devdeps` in
# the device call's `carry`. tools/device_check.sh uses it only when the machine has no
# /usr/include/openssl/hmac.h (or no libcrypto.so*).
#
# It downloads two Debian packages with apt-get (libssl-dev and the libssl3 it matches), unpacks
# them with dpkg -x into .devdeps/, merges the multiarch configuration headers into
# .devdeps/usr/include/openssl (so one include directory suffices), drops static libraries and
# documentation (about 8 MiB remain). .gitignore lists /.devdeps/, so git never tracks it and the
# device tool sends it only when `carry` names it.
set -euo pipefail

root=$(git rev-parse --show-toplevel)
cd "$root"
dest=.devdeps
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# libssl3 is libssl3t64 on newer Debian/Ubuntu: take whichever libssl-dev depends on.
runtime=$(apt-cache depends libssl-dev | awk '/Depends: libssl3/ {print $2; exit}')
runtime=${runtime:-libssl3}
(cd "$tmp" && apt-get download "libssl-dev:$arch" "$runtime:$arch")

rm -rf "$dest"
mkdir -p "$dest"
for deb in "$tmp"/*.deb; do
  dpkg -x "$deb" "$dest"
done
if [ -d "$dest/usr/include/$multiarch/openssl" ]; then
  cp -n "$dest/usr/include/$multiarch/openssl/"* "$dest/usr/include/openssl/"
fi
rm -rf "$dest/usr/share" "$dest/usr/lib/$multiarch/pkgconfig"
find "$dest" -name '*.a' -delete

# The dev symlink libcrypto.so -> libcrypto.so.3 must resolve inside .devdeps.
lib="$dest/usr/lib/$multiarch"
if [ ! -e "$lib/libcrypto.so" ] && [ -e "$lib/libcrypto.so.3" ]; then
  ln -sf libcrypto.so.3 "$lib/libcrypto.so"
fi

git check-ignore -q "$dest" || echo "warning: git does not ignore $dest/ (add /$dest/ to .gitignore)" >&2

test -f "$dest/usr/include/openssl/hmac.h"
test -f "$dest/usr/include/openssl/configuration.h"
echo "prepared $dest ($(du -sh "$dest" | cut -f1)): headers $dest/usr/include, libraries $(cd "$lib" && echo libcrypto.so*)"
