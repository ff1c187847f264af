"""The Azure Functions app (Python v2 model): the connection mapper's functions, defined in mapping/blueprint.py."""

import azure.functions as func

from mapping.registration import register

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
register(app)
