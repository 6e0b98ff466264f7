# Sourced by .ci/run (as root): a docker daemon of its own for the container tests, and llem's test image in it
# (docker/test/build.sh) and in podman (docker/test/podman.sh's storage). Its data root lives in a cache folder
# that outlives the run, so the base image and the dependency layer are built once per machine; the daemon is
# stopped when .ci/run exits, whatever happens. Exports DOCKER_HOST and LLEM_REQUIRE_CONTAINERS=1.
ci_dir=${LLEM_CI_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llem-ci}
mkdir -p "$ci_dir/docker"
ci_exec=$(mktemp -d /tmp/llem-ci-docker.XXXXXX)     # short: containerd's sockets live under it
ci_sock="$ci_dir/docker.sock"
export DOCKER_HOST="unix://$ci_sock" LLEM_REQUIRE_CONTAINERS=1

stop_ci_docker() {
    if [ -n "${ci_dockerd:-}" ] && kill -0 "$ci_dockerd" 2>/dev/null; then
        # every container of this daemon is the run's: remove them, then stop the daemon (SIGKILL after 20 s)
        ids=$(timeout 20 docker ps -aq 2>/dev/null || true)
        [ -z "$ids" ] || timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
        kill "$ci_dockerd" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$ci_dockerd" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$ci_dockerd" 2>/dev/null || true
    fi
    # what dockerd left mounted under its exec root (its network namespace), deepest first
    awk -v root="$ci_exec" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$ci_exec" "$ci_sock" 2>/dev/null || true
}
trap stop_ci_docker EXIT

if command -v dockerd >/dev/null; then
    rm -f "$ci_sock"
    dockerd --data-root "$ci_dir/docker" --exec-root "$ci_exec" --pidfile "$ci_exec/dockerd.pid" \
        -H "$DOCKER_HOST" --iptables=false --ip-forward=false --bridge=none \
        --containerd-namespace llem-ci --containerd-plugins-namespace llem-ci-plugins \
        > "$ci_dir/dockerd.log" 2>&1 &
    ci_dockerd=$!
    for _ in $(seq 60); do                          # 30 s at most
        timeout 5 docker version >/dev/null 2>&1 && break
        kill -0 "$ci_dockerd" 2>/dev/null || break
        sleep 0.5
    done
    if timeout 5 docker version >/dev/null 2>&1; then
        timeout 1800 docker/test/build.sh || echo "the test image was not built: the container tests will fail" >&2
        if command -v podman >/dev/null; then
            timeout 900 env LLEM_CONTAINER_CLI=podman docker/test/build.sh \
                || echo "the test image was not built in podman: its container tests will fail" >&2
        fi
    else
        echo "dockerd did not answer within 30 s (log: $ci_dir/dockerd.log): the container tests will fail" >&2
        tail -5 "$ci_dir/dockerd.log" >&2 || true
    fi
else
    echo "no dockerd: the container tests will fail" >&2
fi
