// Optional role assignments for the person (or pipeline) running azd, so that they can run the sweep or
// use the mapping library from their own machine against the deployed table and SignalR Service with
// their Microsoft Entra sign-in (azure-identity's DefaultAzureCredential), without any key.
// main.bicep deploys this module only when principalId (azd's AZURE_PRINCIPAL_ID) is set.

@description('Object id of the principal running azd (AZURE_PRINCIPAL_ID).')
param principalId string

@description('Kind of principal: User, ServicePrincipal (a pipeline) or Group.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Name of the storage account that holds the Connections table.')
param storageAccountName string

@description('Name of the Azure SignalR Service instance.')
param signalRName string

// Storage Table Data Contributor: read and write the Connections table (the library, the sweep).
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

// SignalR Service Owner: the service's REST API (ask whether a connection is alive, send, close) and
// client access tokens, as the function app's identity has.
var signalRServiceOwnerRoleId = '7e4f1700-ea5a-4f59-8f37-079cfe29dce3'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource signalR 'Microsoft.SignalRService/signalR@2024-03-01' existing = {
  name: signalRName
}

resource deployerTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageTableDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: principalType
  }
}

resource deployerSignalRServiceOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(signalR.id, principalId, signalRServiceOwnerRoleId)
  scope: signalR
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', signalRServiceOwnerRoleId)
    principalId: principalId
    principalType: principalType
  }
}
