#!/usr/bin/env bash
# Build llem's CPU test image, llem-test-cpu:latest, without a registry:
#   1. base  llem-test-base:bookworm  Debian bookworm minbase + python3 from mmdebstrap, imported (once);
#   2. deps  llem-test-deps:<key>     llem's dependencies (extras pytorch, serving-pytorch; torch CPU) in a
#                                     virtual environment, from wheels prepared on this host (once per set);
#   3. llem  llem-test-cpu:latest     llem's own wheel on top, labelled llem.version and llem.source
#                                     (every run: seconds).
# Each step is skipped when its result exists. Usage, from anywhere:
#   docker/test/build.sh                        # with docker (DOCKER_HOST is honoured)
#   LLEM_CONTAINER_CLI=podman docker/test/build.sh
# Environment: PYTHON (a Python 3.11 with pip; default python3), LLEM_IMAGE_CACHE (rootfs tarball and wheels;
# default ${XDG_CACHE_HOME:-$HOME/.cache}/llem-images), LLEM_ROOTFS_TAR (an existing mmdebstrap tarball to
# import instead of making one), LLEM_TORCH_INDEX (where torch's CPU build is found when pip's own indexes
# lack it; default https://download.pytorch.org/whl/cpu).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/docker/test"
cli=${LLEM_CONTAINER_CLI:-docker}
case "$cli" in
docker) ;;
podman) [ -n "${CONTAINERS_STORAGE_CONF:-}" ] || eval "$("$here/podman.sh" env)" ;;  # its own storage
*) echo "build.sh: LLEM_CONTAINER_CLI=$cli: docker or podman" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
cache=${LLEM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llem-images}
torch_version=2.13.0
torch_index=${LLEM_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
extras=(pytorch serving-pytorch)
base=llem-test-base:bookworm
image=llem-test-cpu:latest
mkdir -p "$cache"

now() { date +%s.%N; }
took() { awk -v s="$2" -v e="$(now)" -v what="$1" 'BEGIN { printf "%s: %.1f s\n", what, e - s }'; }

"$python" - <<'PY' || { echo "build.sh: PYTHON=$python must be Python 3.11 (bookworm's), for cp311 wheels" >&2; exit 2; }
import sys
sys.exit(sys.version_info[:2] != (3, 11))
PY

# 1. base image --------------------------------------------------------------------------------------
t=$(now)
if "$cli" image inspect "$base" >/dev/null 2>&1; then
    echo "base: $base present"
else
    tar=${LLEM_ROOTFS_TAR:-$cache/rootfs-bookworm.tar}
    if [ ! -s "$tar" ]; then
        command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap is needed to make $base" >&2; exit 2; }
        mmdebstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,procps \
            bookworm "${tar%.tar}.part.tar"
        mv "${tar%.tar}.part.tar" "$tar"
        took "mmdebstrap" "$t"
    fi
    t=$(now)
    "$cli" import --change 'CMD ["/bin/bash"]' "$tar" "$base" >/dev/null 2>&1
    took "import $base" "$t"
fi

# 2. dependency wheels, then the dependency image ------------------------------------------------------
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
{ "$python" "$here/requirements.py" "$root/pyproject.toml" "${extras[@]}"; echo "torch==$torch_version+cpu"; } > "$reqs"
# the same key in docker and podman: podman takes docker's image rather than building its own
key=$(cat "$reqs" "$here/Dockerfile.deps" | sha256sum | cut -c1-12)
deps=llem-test-deps:$key
ctx="$cache/deps-$key"
if "$cli" image inspect "$deps" >/dev/null 2>&1; then
    echo "deps: $deps present"
elif [ "$cli" = podman ] && docker image inspect "$deps" >/dev/null 2>&1; then
    t=$(now)
    docker save "$deps" | podman load -q >/dev/null
    took "load $deps from docker" "$t"
else
    t=$(now)
    if [ ! -e "$ctx/wheels/.complete" ]; then
        rm -rf "$ctx" && mkdir -p "$ctx/wheels"
        pip=("$python" -m pip --disable-pip-version-check)
        # torch's CPU build first: pip's own indexes may have it (a plain PyPI torch is the CUDA build)
        "${pip[@]}" download -q --no-deps -d "$ctx/wheels" "torch==$torch_version+cpu" 2>/dev/null \
            || "${pip[@]}" download -q --no-deps -d "$ctx/wheels" --index-url "$torch_index" "torch==$torch_version+cpu"
        "${pip[@]}" wheel -q -w "$ctx/wheels" --find-links "$ctx/wheels" -r "$reqs"
        cp "$reqs" "$ctx/wheels/requirements.txt"
        touch "$ctx/wheels/.complete"
        took "wheels ($(du -sh "$ctx/wheels" | cut -f1))" "$t"
    fi
    cp "$here/Dockerfile.deps" "$ctx/Dockerfile"
    t=$(now)
    "$cli" build -q --network=host --build-arg "BASE=$base" --label llem.image=test-deps -t "$deps" "$ctx" >/dev/null
    # the install stage (the wheels and the environment, 2 GB) is left untagged by the legacy builder
    "$cli" image prune -f --filter label=llem.image=test-deps-install >/dev/null 2>&1 || true
    took "build $deps" "$t"
fi

# 3. llem on top -------------------------------------------------------------------------------------
t=$(now)
llem_ctx=$(mktemp -d)
trap 'rm -f "$reqs"; rm -rf "$llem_ctx"' EXIT
# built from a copy of exactly the files the digest covers: a build/ folder left in the checkout (setuptools
# reuses it) cannot carry a module deleted since into the wheel
mkdir "$llem_ctx/src"
"$python" "$here/source_digest.py" --files "$root" | tar -C "$root" -cf - -T - | tar -C "$llem_ctx/src" -xf -
"$python" -m pip --disable-pip-version-check wheel -q --no-deps -w "$llem_ctx" "$llem_ctx/src"
rm -rf "$llem_ctx/src"
# every package of the source tree must be in the wheel ([tool.setuptools] packages lists them one by one)
"$python" - "$root" "$llem_ctx"/llem-*.whl <<'PY'
import sys, zipfile
from pathlib import Path
root, wheel = Path(sys.argv[1]), sys.argv[2]
inside = {str(Path(n).parent) for n in zipfile.ZipFile(wheel).namelist() if n.endswith("/__init__.py")}
missing = sorted(str(p.parent.relative_to(root)) for p in (root / "llem").rglob("__init__.py")
                 if str(p.parent.relative_to(root)) not in inside and "__pycache__" not in p.parts)
if missing:
    sys.exit(f"build.sh: the llem wheel lacks {missing}: add them to [tool.setuptools] packages in pyproject.toml")
PY
cp "$here/Dockerfile" "$llem_ctx/Dockerfile"
version=$("$python" -c 'import sys; sys.path.insert(0, sys.argv[1]); import llem; print(llem.__version__)' "$root")
source=$("$python" "$here/source_digest.py" "$root")
"$cli" build -q --network=host --build-arg "DEPS=$deps" --build-arg "LLEM_VERSION=$version" --build-arg "LLEM_SOURCE=$source" \
    -t "$image" "$llem_ctx" >/dev/null
# the previous llem layers, now untagged; then older dependency sets (unless a container uses one), their wheels
"$cli" image prune -f --filter label=llem.image=test-cpu >/dev/null 2>&1 || true
keep=$("$cli" image inspect --format '{{.Id}}' "$deps")
for old in $("$cli" image ls -q --no-trunc --filter label=llem.image=test-deps); do
    [ "${old#sha256:}" = "${keep#sha256:}" ] || "$cli" rmi "$old" >/dev/null 2>&1 || true
done
find "$cache" -maxdepth 1 -name 'deps-*' ! -name "deps-$key" -exec rm -rf {} +
took "build $image (llem $version, source ${source:0:12})" "$t"
