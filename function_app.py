"""The Azure Functions app (Python v2 model): the mapper's functions, defined in mapping/functions/blueprint.py."""

import azure.functions as func

from mapping.functions.registration import register

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
register(app)
