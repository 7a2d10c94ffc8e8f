"""One settings object, read from the environment (``ROUTER_ML_*``) with embedded defaults."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
# src/router_ml -> project root, when running from a checkout (editable install).
PROJECT_ROOT = PACKAGE_DIR.parent.parent


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "router-ml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_ML_")

    data_mirror: Path | None = None
    """A local directory laid out like the public datasets mirror; read instead of downloading."""
    cache_dir: Path = _default_cache_dir()
    """Downloaded dataset files and embeddings live here (never inside a read-only mirror)."""
    manifest: Path = PROJECT_ROOT / "datasets" / "manifest.tsv"
    paraphrase_manifest: Path = PROJECT_ROOT / "datasets" / "paraphrase.tsv"
    """Pinned labeled paraphrase pairs (PAWS-Wiki), for the semantic cache benchmark."""
    paraphrase_mirror: Path | None = None
    """A local directory laid out like shared/paraphrase; read instead of downloading."""
    traces_manifest: Path = PROJECT_ROOT / "datasets" / "traces.tsv"
    """Pinned real usage traces (ServeGen, BurstGPT), for the usage-forecast backtest."""
    traces_mirror: Path | None = None
    """A local directory laid out like shared/traces; read instead of downloading."""
    outcomes_path: Path = PROJECT_ROOT / "data" / "outcomes.parquet"
    replay_path: Path = PROJECT_ROOT / "data" / "replay.parquet"
    """RouterBench's slice of the outcomes table (``router-ml datasets replay``): the recorded answers the replay
    provider serves and the demo traffic's prompts when there is no full outcomes table."""
    github_raw_base: str = "https://raw.githubusercontent.com"
    bundle: Path = PROJECT_ROOT / "models" / "default"
    """The router bundle the server loads."""
    bundle_watch_seconds: float = 2.0
    """How often each server worker looks whether its bundle changed on disk (and then reloads it)."""
    provider: str = "replay"
    """Upstream for served models: 'replay' (recorded answers, offline), 'openai' (one OpenAI-compatible URL)
    or 'catalog' (a provider per model, from providers_file)."""
    replay_speed: float = 1.0
    """Replay latency multiplier: 1 replays recorded latencies, 0 answers at once."""
    providers_file: Path | None = None
    """Provider catalog (TOML) for ROUTER_ML_PROVIDER=catalog: which provider and key serve each model."""
    upstream_base_url: str | None = None
    upstream_api_key: str | None = None
    store_url: str = f"sqlite:///{PROJECT_ROOT / 'data' / 'calls.db'}"
    """Call log database (SQLAlchemy URL): SQLite by default, PostgreSQL to scale out."""
    cache: str = "exact"
    """Response cache: 'off', 'exact' (identical requests of a tenant) or 'semantic' (also near-identical last
    messages; see serve/gateway/cache.py for its measured wrong-hit rate)."""
    cache_ttl_seconds: float = 3600.0
    redis_url: str | None = None
    """Redis for budgets, rate limits and the response cache shared by every worker and replica; unset: each
    process keeps its own."""
    store_journal: Path | None = PROJECT_ROOT / "data" / "call-journal"
    """Local journal of logged calls not yet committed, replayed after a crash (see calllog/store.py); one per host."""
    admin_key: str | None = None
    """Key of the gateway's /admin/* endpoints (sent as 'Authorization: Bearer'); unset: they answer 403."""
    judge_model: str | None = None
    """A served model that judges routed answers against the tenant's reference model's (shadow judging,
    serve/gateway/shadow.py); unset: no shadow judging. With the replay provider, 'replay-judge' grades by the
    answers' recorded quality."""
    shadow_rate: float = 0.03
    """With a judge model: the share of a tenant's routed calls (answered by another model than its reference
    model) that are also sent to the reference and judged, after the client has its answer."""
    shadow_cap_usd_day: float = 1.0
    """With a judge model: a tenant's shadow and judge spend per UTC day (per process) beyond which no call is
    judged."""
    online_target: float | None = None
    """With a judge model: route each tenant that has a reference model at its online operating point, which keeps
    the lower bound of the judged quality share at this share of the reference's (serve/gateway/steering.py);
    unset: the bundle's calibrated policy."""
    mlflow_uri: str = f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    """MLflow tracking store: a local SQLite file by default."""
    mlflow_artifacts: Path = PROJECT_ROOT / "mlruns" / "artifacts"
    """Where a new MLflow experiment keeps its artifacts (the logged bundles)."""
    static_encoder: Path = PROJECT_ROOT / "models" / "minilm-static"
    """The static encoder's directory: built there by ``router-ml train`` on first use, loaded by bundles."""


    def replay_table(self) -> Path:
        """The table the replay provider and the demo traffic read: the full outcomes table when it has been
        built (it holds every source's recorded answers), else RouterBench's slice."""
        return self.outcomes_path if self.outcomes_path.is_file() else self.replay_path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
