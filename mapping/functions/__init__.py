"""Azure Functions: the blueprint's triggers, their registration on an app, the process's shared state and the OpenAPI
document; the only code that imports `azure.functions`. May import everything else in `mapping`."""
