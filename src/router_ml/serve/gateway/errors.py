"""What can stop a call before any upstream attempt, in the domain's words; :mod:`router_ml.serve.api.errors`
gives each its HTTP status. Each names the request field at fault in ``param``."""

from __future__ import annotations


class CallError(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidCall(CallError):
    """The call asks for something malformed or impossible (a policy naming models the router does not know)."""


class ModelNotServed(CallError):
    """The call names a model no provider here serves."""


class NoCandidates(CallError):
    """No provider serves any model the call's policy allows."""
