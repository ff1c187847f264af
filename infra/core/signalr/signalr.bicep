// Azure SignalR Service in Serverless mode, reached by Microsoft Entra ID only (access keys off).
// The upstream URL (where the service calls the function app's SignalR triggers) is not set here:
// it carries the function app's signalr_extension system key, which exists only after the code is
// deployed. The azd postdeploy hook (infra/hooks/postdeploy.*) sets it.

@description('Name of the Azure SignalR Service instance (globally unique).')
param name string

@description('Azure region of the SignalR Service instance.')
param location string = resourceGroup().location

@description('Tags applied to the SignalR Service instance.')
param tags object = {}

@description('SKU: Free_F1 (20 connections, 20,000 messages a day, no SLA; at most five Free units per subscription and region), Standard_S1 or Premium_P1 (1,000 connections per unit).')
@allowed([
  'Free_F1'
  'Standard_S1'
  'Premium_P1'
])
param skuName string = 'Free_F1'

@description('Units of the SKU (Standard and Premium: 1 to 10, then multiples of 10 up to 100); Free_F1 always has 1.')
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
param capacity int = 1

@description('Browser origins allowed to connect to the service; the client still needs an access token from negotiate.')
param allowedOrigins array = [
  '*'
]

resource signalR 'Microsoft.SignalRService/signalR@2024-03-01' = {
  name: name
  location: location
  tags: tags
  kind: 'SignalR'
  sku: {
    name: skuName
    capacity: skuName == 'Free_F1' ? 1 : capacity
  }
  properties: {
    features: [
      {
        flag: 'ServiceMode'
        value: 'Serverless'
      }
      {
        flag: 'EnableConnectivityLogs'
        value: 'True'
      }
    ]
    cors: {
      allowedOrigins: allowedOrigins
    }
    // Access keys off: the function app reaches the service with its managed identity.
    disableLocalAuth: true
    disableAadAuth: false
    publicNetworkAccess: 'Enabled'
    tls: {
      clientCertEnabled: false
    }
  }
}

output name string = signalR.name
output id string = signalR.id
output hostName string = signalR.properties.hostName
