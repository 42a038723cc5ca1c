"""The HTTP API (``spinner-jobs api``): enqueue and follow jobs over HTTP with an API key."""

from spinner_jobs.api.app import create_app
from spinner_jobs.api.keys import create_api_key
from spinner_jobs.api.server import ApiServer

__all__ = ["ApiServer", "create_api_key", "create_app"]
