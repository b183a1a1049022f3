#!/bin/sh
# Register the custom search attributes of the enrollment workflows on a Temporal cluster.
# Idempotent: attributes that already exist are left alone. Needs the `temporal` CLI;
# the connection comes from its usual environment (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
# TEMPORAL_TLS*, TEMPORAL_API_KEY ...).
#
# Keep this list in step with nurture/search_attributes.py (tests/test_deploy.py checks it).
set -eu

existing="$(temporal operator search-attribute list)"

register() {
    if printf '%s\n' "$existing" | grep -qw -- "$1"; then
        echo "search attribute $1 already registered"
    else
        temporal operator search-attribute create --name "$1" --type "$2"
    fi
}

register NurtureFlowId Keyword
register NurtureFlowVersion Int
register NurtureContactId Keyword
register NurtureStep Keyword
register NurtureStatus Keyword
register NurturePaused Bool
