#!/bin/sh
# azd postdeploy hook: point the Azure SignalR Service upstream at the function app's SignalR webhook,
#   https://<app>/runtime/webhooks/signalr?code=<signalr_extension system key>
# The signalr_extension key exists only once the host has indexed the SignalR-triggered functions,
# a little while after `azd deploy`, so this waits for it (a bounded number of tries).
# Needs the Azure CLI (`az`), signed in to the subscription azd deploys to. The key is never printed.
# Tuning: POSTDEPLOY_KEY_ATTEMPTS (default 30) tries, POSTDEPLOY_KEY_DELAY (default 10) seconds apart.
set -eu

fail() {
  echo "postdeploy: ERROR: $*" >&2
  exit 1
}

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed; install it, run 'az login', then 'azd hooks run postdeploy'."

: "${AZURE_SUBSCRIPTION_ID:?postdeploy: AZURE_SUBSCRIPTION_ID is not set (run this through azd)}"
: "${AZURE_RESOURCE_GROUP:?postdeploy: AZURE_RESOURCE_GROUP is not set (run azd provision first)}"
: "${AZURE_FUNCTION_APP_NAME:?postdeploy: AZURE_FUNCTION_APP_NAME is not set (run azd provision first)}"
: "${AZURE_SIGNALR_NAME:?postdeploy: AZURE_SIGNALR_NAME is not set (run azd provision first)}"
hub="${SIGNALR_HUB:-chat}"
attempts="${POSTDEPLOY_KEY_ATTEMPTS:-30}"
delay="${POSTDEPLOY_KEY_DELAY:-10}"

az account show --subscription "$AZURE_SUBSCRIPTION_ID" --output none 2>/dev/null ||
  fail "the Azure CLI is not signed in to subscription $AZURE_SUBSCRIPTION_ID; run 'az login' (and 'az account set'), then 'azd hooks run postdeploy'."

host="$(az functionapp show --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "$AZURE_FUNCTION_APP_NAME" --query defaultHostName --output tsv)" || host=""
[ -n "$host" ] || fail "could not read the host name of function app $AZURE_FUNCTION_APP_NAME."

errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT

echo "postdeploy: waiting for the signalr_extension system key of $AZURE_FUNCTION_APP_NAME (up to $attempts tries, ${delay}s apart)"
key=""
try=1
while :; do
  # A request wakes the host (Flex Consumption scales to zero), which indexes the functions and
  # creates the extension's system key. Any answer will do; the webhook's path is one that App Service
  # Authentication lets through to the host (an excluded path), which answers 401 without the key.
  if command -v curl >/dev/null 2>&1; then
    curl --silent --output /dev/null --max-time 20 -X POST "https://$host/runtime/webhooks/signalr" || true
  fi
  key="$(az functionapp keys list --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" \
    --name "$AZURE_FUNCTION_APP_NAME" --query "systemKeys.signalr_extension" --output tsv 2>"$errors" || true)"
  [ -n "$key" ] && break
  if [ "$try" -ge "$attempts" ]; then
    [ -s "$errors" ] && sed 's/^/postdeploy: az: /' "$errors" >&2
    fail "no signalr_extension system key after $attempts tries: the SignalR-triggered functions are not indexed yet.
Check the deployment in Application Insights or the portal (Functions list), then run 'azd hooks run postdeploy' again."
  fi
  echo "postdeploy: key not there yet (try $try of $attempts); retrying in ${delay}s"
  try=$((try + 1))
  sleep "$delay"
done

# Percent-encode the characters of a base64 key that would change meaning in a query string.
code="$(printf '%s' "$key" | sed -e 's/%/%25/g' -e 's/+/%2B/g' -e 's|/|%2F|g' -e 's/=/%3D/g')"
url_base="https://$host/runtime/webhooks/signalr"
az signalr upstream update --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "$AZURE_SIGNALR_NAME" \
  --template url-template="$url_base?code=$code" hub-pattern="$hub" category-pattern="*" event-pattern="*" \
  --output none || fail "az signalr upstream update failed for $AZURE_SIGNALR_NAME."
echo "postdeploy: SignalR Service $AZURE_SIGNALR_NAME now sends hub '$hub' events (all categories, all events) to"
echo "postdeploy:   $url_base?code=<signalr_extension key, not shown>"
echo "postdeploy: connections/connected, connections/disconnected and messages reach the app's SignalR triggers."
