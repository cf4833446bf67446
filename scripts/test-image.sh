#!/usr/bin/env bash
# Builds the Docker image the compute tests run, `caravel-busybox:latest`, without a registry:
# Debian's busybox-static (one static binary) + a symlink per applet, imported with `docker import`.
# Does nothing when the image is already there (pass --force to rebuild).
#
#   scripts/test-image.sh [--force]        CARAVEL_TEST_IMAGE overrides the image name.
set -euo pipefail

IMAGE="${CARAVEL_TEST_IMAGE:-caravel-busybox:latest}"
if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "test image $IMAGE is present" >&2
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt's download sandbox user (_apt) must be able to write here.
chmod 0777 "$work"
cd "$work"

# `apt-get download` needs no root, only package lists; refresh them once if it cannot find the package.
if ! apt-get download busybox-static >/dev/null 2>&1; then
  as_root apt-get update -qq
  apt-get download busybox-static >/dev/null
fi
dpkg-deb -x busybox-static_*.deb pkg
[ -x pkg/bin/busybox ] || { echo "busybox-static did not contain /bin/busybox" >&2; exit 1; }

mkdir -p rootfs/bin rootfs/sbin rootfs/usr/bin rootfs/usr/sbin rootfs/etc rootfs/tmp rootfs/root \
  rootfs/proc rootfs/sys rootfs/dev
chmod 1777 rootfs/tmp
cp pkg/bin/busybox rootfs/bin/busybox

# Every applet the binary knows (it is static, so it runs here), else a fixed list the tests use.
applets="$(rootfs/bin/busybox --list 2>/dev/null || true)"
if [ -z "$applets" ]; then
  applets="sh ash echo cat tr sort uniq head tail wc sleep ls mkdir rm cp mv env pwd true false
    test [ printf grep sed awk touch id dd ping wget nslookup ip ifconfig hostname date expr seq yes"
fi
for a in $applets; do
  [ "$a" = busybox ] || [ -e "rootfs/bin/$a" ] || ln -s busybox "rootfs/bin/$a"
done

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >rootfs/etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' >rootfs/etc/group

tar -C rootfs --numeric-owner --owner=0 --group=0 -cf rootfs.tar .
docker import \
  --change 'CMD ["/bin/sh"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  rootfs.tar "$IMAGE" >/dev/null
echo "built test image $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)" >&2
