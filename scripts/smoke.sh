#!/usr/bin/env bash
# Smoke tests against a running API: classify an image URL, classify uploaded bytes, and expect a bad request
# to be refused with a 4xx. Exits non-zero on the first failure.
#
#   scripts/smoke.sh [API_URL] [IMAGES_URL]
#
# API_URL    the API's base URL (default $API_URL or http://127.0.0.1:8000, what `make run` starts)
# IMAGES_URL where the sample photos are served (default $IMAGES_URL or http://127.0.0.1:8081)
# SAMPLES    the sample photos on disk, for the upload (default ../shared/data/samples beside the project)
set -euo pipefail

api="${1:-${API_URL:-http://127.0.0.1:8000}}"
images="${2:-${IMAGES_URL:-http://127.0.0.1:8081}}"
project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
samples="${SAMPLES:-$project/../shared/data/samples}"
photo="Labrador_retriever_06455.jpg"
expected="Labrador_retriever"

body="$(mktemp)"
trap 'rm -f "$body"' EXIT

# call NAME EXPECTED_STATUS curl-args...: runs curl, prints the answer, fails unless the status matches.
call() {
    local name="$1" expected_status="$2"
    shift 2
    local status
    if ! status="$(curl --silent --show-error --max-time 60 --output "$body" --write-out '%{http_code}' "$@")"; then
        echo "FAIL $name: curl could not reach $api" >&2
        return 1
    fi
    echo "$name -> HTTP $status: $(head -c 400 "$body")"
    if [[ "$status" != "$expected_status" ]]; then
        echo "FAIL $name: expected HTTP $expected_status" >&2
        return 1
    fi
}

# expect_label NAME: the answer's first prediction must be the expected breed.
expect_label() {
    if ! grep -q "\"predictions\": *\[{\"label\": *\"$expected\"" "$body"; then
        echo "FAIL $1: first prediction is not $expected" >&2
        return 1
    fi
}

call "POST /predict (url)" 200 -X POST "$api/predict" \
    -H 'Content-Type: application/json' -d "{\"url\": \"$images/$photo\"}"
expect_label "POST /predict (url)"

call "POST /predict/image (bytes)" 200 -X POST "$api/predict/image" \
    -H 'Content-Type: image/jpeg' --data-binary "@$samples/$photo"
expect_label "POST /predict/image (bytes)"

call "POST /predict (bad request)" 400 -X POST "$api/predict" \
    -H 'Content-Type: application/json' -d '{"picture": "missing the url and image fields"}'

echo "smoke tests passed against $api"
