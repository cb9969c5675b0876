#!/bin/sh
# Cargo runs every rustc through this (.cargo/config.toml). Release builds
# (opt-level 3) are optimized with the committed profile (pgo/README.md)
# when the compiler's LLVM can read it (22 or later); everything else, and
# builds that set profiling or fuzzing flags of their own, run unchanged.
profile="$(dirname "$0")/chorus.profdata"
case " $* " in
*profile-generate* | *profile-use* | *" fuzzing "*) ;;
*" opt-level=3 "*)
    llvm=$("$1" -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    if [ -f "$profile" ] && [ "${llvm:-0}" -ge 22 ]; then
        # A function changed since the training is compiled without its
        # counts, silently (pgo/README.md says when to train again).
        exec "$@" "-Cprofile-use=$profile" -Cllvm-args=-no-pgo-warn-mismatch
    fi
    ;;
esac
exec "$@"
