#!/usr/bin/env bash
# Builds the images the compose cluster runs, on a Docker engine without any registry:
#
#   caravel:latest             FROM scratch: the caravel binary, the shared libraries it links,
#                              Debian's busybox-static (for the one-shot init steps), CA roots,
#                              a `caravel` user (uid 10001).
#   caravel-prometheus:latest  FROM scratch: Debian's /usr/bin/prometheus and the libraries it links.
#
#   deploy/compose/build.sh                     # cargo build --release, then the images
#   deploy/compose/build.sh --binary PATH       # use an already built caravel binary (CI: debug)
#
# Needs: docker, cargo (unless --binary), Debian's prometheus and busybox-static packages (apt-get
# installs them when missing, with sudo when not root).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

docker info >/dev/null 2>&1 || { echo "build.sh needs a running Docker engine ('docker info' failed)" >&2; exit 1; }

need=()
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || need+=(busybox-static)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]} (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -z "$binary" ]; then
  say "building caravel (release)"
  "$repo/scripts/prereqs.sh"
  (cd "$repo" && cargo build --release --locked --bin caravel)
  target="${CARGO_TARGET_DIR:-$repo/target}"
  binary="$target/release/caravel"
fi
[ -x "$binary" ] || { echo "no caravel binary at $binary" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Copies a dynamically linked program and every library it needs (from ldd) into a rootfs.
copy_with_libs() {
  local prog="$1" root="$2" dest="$3"
  install -D -m 0755 "$prog" "$root$dest"
  ldd "$prog" | awk '/=>/ {print $3} /^\s*\/lib/ {print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] || continue
    install -D -m 0644 "$lib" "$root$lib"
  done
}

# --- caravel:latest -------------------------------------------------------------------------
root="$work/caravel"
mkdir -p "$root"/{bin,etc,tmp,data,certs,secrets,shared,usr/local/bin,etc/ssl/certs,lib64}
chmod 1777 "$root/tmp"
copy_with_libs "$binary" "$root" /usr/local/bin/caravel
# The loader may live behind /lib64 on Debian: make both paths resolve in the image.
for l in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
  [ -e "$l" ] && install -D -m 0755 "$(readlink -f "$l")" "$root$l"
done
install -m 0755 /bin/busybox "$root/bin/busybox"
for a in sh cat cp chmod chown mkdir ls test stat sleep echo tr head od grep sed wc mv rm id wget; do
  ln -sf busybox "$root/bin/$a"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/bin/sh\ncaravel:x:10001:10001:caravel:/data:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\ncaravel:x:10001:\n' >"$root/etc/group"
chown -R 10001:10001 "$root/data" "$root/certs" "$root/shared"
version="$("$binary" --version | awk '{print $2}')"
tar -C "$root" --numeric-owner -cf "$work/caravel.tar" .
docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/caravel"]' \
  --change 'USER 10001' \
  --change 'WORKDIR /data' \
  --change 'ENV PATH=/usr/local/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change "LABEL org.opencontainers.image.title=caravel org.opencontainers.image.version=$version" \
  "$work/caravel.tar" caravel:latest >/dev/null
docker tag caravel:latest "caravel:$version"
say "built caravel:latest (caravel $version, $(docker image inspect -f '{{.Size}}' caravel:latest) bytes)"

# --- caravel-prometheus:latest --------------------------------------------------------------
root="$work/prometheus"
mkdir -p "$root"/{etc/prometheus,prometheus,tmp}
chmod 1777 "$root/tmp"
copy_with_libs /usr/bin/prometheus "$root" /bin/prometheus
for l in /lib64/ld-linux-x86-64.so.2; do
  [ -e "$l" ] && install -D -m 0755 "$(readlink -f "$l")" "$root$l"
done
printf 'root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
chown 65534:65534 "$root/prometheus"
tar -C "$root" --numeric-owner -cf "$work/prometheus.tar" .
docker import \
  --change 'ENTRYPOINT ["/bin/prometheus"]' \
  --change 'USER 65534' \
  --change 'WORKDIR /prometheus' \
  "$work/prometheus.tar" caravel-prometheus:latest >/dev/null
say "built caravel-prometheus:latest ($(/usr/bin/prometheus --version 2>&1 | head -1))"
