#!/usr/bin/env bash
# The naive loop the seed's original design implies, as a peer in bench/run: for each
# line "SOURCE:TAG DESTINATION:TAG" of the list file, one after the other,
# `crane digest` the source, `crane digest` the destination, and `crane copy` the tag
# when the digests differ. Prints "naive-loop: processes=N failed=M" on stderr at the end
# (N = crane invocations). Exits 1 if any image failed.
set -uo pipefail
list="$1"
processes=0
failed=0
while read -r source destination; do
    [ -n "$source" ] || continue
    upstream="$(crane digest "$source")"; processes=$((processes + 1))
    if [ -z "$upstream" ]; then failed=$((failed + 1)); continue; fi
    cached="$(crane digest "$destination" 2>/dev/null)"; processes=$((processes + 1))
    if [ "$upstream" != "$cached" ]; then
        crane copy "$source" "$destination" || failed=$((failed + 1))
        processes=$((processes + 1))
    fi
done <"$list"
echo "naive-loop: processes=$processes failed=$failed" >&2
[ "$failed" -eq 0 ]
