"""Service settings, read once from PREDICTOR_* environment variables at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", protected_namespaces=())

    # Defaults of the original release.
    model_path: str = "../predictor_train/outputs/alpaca_gpt4_bert/best_model.pt"
    model_name: str = "bert-base-uncased"
    max_length: int = Field(default=128, ge=1, le=4096)
    device: str | None = None  # None: cuda when available, else cpu
