#!/usr/bin/env bash
# `make run`: the whole service on localhost with the committed default model, no AWS account needed.
#   local endpoint (SageMaker runtime API)  http://127.0.0.1:$ENDPOINT_PORT
#   sample photos for URL requests           http://127.0.0.1:$FILES_PORT
#   the API (`chalice local --stage local`)  http://127.0.0.1:$API_PORT
# Each port is an environment variable (8080, 8081 and 8000 by default): `make run ENDPOINT_PORT=9080`.
set -euo pipefail
cd "$(dirname "$0")/.."

ENDPOINT_PORT=${ENDPOINT_PORT:-8080}
FILES_PORT=${FILES_PORT:-8081}
API_PORT=${API_PORT:-8000}
MODEL_DIR=${MODEL_DIR:-models/default}
SAMPLES=${SAMPLES:-../shared/data/samples}
BIN=.venv/bin

pids=()
cleanup() {
    trap - EXIT INT TERM
    # chalice local's auto-reloader serves from a child process of its own.
    for pid in "${pids[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; done
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "${scratch:-}"
}
trap cleanup EXIT INT TERM

wait_for() {  # url seconds
    for _ in $(seq "$2"); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 1
    done
    echo "$1 did not come up within $2 s" >&2
    return 1
}

# A port something already listens on would leave this run talking to that instead: stop here and say so.
for setting in ENDPOINT_PORT FILES_PORT API_PORT; do
    if (: <"/dev/tcp/127.0.0.1/${!setting}") 2>/dev/null; then
        echo "port ${!setting} is in use; choose another: make run $setting=PORT" >&2
        exit 1
    fi
done

$BIN/python -m serving.server --model-dir "$MODEL_DIR" --host 127.0.0.1 --port "$ENDPOINT_PORT" &
pids+=($!)
$BIN/python -m http.server --bind 127.0.0.1 --directory "$SAMPLES" "$FILES_PORT" >/dev/null 2>&1 &
pids+=($!)
# .chalice/config.json's local stage points boto3 at 127.0.0.1:8080 (unsigned, so no AWS credentials are
# needed) and is the only stage allowed to fetch from loopback; its settings win over this environment.
# Another endpoint port, or a model with another resize size than the default's, gets a copy of the local
# stage that says so (scripts/local_stage.py).
scratch=$(mktemp -d)
API_PROJECT=$($BIN/python -m scripts.local_stage "$MODEL_DIR" "$scratch" \
    --endpoint-url "http://127.0.0.1:$ENDPOINT_PORT")
# Absolute: chalice moves into the project folder, then its reloader starts itself again by the same path.
"$PWD/$BIN/chalice" --project-dir "$API_PROJECT" local --stage local --host 127.0.0.1 --port "$API_PORT" &
pids+=($!)

wait_for "http://127.0.0.1:$ENDPOINT_PORT/ping" 180
wait_for "http://127.0.0.1:$API_PORT/health" 60

cat <<MSG

dogbreeds is running. Open http://127.0.0.1:$API_PORT/ in a browser and drop a photo on it, or try:

  curl -s -X POST http://127.0.0.1:$API_PORT/predict -H 'Content-Type: application/json' \\
       -d '{"url": "http://127.0.0.1:$FILES_PORT/Labrador_retriever_06455.jpg", "top_k": 3}'

  curl -s -X POST http://127.0.0.1:$API_PORT/predict/image -H 'Content-Type: image/jpeg' \\
       --data-binary @$SAMPLES/Labrador_retriever_06455.jpg

  scripts/smoke.sh http://127.0.0.1:$API_PORT http://127.0.0.1:$FILES_PORT

The endpoint (SageMaker's runtime API): http://127.0.0.1:$ENDPOINT_PORT; the sample photos:
http://127.0.0.1:$FILES_PORT/.

The API's description: http://127.0.0.1:$API_PORT/openapi.json

Ctrl-C stops everything.
MSG

wait -n "${pids[@]}"
