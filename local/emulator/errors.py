"""The `x-ms-error-code` header Azure SignalR Service puts on a 404 that says what does not exist, route by route.

A 404 alone says nothing: a wrong host, path or proxy answers it too. The service names what it did not find in the
`x-ms-error-code` response header (the data-plane reference documents the header on every route's error response:
Azure/azure-signalr docs/swagger/V20220601.json; MicrosoftDocs/azure-docs
articles/azure-signalr/swagger/signalr-data-plane-rest-v20241201.md @ 697d1a5), and the Management SDK, which the
Functions extension's `signalR` output uses, takes exactly these 404s as answers rather than failures. Sources,
Azure/azure-signalr @ 31686ed (2024-03-22):

- src/Microsoft.Azure.SignalR.Common/Constants.cs: `Headers.MicrosoftErrorCode` = "x-ms-error-code" and
  `ErrorCodes` (the values below).
- src/Microsoft.Azure.SignalR.Management/RestHubLifetimeManager.cs, `FilterExpectedResponse` (2xx, or a 404 whose
  first x-ms-error-code equals the expected code, ignoring case), per call:
  `AddToGroupAsync` (PUT .../groups/{group}/connections/{id}): Error.Connection.NotExisted;
  `CloseConnectionAsync` (DELETE .../connections/{id}) and `ConnectionExistsAsync` (HEAD .../connections/{id}):
  Warning.Connection.NotExisted; `UserExistsAsync` (HEAD .../users/{user}): Warning.User.NotExisted;
  `GroupExistsAsync` (HEAD .../groups/{group}): Warning.Group.NotExisted; `IsUserInGroup`
  (.../users/{user}/groups/{group}): Info.User.NotInGroup. Every other call (sends, removals, user group changes)
  accepts 2xx only.
- Commits aa3ddb5 and 2e19391 (2023-06-14, "Filter expected 404 responses for all REST API", "... for close
  connection REST Api") add those filters with end-to-end tests against a live service
  (test/Microsoft.Azure.SignalR.E2ETests/Management/ServiceHubContextE2EFacts.cs): adding or closing a nonexistent
  connection must not throw (a 404 with the code), nor must removing a nonexistent connection from a group or from
  all groups, or adding or removing a nonexistent user (accepted only as 2xx: the service answers success there).

Microsoft's own emulator (src/Microsoft.Azure.SignalR.Emulator/Controllers/SignalRServiceEmulatorWebApi.cs) answers
these 404s bare; this emulator answers as the service does.
"""

from __future__ import annotations

HEADER = "x-ms-error-code"

CONNECTION_NOT_EXISTED = "Warning.Connection.NotExisted"  # HEAD and DELETE .../connections/{id}
ADD_CONNECTION_NOT_EXISTED = "Error.Connection.NotExisted"  # PUT .../groups/{group}/connections/{id}
USER_NOT_EXISTED = "Warning.User.NotExisted"  # HEAD .../users/{user}
GROUP_NOT_EXISTED = "Warning.Group.NotExisted"  # HEAD .../groups/{group}
USER_NOT_IN_GROUP = "Info.User.NotInGroup"  # .../users/{user}/groups/{group}
