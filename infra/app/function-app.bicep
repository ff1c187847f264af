// The function app: Flex Consumption (FC1), Python (3.11 by default), one user-assigned managed identity
// for everything it reaches, App Service Authentication (Microsoft Entra ID) in front of it.

@description('Name of the function app (globally unique; it becomes <name>.azurewebsites.net).')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region of the plan and the function app; it must offer Flex Consumption.')
param location string = resourceGroup().location

@description('Tags applied to the plan and the function app.')
param tags object = {}

@description('azd service name from azure.yaml; azd finds the app to deploy to by this tag.')
param serviceName string = 'api'

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of the user-assigned managed identity (the __clientId of every identity-based connection).')
param identityClientId string

@description('Name of the storage account for host storage, the deployment package and the Connections table.')
param storageAccountName string

@description('Blob container that holds the deployment package.')
param deploymentContainerName string

@description('Host name of the Azure SignalR Service instance (<name>.service.signalr.net).')
param signalRHostName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('SignalR hub name, used by every SignalR binding as %SIGNALR_HUB%.')
param signalRHubName string

@description('Table that holds the user-to-connection map.')
param mappingTableName string

@description('Lease length in seconds: a connection row whose LastSeen is older is not live.')
@minValue(1)
param mappingTtlSeconds int

@description('Hard limit in seconds: a row the SignalR service cannot vouch for is removed once its LastSeen is this old.')
@minValue(1)
param mappingMaxAgeSeconds int

@description('Whether presence changes (a user comes online or goes offline) are broadcast to the hub.')
param presenceEvents bool

@description('Who hears a user\'s presence changes: scoped (their rooms, their watchers, their own tabs) or hub (everyone).')
@allowed([
  'scoped'
  'hub'
])
param presenceAudience string

@description('Whom a connection may watch for presence changes: room-members, anyone or nobody.')
@allowed([
  'room-members'
  'anyone'
  'nobody'
])
param presenceWatch string

@description('To whom a client may send a direct message: shared-room, anyone or nobody.')
@allowed([
  'shared-room'
  'anyone'
  'nobody'
])
param directMessages string

@description('Rooms any signed-in client may join: names and prefixes ending in *, separated by spaces; empty: none.')
param roomsOpen string

@description('Seconds after a user\'s last connection ends before they are announced offline (0 to 3600).')
@minValue(0)
@maxValue(3600)
param presenceGraceSeconds int

@description('A connection\'s budget of client calls at once (1 to 10000).')
@minValue(1)
@maxValue(10000)
param clientCallBurst int

@description('Tokens a second a connection\'s call budget refills (0 to 10000; 0: no budget).')
@minValue(0)
@maxValue(10000)
param clientCallRate int

@description('The largest message of a client\'s send or sendToRoom, in bytes of JSON (1 to 65536).')
@minValue(1)
@maxValue(65536)
param clientMessageMaxBytes int

@description('The most members a client\'s join may make a room (1 to 1000000); empty: no cap.')
param roomMaxMembers string

@description('The queue of the host storage that carries the presence feed for backends; empty: no feed.')
param presenceFeedQueue string

@description('Members beyond which a room hears its members\' presence in batches.')
@minValue(0)
@maxValue(1000000)
param roomBatchAbove int

@description('How often a big room hears its batch of presence changes, in seconds.')
@minValue(1)
@maxValue(60)
param roomBatchSeconds int

@description('The most live connections one user may hold (1 to 1000000); empty: no cap.')
param userMaxConnections string

@description('Partitions per expiry-index bucket (1 to 999).')
@minValue(1)
@maxValue(999)
param mappingIndexShards int

@description('SignalR listing groups of the sweep (1 to 999).')
@minValue(1)
@maxValue(999)
param mappingListingGroups int

@description('NCRONTAB schedule (six fields, seconds first, UTC) of the stale-row sweeper.')
param sweepSchedule string

@description('Most instances the app may scale out to (Flex Consumption allows 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Browser origins allowed to call the app\'s HTTP functions (CORS); empty allows none.')
param corsAllowedOrigins array = []

@description('Application (client) id of the Microsoft Entra app registration that App Service Authentication validates tokens for.')
param authClientId string

@description('Tenant id whose Microsoft Entra ID issues the tokens App Service Authentication accepts.')
param authTenantId string

@description('Client (application) ids whose tokens App Service Authentication accepts (the token\'s appid/azp claim); empty accepts any client application of the tenant.')
param authAllowedApplications array = []

@description('Audiences (aud claim) App Service Authentication accepts; empty means the app registration\'s client id and api://<client id>.')
param authAllowedAudiences array = []

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

var allowedAudiences = empty(authAllowedAudiences) ? [
  authClientId
  'api://${authClientId}'
] : authAllowedAudiences
// An empty policy restricts nothing; allowedApplications is set only when the list is not empty.
var defaultAuthorizationPolicy = empty(authAllowedApplications) ? {} : {
  allowedApplications: authAllowedApplications
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    // Only siteConfig properties that Flex Consumption accepts. ftpsState is rejected there (ARM error
    // 51021): FTP is turned off by the ftp basicPublishingCredentialsPolicies below instead.
    // http20Enabled and scmMinTlsVersion are left out: the Flex Consumption documentation does not
    // list them, and the platform defaults apply.
    siteConfig: {
      minTlsVersion: '1.2'
      cors: {
        allowedOrigins: corsAllowedOrigins
        supportCredentials: false
      }
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// The site's config resources (appsettings, authsettingsV2, the two basicPublishingCredentialsPolicies)
// are written one after the other: parallel writes to one site's configuration race (lost app settings,
// 409 Conflict). The chain is appSettings -> authSettings -> ftpPublishing -> scmPublishing.

// Every setting the app reads (mapping/settings.py, APP_SETTING_NAMES) is set here. Connections are
// identity-based sections (<NAME>__serviceUri, __credential, __clientId): no key, no connection string.
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are not set: Flex Consumption takes the
// runtime from functionAppConfig and rejects those settings.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    // The queue endpoint serves the host's own queues and the app's delayed actions (queue presence-grace:
    // mapping/queue.py sends, a queue trigger reads).
    AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
    MAPPING_STORAGE__tableServiceUri: storage.properties.primaryEndpoints.table
    MAPPING_STORAGE__credential: 'managedidentity'
    MAPPING_STORAGE__clientId: identityClientId
    MAPPING_TABLE: mappingTableName
    MAPPING_TTL_SECONDS: string(mappingTtlSeconds)
    MAPPING_MAX_AGE_SECONDS: string(mappingMaxAgeSeconds)
    AzureSignalRConnectionString__serviceUri: 'https://${signalRHostName}'
    AzureSignalRConnectionString__credential: 'managedidentity'
    AzureSignalRConnectionString__clientId: identityClientId
    SIGNALR_HUB: signalRHubName
    PRESENCE_EVENTS: presenceEvents ? 'true' : 'false'
    PRESENCE_AUDIENCE: presenceAudience
    PRESENCE_WATCH: presenceWatch
    DIRECT_MESSAGES: directMessages
    ROOMS_OPEN: roomsOpen
    PRESENCE_GRACE_SECONDS: string(presenceGraceSeconds)
    CLIENT_CALL_BURST: string(clientCallBurst)
    CLIENT_CALL_RATE: string(clientCallRate)
    CLIENT_MESSAGE_MAX_BYTES: string(clientMessageMaxBytes)
    ROOM_MAX_MEMBERS: roomMaxMembers
    PRESENCE_FEED_QUEUE: presenceFeedQueue
    ROOM_BATCH_ABOVE: string(roomBatchAbove)
    ROOM_BATCH_SECONDS: string(roomBatchSeconds)
    USER_MAX_CONNECTIONS: userMaxConnections
    MAPPING_INDEX_SHARDS: string(mappingIndexShards)
    MAPPING_LISTING_GROUPS: string(mappingListingGroups)
    SWEEP_SCHEDULE: sweepSchedule
    // Not a credential: the component refuses telemetry without a Microsoft Entra token
    // (DisableLocalAuth), which the next setting makes the SDK fetch with the managed identity.
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  }
}

// App Service Authentication (Easy Auth) with Microsoft Entra ID. It requires a signed-in caller and answers 401
// itself (Return401) before any function runs, on every path but authExcludedPaths below: the platform validates
// bearer tokens, sets x-ms-client-principal-* from a valid token and strips any copy a client sends, so negotiate
// (not excluded) can trust x-ms-client-principal-name, and an unauthenticated negotiate never reaches the
// signalRConnectionInfo binding (which, without that header, fails with a 500 before the function runs).
// The excluded paths are the ones that do not trust the header and are guarded by the Functions host instead:
// the SignalR upstream webhook (the signalr_extension system key in ?code=, set by the postdeploy hook; with the
// identity-based SignalR connection the extension checks no signature, so that key is all that guards it) and the
// function-key routes called by servers (/api/send, /api/users..., /api/rooms/...), plus the anonymous OpenAPI
// document. A trailing /* excludes everything under a path (the configuration file reference's
// "/path3/subpath/*").
var authExcludedPaths = [
  '/runtime/webhooks/signalr'
  '/api/send'
  '/api/users'
  '/api/users/*'
  '/api/rooms/*'
  '/api/openapi.json'
]

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: authExcludedPaths
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${authTenantId}/v2.0'
        }
        // Tokens must be issued for one of the allowed audiences and, when authAllowedApplications
        // is set, to one of those client applications; anything else is refused by the platform
        // (a token it cannot validate: 401; one from a client application not allowed: 403).
        validation: {
          allowedAudiences: allowedAudiences
          defaultAuthorizationPolicy: defaultAuthorizationPolicy
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
    httpSettings: {
      requireHttps: true
    }
  }
  dependsOn: [
    appSettings
  ]
}

// No FTP or basic-auth (publishing password) deployments: azd deploys with a Microsoft Entra token.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
  dependsOn: [
    authSettings
  ]
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
  dependsOn: [
    ftpPublishing
  ]
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output uri string = 'https://${functionApp.properties.defaultHostName}'
