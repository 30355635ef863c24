#!/usr/bin/env bash
# Smoke tests against a running API, local or deployed: the stage is up, knows its breeds, classifies uploaded
# bytes (and an image URL when there is one to give), and refuses a bad request with a 4xx. With an API key
# it also checks that the stage refuses a request without one. Exits non-zero on the first failure.
#
#   scripts/smoke.sh [API_URL] [IMAGES_URL]
#   API_KEY=... scripts/smoke.sh https://abc123.execute-api.us-east-1.amazonaws.com/api
#
# API_URL    the API's base URL, the stage's path included (default $API_URL or http://127.0.0.1:8000, what
#            `make run` starts)
# IMAGES_URL where the sample photos are served, for the URL check (default $IMAGES_URL; for the default
#            API_URL, http://127.0.0.1:8081, what `make run` serves; otherwise the URL check is skipped: a
#            deployed stage cannot fetch from this machine's loopback)
# API_KEY    sent as the x-api-key header, for a stage whose routes need a key (prod); never printed
# SAMPLES    the sample photos on disk, for the upload (default ../shared/data/samples beside the project)
set -euo pipefail

local_api="http://127.0.0.1:8000"
api="${1:-${API_URL:-$local_api}}"
api="${api%/}"
images="${2:-${IMAGES_URL:-}}"
if [[ -z "$images" && "$api" == "$local_api" ]]; then
    images="http://127.0.0.1:8081"
fi
key="${API_KEY:-}"
project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
samples="${SAMPLES:-$project/../shared/data/samples}"
photo="Labrador_retriever_06455.jpg"
expected="Labrador_retriever"

body="$(mktemp)"
trap 'rm -f "$body"' EXIT

# call NAME EXPECTED_STATUS curl-args...: runs curl (with the key, when there is one), prints the answer,
# fails unless the status matches.
call() {
    local name="$1" expected_status="$2"
    shift 2
    local status
    local auth=()
    if [[ -n "$key" ]]; then
        auth=(-H "x-api-key: $key")
    fi
    if ! status="$(curl --silent --show-error --max-time 60 --output "$body" --write-out '%{http_code}' \
        "${auth[@]}" "$@")"; then
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

call "GET /health" 200 "$api/health"

call "GET /breeds" 200 "$api/breeds"
if ! grep -q "\"label\": *\"$expected\"" "$body"; then
    echo "FAIL GET /breeds: $expected is not among the model's breeds" >&2
    exit 1
fi

call "POST /predict/image (bytes)" 200 -X POST "$api/predict/image" \
    -H 'Content-Type: image/jpeg' --data-binary "@$samples/$photo"
expect_label "POST /predict/image (bytes)"

if [[ -n "$images" ]]; then
    call "POST /predict (url)" 200 -X POST "$api/predict" \
        -H 'Content-Type: application/json' -d "{\"url\": \"$images/$photo\"}"
    expect_label "POST /predict (url)"
else
    echo "POST /predict (url) skipped: give IMAGES_URL, a public address serving $photo"
fi

call "POST /predict (bad request)" 400 -X POST "$api/predict" \
    -H 'Content-Type: application/json' -d '{"picture": "missing the url and image fields"}'

if [[ -n "$key" ]]; then
    # The key is really needed: the same upload without it is refused by the gateway.
    key="" call "POST /predict/image (no API key)" 403 -X POST "$api/predict/image" \
        -H 'Content-Type: image/jpeg' --data-binary "@$samples/$photo"
fi

echo "smoke tests passed against $api"
