#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package, as root) when it is missing, for
# tests/test_report.py's browser test of report.html. Without it that one test skips.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ci_chromium: chromium missing and cannot be installed here (needs root and apt-get)" >&2
  exit 1
fi
echo "ci_chromium: installing chromium" >&2
(apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }) \
  || { echo "ci_chromium: apt-get could not install chromium" >&2; exit 1; }
