// azd entry point: one resource group with the function app (Flex Consumption, Python), its
// user-assigned managed identity, storage (shared-key access off), Azure SignalR Service (Serverless),
// Application Insights with Log Analytics, and the role assignments that let the identity reach them.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the unique suffix of every resource name and the azd-env-name tag.')
param environmentName string

// The regions that offered Flex Consumption when this list was taken (the list of the official Flex
// Consumption quickstart template, without its early-access region eastus2euap). Check the current list
// with `az functionapp list-flexconsumption-locations --output table` and add a new region here.
@minLength(1)
@description('Azure region of every resource; it must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group to create; empty gives rg-<environmentName>.')
param resourceGroupName string = ''

@minLength(36)
@maxLength(36)
@description('Application (client) id of the Microsoft Entra app registration whose tokens App Service Authentication accepts (azd env set AUTH_CLIENT_ID <id>).')
param authClientId string

@description('Tenant id of the app registration; defaults to the tenant of the subscription being deployed to.')
param authTenantId string = tenant().tenantId

@description('Client (application) ids, comma-separated, whose tokens App Service Authentication accepts (the token\'s appid/azp claim); empty accepts any client application of the tenant (azd env set AUTH_ALLOWED_APPLICATIONS <id>,<id>).')
param authAllowedApplications string = ''

@description('Token audiences, comma-separated, that App Service Authentication accepts; empty means the app registration\'s client id and api://<client id> (azd env set AUTH_ALLOWED_AUDIENCES <aud>,<aud>).')
param authAllowedAudiences string = ''

@description('Object id of the person (or service principal) running azd (AZURE_PRINCIPAL_ID); when set, it gets Storage Table Data Contributor and SignalR Service Owner, to run the sweep or the library from their machine. Empty assigns nothing.')
param principalId string = ''

@description('Kind of principalId (AZURE_PRINCIPAL_TYPE): User, or ServicePrincipal when a pipeline deploys.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Python version of the function app (Flex Consumption runs 3.10 to 3.12).')
@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Azure SignalR Service SKU: Free_F1 (20 connections, 20,000 messages a day, no SLA; at most five Free units per subscription and region), Standard_S1 or Premium_P1.')
@allowed([
  'Free_F1'
  'Standard_S1'
  'Premium_P1'
])
param signalRSku string = 'Free_F1'

@description('Azure SignalR Service units (1,000 connections each on Standard and Premium): 1 to 10, then multiples of 10 up to 100; Free_F1 always has 1.')
@allowed([
  1
  2
  3
  4
  5
  6
  7
  8
  9
  10
  20
  30
  40
  50
  60
  70
  80
  90
  100
])
param signalRCapacity int = 1

@description('SignalR hub name (SIGNALR_HUB); clients connect to this hub.')
param signalRHubName string = 'chat'

@description('Table that holds the user-to-connection map (MAPPING_TABLE).')
param mappingTableName string = 'Connections'

@description('Lease length in seconds (MAPPING_TTL_SECONDS): a connection row whose LastSeen is older is not live.')
@minValue(1)
param mappingTtlSeconds int = 600

@description('Hard limit in seconds (MAPPING_MAX_AGE_SECONDS): a row the SignalR service cannot vouch for is removed once its LastSeen is this old.')
@minValue(1)
param mappingMaxAgeSeconds int = 86400

@description('Broadcast presence changes to the hub (PRESENCE_EVENTS).')
param presenceEvents bool = true

@description('Who hears a user\'s presence changes (PRESENCE_AUDIENCE): scoped (the rooms they are in, their watchers and their own tabs) or hub (every connection of the hub).')
@allowed([
  'scoped'
  'hub'
])
param presenceAudience string = 'scoped'

@description('Whom a connection may watch for presence changes (PRESENCE_WATCH): room-members (users it shares a room with; their presence reaches it through the room already), anyone or nobody. The app\'s access policy, when it answers, decides instead.')
@allowed([
  'room-members'
  'anyone'
  'nobody'
])
param presenceWatch string = 'room-members'

@description('To whom a client may send a direct message (DIRECT_MESSAGES): shared-room (users it shares a room with), anyone or nobody.')
@allowed([
  'shared-room'
  'anyone'
  'nobody'
])
param directMessages string = 'shared-room'

@description('Rooms any signed-in client may join (ROOMS_OPEN): room names and prefixes ending in *, separated by spaces (\'lobby public.*\'; \'*\' opens every room). Empty: every room is closed, and a client joins only a room a server granted it (PUT /api/rooms/{room}/members/{user}) or the app\'s access policy admits. A malformed value makes the app answer 503 and its triggers fail (ConfigurationError).')
param roomsOpen string = ''

@description('A connection\'s budget of client calls at once (CLIENT_CALL_BURST): a token bucket this big, refilled at clientCallRate a second; a call over it is refused with one error and nothing else.')
@minValue(1)
@maxValue(10000)
param clientCallBurst int = 20

@description('Tokens a second a connection\'s call budget refills (CLIENT_CALL_RATE); 0 turns the budget off.')
@minValue(0)
@maxValue(10000)
param clientCallRate int = 5

@description('The largest message a client may send with send or sendToRoom, in bytes of JSON (CLIENT_MESSAGE_MAX_BYTES); servers\' HTTP sends keep 65536.')
@minValue(1)
@maxValue(65536)
param clientMessageMaxBytes int = 16384

@description('The most members a client\'s join may make a room (ROOM_MAX_MEMBERS): a join beyond it is refused as full. Empty: no cap. Counting costs the join one table request per 1,000 members.')
param roomMaxMembers string = ''

@description('The queue of the host storage (AzureWebJobsStorage) that carries the presence feed for backends (PRESENCE_FEED_QUEUE): every presence, membership and room occupancy change as a JSON message, one Put Message each. Empty: no feed. 3 to 63 lowercase letters, digits and single hyphens; not presence-grace.')
param presenceFeedQueue string = ''

@description('Members beyond which a room hears its members\' presence in batches (ROOM_BATCH_ABOVE): one presenceBatch a room per ROOM_BATCH_SECONDS instead of one message per change.')
@minValue(0)
@maxValue(1000000)
param roomBatchAbove int = 200

@description('How often a big room hears its batch of presence changes, in seconds (ROOM_BATCH_SECONDS).')
@minValue(1)
@maxValue(60)
param roomBatchSeconds int = 2

@description('The most live connections one user may hold (USER_MAX_CONNECTIONS): a connection beyond it is closed and not mapped. Empty: no cap.')
param userMaxConnections string = ''

@description('Grace period in seconds (PRESENCE_GRACE_SECONDS): a user whose last connection ends is announced offline only if no connection is back within it (0 announces at once; at most 3600). The decision travels as a delayed message on the host storage\'s queue.')
@minValue(0)
@maxValue(3600)
param presenceGraceSeconds int = 15

@description('Partitions per expiry-index bucket (MAPPING_INDEX_SHARDS): each takes about 2,000 writes/s; at half that for headroom, ceil(peak connects and refreshes per second / 1,000). Changing it orphans nothing.')
@minValue(1)
@maxValue(999)
param mappingIndexShards int = 8

@description('SignalR groups the sweep lists concurrently (MAPPING_LISTING_GROUPS), 200 connections a request: 16 list 1,000,000 connections at 30 ms a request in about 10 s. Changing it loses nobody (an unlisted connection is HEAD-checked and regrouped).')
@minValue(1)
@maxValue(999)
param mappingListingGroups int = 16

@description('NCRONTAB schedule of the stale-row sweeper (SWEEP_SCHEDULE): six fields, seconds first, UTC.')
param sweepSchedule string = '0 */5 * * * *'

@description('Most instances the function app may scale out to (40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each function app instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Browser origins allowed to call the function app (CORS), for example the chat page\'s origin; empty allows none.')
param corsAllowedOrigins array = []

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
// Comma-separated parameters (azd env values are strings) as arrays; client ids and audiences hold no spaces.
var allowedApplications = empty(authAllowedApplications) ? [] : split(replace(authAllowedApplications, ' ', ''), ',')
var allowedAudiences = empty(authAllowedAudiences) ? [] : split(replace(authAllowedAudiences, ' ', ''), ',')
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-${resourceToken}'
// The name stays within the 63 characters a container name allows.
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'core/identity/user-assigned-identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-func-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'core/monitor/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage/storage-account.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    tableName: mappingTableName
  }
}

module signalR 'core/signalr/signalr.bicep' = {
  name: 'signalr'
  scope: rg
  params: {
    name: 'sigr-${resourceToken}'
    location: location
    tags: tags
    skuName: signalRSku
    capacity: signalRCapacity
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    signalRName: signalR.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

// The person running azd may reach the table and the SignalR Service from their machine (optional).
module deployerAccess 'app/deployer-access.bicep' = if (!empty(principalId)) {
  name: 'deployer-access'
  scope: rg
  params: {
    principalId: principalId
    principalType: principalType
    storageAccountName: storage.outputs.name
    signalRName: signalR.outputs.name
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    signalRHostName: signalR.outputs.hostName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    signalRHubName: signalRHubName
    mappingTableName: storage.outputs.tableName
    mappingTtlSeconds: mappingTtlSeconds
    mappingMaxAgeSeconds: mappingMaxAgeSeconds
    presenceEvents: presenceEvents
    presenceAudience: presenceAudience
    presenceWatch: presenceWatch
    directMessages: directMessages
    roomsOpen: roomsOpen
    presenceGraceSeconds: presenceGraceSeconds
    clientCallBurst: clientCallBurst
    clientCallRate: clientCallRate
    clientMessageMaxBytes: clientMessageMaxBytes
    roomMaxMembers: roomMaxMembers
    presenceFeedQueue: presenceFeedQueue
    roomBatchAbove: roomBatchAbove
    roomBatchSeconds: roomBatchSeconds
    userMaxConnections: userMaxConnections
    mappingIndexShards: mappingIndexShards
    mappingListingGroups: mappingListingGroups
    sweepSchedule: sweepSchedule
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    corsAllowedOrigins: corsAllowedOrigins
    authClientId: authClientId
    authTenantId: authTenantId
    authAllowedApplications: allowedApplications
    authAllowedAudiences: allowedAudiences
    pythonVersion: pythonVersion
  }
  // The identity must hold its storage roles before the app first starts and fetches its package.
  dependsOn: [
    rbac
  ]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.uri
output AZURE_SIGNALR_NAME string = signalR.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SIGNALR_HUB string = signalRHubName
