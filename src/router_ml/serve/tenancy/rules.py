"""What a tenant's settings make of a call: which models it may use and the routing policy that applies."""

from __future__ import annotations

from router_ml.routers.policy import Policy
from router_ml.serve.tenancy.tenants import Tenant

_OBJECTIVES = ("quality", "lam", "margin", "reference")  # one objective: a request that picks one replaces the tenant's


class NotAllowed(Exception):
    """The tenant may not use what the call asks for; ``param`` names the request field that asks it."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def check_model(tenant: Tenant | None, model: str, param: str = "model") -> None:
    """NotAllowed naming ``model`` when the tenant may not use it."""
    if tenant is not None and not tenant.allows(model):
        raise NotAllowed(f"model {model!r} is not allowed for tenant {tenant.name!r}", param)


def effective_policy(tenant: Tenant | None, requested: Policy, bundle_models: list[str],
                     param: str = "router_ml") -> Policy:
    """The tenant's default policy overridden by the request's fields (``quality``, ``lam`` and ``margin`` with its
    ``reference`` count as one objective: a request setting one drops the tenant's), confined to the tenant's
    allowed models."""
    if tenant is None:
        return requested
    asked = requested.model_dump(exclude_none=True)
    base = tenant.policy.model_dump(exclude_none=True)
    if any(k in asked for k in _OBJECTIVES):
        base = {k: v for k, v in base.items() if k not in _OBJECTIVES}
    policy = Policy(**{**base, **asked})
    if tenant.allowed_models is None:
        return policy
    if policy.models is not None:
        for model in policy.models:
            check_model(tenant, model, param)
        return policy
    routable = [m for m in bundle_models if tenant.allows(m)]
    if not routable:
        raise NotAllowed(f"none of tenant {tenant.name!r}'s allowed models is known to the router", param)
    return policy.model_copy(update={"models": routable})
