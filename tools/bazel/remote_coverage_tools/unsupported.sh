#!/bin/sh
echo "remote_coverage_tools is an offline stand-in: 'bazel coverage' is not supported here; use 'bazel test'" >&2
exit 1
