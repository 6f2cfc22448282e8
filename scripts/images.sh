#!/usr/bin/env bash
# Builds Sonde's image and the test workload images on this machine, offline: no registry, no pulls, no Docker
# daemon. The Sonde image has the Containerfile's layout (binaries in /usr/local/bin, user 65532, entrypoint
# sonde-operator, the same OCI labels) made from `cargo build --release` binaries plus exactly the shared
# libraries ldd lists. Each image is built FROM scratch with buildah (vfs storage under $SONDE_CACHE, reused
# between runs) and written as an OCI archive whose index names it, so `ctr -n k8s.io images import` registers
# these references:
#   sonde.oci.tar    localhost/sonde/sonde:<version>-dev and ghcr.io/sonde-dev/sonde:<version> (the chart default)
#   busybox.oci.tar  localhost/sonde/busybox:<busybox version>: busybox-static, every applet a symlink in /bin
#                    (sh, sleep, nc for TCP sinks and sources, wget, ping; busybox ping takes -i 0.002)
#   ping.oci.tar     localhost/sonde/ping:<busybox version>: the busybox files (ping is busybox's) and
#                    /usr/local/bin/isc-socket (tests/images/isc-socket.c): field case A's two processes
#   pause.oci.tar    localhost/sonde/pause:3.10: tests/images/pause.c, for containerd's sandbox_image
# plus images.env (shell assignments naming them and their archives). An image whose inputs (its files, config
# and this script) did not change since the last run is not rebuilt; its stamp is <name>.stamp.
#
# Usage: scripts/images.sh [sonde|busybox|ping|pause ...]   (default: all). Needs root (buildah, chroot check).
# Prints the output directory on stdout; progress goes to stderr.
# Env: SONDE_IMAGES_DIR (default target/images), SONDE_CACHE (default ~/.cache/sonde; buildah storage in
#      $SONDE_CACHE/buildah), SONDE_IMAGES_NO_CARGO=1 packs target/release as it is, SOURCE_DATE_EPOCH (image
#      creation time; default the HEAD commit's time, so equal inputs give equal digests).
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
repo=$PWD
out=${SONDE_IMAGES_DIR:-$repo/target/images}
store=${SONDE_CACHE:-$HOME/.cache/sonde}/buildah
release=${CARGO_TARGET_DIR:-$repo/target}/release
all=(sonde busybox ping pause)
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${all[@]}")

log() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }
for w in "${want[@]}"; do [[ " ${all[*]} " == *" $w "* ]] || die "unknown image '$w' (one of: ${all[*]})"; done

# buildah, busybox-static and iputils-ping come from scripts/deps.sh; gcc and libc6-dev from the Rust toolchain's
# prerequisites.
for c in buildah /bin/busybox ping gcc; do command -v "$c" >/dev/null || { ./scripts/deps.sh; break; }; done

# One version everywhere: the workspace, the chart's appVersion (the chart's default image tag) and the
# Containerfile's VERSION.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/sonde/Chart.yaml)
cf_version=$(sed -n 's/^ARG VERSION=//p' Containerfile)
[ -n "$version" ] && [ "$version" = "$app_version" ] && [ "$version" = "$cf_version" ] ||
  die "versions disagree: Cargo.toml '$version', helm/sonde/Chart.yaml appVersion '$app_version', Containerfile '$cf_version'"
release_repo=$(sed -n 's/^  repository: *//p' helm/sonde/values.yaml | head -n1)
[ -n "$release_repo" ] || die "no image.repository in helm/sonde/values.yaml"
upstream() { dpkg-query -W -f='${Version}' "$1" | sed -e 's/^[0-9]*://' -e 's/-[^-]*$//'; }
busybox_tag=$(upstream busybox-static)

sonde_refs=("localhost/sonde/sonde:$version-dev" "$release_repo:$version")
busybox_refs=("localhost/sonde/busybox:$busybox_tag")
ping_refs=("localhost/sonde/ping:$busybox_tag")
pause_refs=("localhost/sonde/pause:3.10")

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ "$revision" = unknown ] || git diff --quiet HEAD -- 2>/dev/null || revision+="-dirty"
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

mkdir -p "$out" "$store"
work=$out/.work
exec 9>"$out/.lock"
flock 9
bah() { buildah --root "$store/root" --runroot "$store/runroot" --storage-driver vfs "$@"; }
# A signature policy of our own, so pushing to a local OCI layout works without /etc/containers/policy.json.
policy=$store/policy.json
[ -f "$policy" ] || echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
# Working containers left by an interrupted run (this storage is ours alone).
bah rm --all >/dev/null 2>&1 || true

# The shared libraries ldd lists for the given ELF files, copied (symlinks resolved) to the paths ldd shows,
# so the dynamic loader finds them through its built-in default directories.
copy_libs() {
  local root=$1 lib
  shift
  if ldd "$@" | grep 'not found'; then die "unresolved shared libraries in $*"; fi
  for lib in $(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(0x/ {print $1}' | sort -u); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

# passwd/group for the users the images run as (65532 is distroless' nonroot) and an nsswitch.conf that reads
# /etc/hosts before DNS, like distroless.
etc_files() {
  local root=$1
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

busybox_files() {
  local root=$1 applet
  install -D -m 0755 /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  etc_files "$root"
}

# A static C program from tests/images, built into $work/bin.
static_c() {
  mkdir -p "$work/bin"
  local src=tests/images/$1.c bin=$work/bin/$1
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    gcc -static -O2 -s -Wall -Wextra -Werror -o "$bin.tmp" "$src"
    mv "$bin.tmp" "$bin"
  fi
  echo "$bin"
}

# Stages the files and image config of image $1 into $root and the array cfg.
stage() {
  local name=$1 b
  case $name in
    sonde)
      for b in sonde-operator sonde-agent sonde-results sonde; do
        [ -x "$release/$b" ] || die "$release/$b missing (cargo build --release)"
        # Stripped in the image only: target/release keeps its symbols for profiling Sonde itself.
        install -D -s -m 0755 "$release/$b" "$root/usr/local/bin/$b"
      done
      copy_libs "$root" "$root"/usr/local/bin/*
      etc_files "$root"
      mkdir -p "$root/home"
      install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
      cfg=(--entrypoint '["/usr/local/bin/sonde-operator"]' --user 65532:65532
        --env PATH=/usr/local/bin:/usr/bin:/bin
        --label org.opencontainers.image.title=sonde
        --label "org.opencontainers.image.description=Declarative eBPF probes for Kubernetes: sonde-operator, sonde-agent, sonde-results and the sonde CLI"
        --label "org.opencontainers.image.version=$version"
        --label "org.opencontainers.image.revision=$revision"
        --label org.opencontainers.image.source=https://github.com/sonde-dev/sonde
        --label org.opencontainers.image.url=https://github.com/sonde-dev/sonde
        --label org.opencontainers.image.licenses=Apache-2.0)
      home=/home/nonroot
      ;;
    busybox | ping)
      busybox_files "$root"
      # workload gives every probe something to see, under a comm the test picks (tests/images/workload.c).
      [ "$name" = ping ] || install -D -m 0755 "$(static_c workload)" "$root/usr/local/bin/workload"
      if [ "$name" = ping ]; then
        # ping is busybox's applet (a symlink named ping, so the task's comm is `ping`): iputils ping busy-waits
        # between packets at intervals under 10 ms (a whole core for `-i 0.002`), busybox's sleeps.
        install -D -m 0755 "$(static_c isc-socket)" "$root/usr/local/bin/isc-socket"
      fi
      # ping as PID 1 ignores SIGTERM but stops on SIGINT (so does isc-socket): the CRI sends the
      # image's stop signal, so a ping pod stops at once instead of after its grace period.
      [ "$name" = busybox ] || cfg=(--stop-signal SIGINT)
      cfg+=(--cmd '["sh"]' --env PATH=/usr/local/bin:/usr/bin:/bin
        --label "org.opencontainers.image.title=sonde test workload: $name"
        --label "org.opencontainers.image.source=https://github.com/sonde-dev/sonde")
      home=""
      ;;
    pause)
      install -D -m 0755 "$(static_c pause)" "$root/pause"
      cfg=(--entrypoint '["/pause"]' --user 65535:65535
        --label "org.opencontainers.image.title=sonde test pause (sandbox) image"
        --label "org.opencontainers.image.source=https://github.com/sonde-dev/sonde")
      home=""
      ;;
  esac
}

# The staged tree's content (names, modes, link targets, bytes) with the config and this script: the stamp.
inputs_hash() {
  {
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf - .
    printf '%s\n' "$@" "${cfg[@]}" "$home" "$epoch"
    cat "$self"
  } | sha256sum | cut -d' ' -f1
}

build() {
  local name=$1 refs_var="$1_refs[@]"
  local refs=("${!refs_var}") root=$work/$1/rootfs archive=$out/$1.oci.tar cfg=() home="" hash c r
  rm -rf "${work:?}/$name"
  mkdir -p "$root"
  stage "$name"
  # Every binary must start from the staged tree alone (proves the library list complete).
  if [ "$name" = sonde ] && [ "$(id -u)" = 0 ]; then
    for b in sonde-operator sonde-agent sonde-results sonde; do
      chroot "$root" "/usr/local/bin/$b" --help >/dev/null || die "$b does not start in the image's root filesystem"
    done
  fi
  hash=$(inputs_hash "${refs[@]}")
  if [ -f "$archive" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$hash" ]; then
    log "$name: unchanged (${refs[*]})"
    rm -rf "${work:?}/$name"
    return
  fi
  log "$name: building ${refs[*]}"
  c=$(bah from --name "sonde-images-$name" scratch)
  bah copy --quiet "$c" "$root/" / >/dev/null
  if [ -n "$home" ]; then # the user's home, theirs alone: $work/$name/home/<user> lands in /home/<user>
    mkdir -p "$work/$name/home/$(basename "$home")"
    chmod 0700 "$work/$name/home/$(basename "$home")"
    bah copy --quiet --chown 65532:65532 "$c" "$work/$name/home/" "$(dirname "$home")/" >/dev/null
  fi
  bah config "${cfg[@]}" --created-by "scripts/images.sh" "$c"
  bah commit --quiet --rm --timestamp "$epoch" "$c" "${refs[0]}" >/dev/null
  for r in "${refs[@]:1}"; do bah tag "${refs[0]}" "$r"; done
  # An OCI layout with one index entry per reference (org.opencontainers.image.ref.name = the full reference,
  # which ctr import uses as the image name), tarred as an OCI archive.
  rm -rf "$work/$name/layout"
  for r in "${refs[@]}"; do
    bah push --quiet --signature-policy "$policy" --format oci "$r" "oci:$work/$name/layout:$r" >/dev/null
  done
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@"$epoch" -C "$work/$name/layout" \
    -cf "$archive.tmp" oci-layout index.json blobs
  mv "$archive.tmp" "$archive"
  echo "$hash" >"$out/$name.stamp"
  rm -rf "${work:?}/$name"
  log "$name: $archive ($(du -h "$archive" | cut -f1))"
}

if [[ " ${want[*]} " == *" sonde "* ]] && [ "${SONDE_IMAGES_NO_CARGO:-0}" != 1 ]; then
  cargo build --release --locked -p sonde-operator -p sonde-agent -p sonde-results -p sonde-cli
fi
for name in "${want[@]}"; do build "$name"; done
# Images that lost their names to a rebuild.
bah rmi --prune >/dev/null 2>&1 || true

cat >"$out/images.env" <<EOF
# Written by scripts/images.sh: the images its archives hold. Import with: ctr -n k8s.io images import <archive>
SONDE_IMAGE_REPOSITORY=localhost/sonde/sonde
SONDE_IMAGE_TAG=$version-dev
SONDE_IMAGE=${sonde_refs[0]}
SONDE_RELEASE_IMAGE=${sonde_refs[1]}
SONDE_BUSYBOX_IMAGE=${busybox_refs[0]}
SONDE_PING_IMAGE=${ping_refs[0]}
SONDE_PAUSE_IMAGE=${pause_refs[0]}
SONDE_IMAGE_ARCHIVES="$(for n in "${all[@]}"; do [ ! -f "$out/$n.oci.tar" ] || printf '%s ' "$out/$n.oci.tar"; done | sed 's/ $//')"
EOF
echo "$out"
