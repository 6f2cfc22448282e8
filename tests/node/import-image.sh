#!/usr/bin/env bash
# Imports an OCI archive (e.g. from `buildah commit ... oci-archive:FILE:NAME`, whose index.json names the image)
# into the node's containerd, in the k8s.io namespace the CRI uses, so pods can run it with
# imagePullPolicy: Never (nothing can be pulled on this machine).
#   import-image.sh NODEDIR archive.tar      prints the image name(s) imported
set -euo pipefail
nd=${1:?usage: import-image.sh NODEDIR archive.tar}
archive=${2:?usage: import-image.sh NODEDIR archive.tar}
# up.sh imports the pause image before it writes NODEDIR/env; the socket is always NODEDIR/containerd.sock.
ctr -a "$nd/containerd.sock" -n k8s.io images import "$archive" | sed -n 's/^unpacking \([^ ]*\) .*/\1/p'
