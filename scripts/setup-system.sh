#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when missing and when we may (root + apt):
#   chromium               headless browser for the HTML-report test
#   dataset-fashion-mnist  real Fashion-MNIST IDX files for the MNIST-style recipes
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: missing ${need[*]} (install them with apt-get as root); tests that need them will skip" >&2
  exit 0
fi
echo "setup-system: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
