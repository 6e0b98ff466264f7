#!/usr/bin/env bash
# podman with storage of its own for llem's test image, and settings that work where docker's do:
#   eval "$(docker/test/podman.sh env)"   # export CONTAINERS_CONF and CONTAINERS_STORAGE_CONF for plain `podman`
#   docker/test/podman.sh load            # docker's llem-test-cpu:latest into that storage (skipped when current)
# The configuration (written on every call) lives in ${LLEM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llem-images}/podman:
#   - storage: its own graph root there (the system's podman storage is left alone);
#   - runtime runc, cgroup manager cgroupfs, events and logs to files (no systemd or journald needed);
#   - --init runs tini or docker-init when catatonit (podman's own) is missing;
#   - explicit ulimits: rootful podman otherwise asks runc for limits above the caller's, which a host
#     without CAP_SYS_RESOURCE refuses ("error setting rlimit type 6/7: operation not permitted").
set -euo pipefail

cache=${LLEM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llem-images}
dir="$cache/podman"
image=llem-test-cpu:latest
mkdir -p "$dir/root"

init=
for candidate in /usr/libexec/podman/catatonit /usr/bin/catatonit /usr/bin/tini-static /usr/bin/tini \
                 /usr/bin/docker-init /usr/sbin/docker-init; do
    if [ -x "$candidate" ]; then init=$candidate; break; fi
done
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
# runc sets the limits from a process capped at 32768 processes on some hosts; asking for more fails
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; then nofile=1048576; fi

cat > "$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/root"
runroot = "${XDG_RUNTIME_DIR:-/tmp}/llem-podman-$(id -u)"
EOF
cat > "$dir/containers.conf" <<EOF
[containers]
# the host's network only: podman's default bridge takes a private address range this machine must not use
netns = "host"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
${init:+init_path = \"$init\"}

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"

case "${1:-env}" in
env)
    echo "export CONTAINERS_CONF='$CONTAINERS_CONF' CONTAINERS_STORAGE_CONF='$CONTAINERS_STORAGE_CONF'"
    ;;
load)
    want=$(docker image inspect --format '{{.Id}}' "$image")
    have=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if [ "sha256:$have" = "$want" ] || [ "$have" = "$want" ]; then
        echo "podman: $image present (${want:7:12})"
    else
        start=$(date +%s.%N)
        docker save "$image" | podman load -q >/dev/null
        podman image prune -f >/dev/null 2>&1 || true
        awk -v s="$start" -v e="$(date +%s.%N)" -v i="$image" 'BEGIN { printf "podman: load %s: %.1f s\n", i, e - s }'
    fi
    ;;
*)
    echo "usage: $0 env|load" >&2; exit 2
    ;;
esac
