#!/usr/bin/env bash
# Start the local stack: Azurite (in memory), the SignalR emulator, and the app (local host, or Core Tools with
# MODE=func). Prints the URLs; Ctrl-C stops everything. Ports come from the environment (the Makefile sets them).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=${MODE:-local}
BLOB_PORT=${AZURITE_BLOB_PORT:-10000}
QUEUE_PORT=${AZURITE_QUEUE_PORT:-10001}
TABLE_PORT=${AZURITE_TABLE_PORT:-10002}
EMULATOR_PORT=${EMULATOR_PORT:-8888}
HOST_PORT=${HOST_PORT:-7071}
PYTHON=${PYTHON:-.venv/bin/python}
# Azurite's and the emulator's published development keys; not secrets.
DEV_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ACCESS_KEY=${EMULATOR_ACCESS_KEY:-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH}

STORAGE="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$DEV_KEY"
STORAGE+=";BlobEndpoint=http://127.0.0.1:$BLOB_PORT/devstoreaccount1"
STORAGE+=";QueueEndpoint=http://127.0.0.1:$QUEUE_PORT/devstoreaccount1"
STORAGE+=";TableEndpoint=http://127.0.0.1:$TABLE_PORT/devstoreaccount1;"
SIGNALR="Endpoint=http://localhost;Port=$EMULATOR_PORT;AccessKey=$ACCESS_KEY;Version=1.0;"

pids=()
workdir=""
# Stop everything once, whatever ends the script (Ctrl-C, a process exiting, a failed start), saying so first.
stop() {
  trap - INT TERM EXIT
  echo "stopping the local stack"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${workdir:-}"
  echo "local stack stopped"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

wait_port() {  # wait_port PORT NAME PID
  for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "$2 exited; see the messages above" >&2; exit 1; }
    sleep 0.2
  done
  echo "$2 did not listen on port $1" >&2
  exit 1
}

workdir=$(mktemp -d)
# --skipApiVersionCheck: azure-storage-queue (the app's delayed actions, the local host's queue triggers) speaks a
# newer storage API version than Azurite accepts.
(cd "$workdir" && exec "$OLDPWD/node_modules/.bin/azurite" --silent --inMemoryPersistence --disableTelemetry \
  --skipApiVersionCheck --blobPort "$BLOB_PORT" --queuePort "$QUEUE_PORT" --tablePort "$TABLE_PORT") &
pids+=($!)
wait_port "$TABLE_PORT" Azurite "${pids[-1]}"
wait_port "$QUEUE_PORT" "Azurite (queue)" "${pids[-1]}"

"$PYTHON" -m local.emulator --port "$EMULATOR_PORT" --access-key "$ACCESS_KEY" \
  --upstream "http://localhost:$HOST_PORT/runtime/webhooks/signalr" &
pids+=($!)
wait_port "$EMULATOR_PORT" "SignalR emulator" "${pids[-1]}"

if [ "$MODE" = func ]; then
  echo "Core Tools: set AzureSignalRConnectionString=$SIGNALR in local.settings.json"
  # shellcheck disable=SC1091
  . .venv/bin/activate
  func start --port "$HOST_PORT" &
else
  "$PYTHON" -m local.host --port "$HOST_PORT" --settings local.settings.json \
    --setting "AzureWebJobsStorage=$STORAGE" --setting "MAPPING_STORAGE=$STORAGE" \
    --setting "AzureSignalRConnectionString=$SIGNALR" \
    --static "/=local/demo" --static "/client=client" --static "/vendor/signalr=node_modules/@microsoft/signalr/dist/browser" &
fi
pids+=($!)
wait_port "$HOST_PORT" "the function app" "${pids[-1]}"

cat <<EOT

  Local stack is up (Ctrl-C stops it):
    demo page          http://localhost:$HOST_PORT/
    HTTP API           http://localhost:$HOST_PORT/api/  (send, users, users/{user}, negotiate)
    SignalR emulator   http://localhost:$EMULATOR_PORT/  (upstream http://localhost:$HOST_PORT/runtime/webhooks/signalr)
    drop a disconnect  curl -X POST http://localhost:$EMULATOR_PORT/admin/drop-next-disconnect
    Azurite            blob $BLOB_PORT, queue $QUEUE_PORT, table $TABLE_PORT (in memory)

EOT
wait -n "${pids[@]}" || true  # one of them exited: the EXIT trap stops the others
