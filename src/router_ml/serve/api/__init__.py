"""HTTP only: one APIRouter per area (chat, route, feedback, meta, admin, analytics, metrics, dashboard), the
request schemas, the auth dependencies, and the mapping of domain and provider errors to OpenAI-style answers."""
