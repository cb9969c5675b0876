#!/bin/sh
# RUSTC_WRAPPER for sanitizer builds on a stable toolchain: cargo does not
# pass RUSTC_BOOTSTRAP on to rustc, so set it here for `-Zsanitizer=...`.
RUSTC_BOOTSTRAP=1 exec "$@"
