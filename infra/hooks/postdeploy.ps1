# azd postdeploy hook (Windows): point the Azure SignalR Service upstream at the function app's SignalR webhook,
#   https://<app>/runtime/webhooks/signalr?code=<signalr_extension system key>
# The signalr_extension key exists only once the host has indexed the SignalR-triggered functions,
# a little while after `azd deploy`, so this waits for it (a bounded number of tries).
# Needs the Azure CLI (`az`), signed in to the subscription azd deploys to. The key is never printed.
# Tuning: POSTDEPLOY_KEY_ATTEMPTS (default 30) tries, POSTDEPLOY_KEY_DELAY (default 10) seconds apart.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Fail([string] $message) {
    Write-Error "postdeploy: ERROR: $message" -ErrorAction Continue
    exit 1
}

function Require-Env([string] $name, [string] $hint) {
    $value = [Environment]::GetEnvironmentVariable($name)
    if ([string]::IsNullOrWhiteSpace($value)) { Fail "$name is not set ($hint)" }
    return $value
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Fail "the Azure CLI (az) is not installed; install it, run 'az login', then 'azd hooks run postdeploy'."
}

$subscription = Require-Env 'AZURE_SUBSCRIPTION_ID' 'run this through azd'
$group = Require-Env 'AZURE_RESOURCE_GROUP' 'run azd provision first'
$app = Require-Env 'AZURE_FUNCTION_APP_NAME' 'run azd provision first'
$signalR = Require-Env 'AZURE_SIGNALR_NAME' 'run azd provision first'
$hub = if ($env:SIGNALR_HUB) { $env:SIGNALR_HUB } else { 'chat' }
$attempts = if ($env:POSTDEPLOY_KEY_ATTEMPTS) { [int] $env:POSTDEPLOY_KEY_ATTEMPTS } else { 30 }
$delay = if ($env:POSTDEPLOY_KEY_DELAY) { [int] $env:POSTDEPLOY_KEY_DELAY } else { 10 }

az account show --subscription $subscription --output none 2>$null
if ($LASTEXITCODE -ne 0) {
    Fail "the Azure CLI is not signed in to subscription $subscription; run 'az login' (and 'az account set'), then 'azd hooks run postdeploy'."
}

$appHost = az functionapp show --subscription $subscription --resource-group $group --name $app --query defaultHostName --output tsv
if ($LASTEXITCODE -ne 0 -or [string]::IsNullOrWhiteSpace($appHost)) { Fail "could not read the host name of function app $app." }

Write-Host "postdeploy: waiting for the signalr_extension system key of $app (up to $attempts tries, ${delay}s apart)"
$key = ''
for ($try = 1; ; $try++) {
    # A request wakes the host (Flex Consumption scales to zero), which indexes the functions and
    # creates the extension's system key. Any answer will do; the webhook's path is one that App Service
    # Authentication lets through to the host (an excluded path), which answers 401 without the key.
    try { Invoke-WebRequest -Uri "https://$appHost/runtime/webhooks/signalr" -Method Post -TimeoutSec 20 -UseBasicParsing | Out-Null } catch { }
    $key = az functionapp keys list --subscription $subscription --resource-group $group --name $app `
        --query 'systemKeys.signalr_extension' --output tsv 2>$null
    if ($LASTEXITCODE -eq 0 -and -not [string]::IsNullOrWhiteSpace($key)) { break }
    if ($try -ge $attempts) {
        Fail ("no signalr_extension system key after $attempts tries: the SignalR-triggered functions are not indexed yet. " +
            "Check the deployment in Application Insights or the portal (Functions list), then run 'azd hooks run postdeploy' again.")
    }
    Write-Host "postdeploy: key not there yet (try $try of $attempts); retrying in ${delay}s"
    Start-Sleep -Seconds $delay
}

# Percent-encode the characters of a base64 key that would change meaning in a query string.
$code = [uri]::EscapeDataString($key.Trim())
$urlBase = "https://$appHost/runtime/webhooks/signalr"
az signalr upstream update --subscription $subscription --resource-group $group --name $signalR `
    --template "url-template=$urlBase`?code=$code" "hub-pattern=$hub" 'category-pattern=*' 'event-pattern=*' `
    --output none
if ($LASTEXITCODE -ne 0) { Fail "az signalr upstream update failed for $signalR." }
Write-Host "postdeploy: SignalR Service $signalR now sends hub '$hub' events (all categories, all events) to"
Write-Host "postdeploy:   $urlBase`?code=<signalr_extension key, not shown>"
Write-Host "postdeploy: connections/connected, connections/disconnected and messages reach the app's SignalR triggers."
