#!/usr/bin/env bash
# Prints a script's header comment (what it does, how to run it): its
# leading '#' lines, without the '# ' and the '#!' line. The repository's
# shell commands and its Makefile answer -h, --help and `make help` with it:
#
#   bash tools/help.sh FILE
[[ "${1:-}" == -h || "${1:-}" == --help ]] && set -- "$0"
awk 'NR == 1 && /^#!/ { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$1"
