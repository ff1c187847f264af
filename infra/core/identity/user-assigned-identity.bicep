// The user-assigned managed identity the function app uses for every service it reaches
// (host storage, the Connections table, Azure SignalR Service, Application Insights).

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region of the identity.')
param location string = resourceGroup().location

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
