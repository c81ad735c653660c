#!/bin/sh
# The version: the git tag describing HEAD (v0.3.0 -> 0.3.0; past a tag,
# 0.3.0+5.gabcdef1), else the VERSION file.
cd "$(dirname "$0")/.."
if v=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	echo "${v#v}" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/+\1.g\2/'
else
	cat VERSION
fi
