#!/usr/bin/env bash
# Build mcpfleet's images: the gateway (mcpfleet/mcpfleet:dev) and the demo server (mcpfleet/demo:dev), on
# a base image that has python3 (3.11, like the host that builds the wheels) and python3-venv.
#
#   docker/build-images.sh                                 # base built from Debian packages when missing
#   BASE=python:3.11-slim-bookworm docker/build-images.sh  # base from an image registry instead
#
# Without an image registry the default base, mcpfleet/base:bookworm, is made by mmdebstrap from Debian's
# packages and `docker import`ed, once. Wheels of mcpfleet and its runtime dependencies are built on the host
# (`pip wheel -c constraints.txt .`) and installed with `pip install --no-index`, so `docker build` runs with
# `--network none`. Both images carry the label mcpfleet.source, a hash of every input (src/, pyproject.toml,
# constraints.txt, docker/, the base image's id), and are also tagged `src-<hash>`: when that tag exists the
# build is skipped. The last line printed is the three image names: base, gateway, demo (`src-<hash>` tags).
#
# Settings: BASE (above), PYTHON (a Python 3.11 with pip; default .venv/bin/python), MCPFLEET_IMAGE_KEEP
# (how many older `src-*` builds to keep, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_BASE=mcpfleet/base:bookworm
BASE=${BASE:-$DEFAULT_BASE}
PYTHON=${PYTHON:-.venv/bin/python}
KEEP=${MCPFLEET_IMAGE_KEEP:-3}
GATEWAY=mcpfleet/mcpfleet
DEMO=mcpfleet/demo

say() { printf 'build-images: %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# One build at a time on this machine, whichever work tree asks: the tags are shared.
exec 9>"${TMPDIR:-/tmp}/mcpfleet-images.lock"
flock 9

if ! have_image "$BASE"; then
  if [ "$BASE" = "$DEFAULT_BASE" ]; then
    command -v mmdebstrap >/dev/null || { say "mmdebstrap is missing: apt-get install -y mmdebstrap (or set BASE)"; exit 1; }
    say "making $BASE from Debian packages (mmdebstrap, about 40 s, once)"
    started=$SECONDS
    mmdebstrap --quiet --variant=essential --include=python3-venv,ca-certificates bookworm - |
      docker import --change 'LABEL mcpfleet.base=debian-bookworm-essential' - "$BASE" >/dev/null
    say "$BASE made in $((SECONDS - started)) s"
  else
    docker pull "$BASE"
  fi
fi

base_id=$(docker image inspect --format '{{.Id}}' "$BASE")
source=$(
  {
    find src pyproject.toml constraints.txt docker -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.md' ! -name 'compose-registry.yaml' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
    echo "base $base_id"
  } | sha256sum | cut -c1-16
)
tag=src-$source

if have_image "$GATEWAY:$tag" && have_image "$DEMO:$tag"; then
  say "up to date: $GATEWAY:$tag and $DEMO:$tag (mcpfleet.source=$source)"
else
  started=$SECONDS
  wheels=build/wheels
  rm -rf "$wheels"
  say "building wheels in $wheels"
  "$PYTHON" -m pip wheel --quiet --disable-pip-version-check -w "$wheels" -c constraints.txt .
  say "building $GATEWAY:$tag"
  docker build --quiet --network none --build-arg "BASE=$BASE" --build-arg "SOURCE=$source" \
    -f docker/mcpfleet.Dockerfile -t "$GATEWAY:$tag" "$wheels" >/dev/null
  say "building $DEMO:$tag"
  docker build --quiet --network none --build-arg "GATEWAY=$GATEWAY:$tag" --build-arg "SOURCE=$source" \
    -f docker/demo.Dockerfile -t "$DEMO:$tag" docker >/dev/null
  docker image prune --force --filter label=mcpfleet.stage=install >/dev/null
  say "built in $((SECONDS - started)) s"
fi
docker tag "$GATEWAY:$tag" "$GATEWAY:dev"
docker tag "$DEMO:$tag" "$DEMO:dev"

# Older builds: keep the newest few, so tests still running on one keep it; an image a container uses stays.
for repo in "$DEMO" "$GATEWAY"; do
  docker image ls --format '{{.Tag}}' "$repo" | { grep '^src-' || true; } | { grep -vx "$tag" || true; } |
    tail -n "+$((KEEP + 1))" | while read -r old; do docker rmi "$repo:$old" >/dev/null 2>&1 || true; done
done

echo "$BASE $GATEWAY:$tag $DEMO:$tag"
