"""What an operator of `recognize serve` can tune. Every limit has a default that is safe on a laptop."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; anything but loopback needs a token")
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token required on every route but /healthz")
    max_batch_size: int = Field(8, ge=1, description="most frames one stage call takes from concurrent requests")
    max_wait_ms: float = Field(10.0, ge=0.0, le=10_000, description="how long a stage waits to fill a batch")
    max_queue: int = Field(32, ge=1, description="requests admitted at once (running or waiting); more get 503")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with a 503")
    max_upload_mb: float = Field(25.0, gt=0, description="largest request body")
    max_pixels: int = Field(40_000_000, ge=1, description="largest image, in pixels (width x height)")
    max_images: int = Field(16, ge=1, description="most images in one request")
    feature_cache_mb: float = Field(512.0, ge=0, description="SAM / Grounding DINO image features kept for re-asks")
    result_cache_mb: float = Field(256.0, ge=0,
                                   description="per-stage results kept so a re-ask re-runs only later stages")
    max_variants: int = Field(16, ge=1, description="distinct override sets kept built (models are shared anyway)")
    device: str | None = Field(None, description="overrides the recipe's device")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServeSettings:
        if not is_loopback(self.host) and not (self.token and self.token.get_secret_value()):
            raise ValueError(f"binding {self.host} lets other machines in: give --token "
                             "(or $RECOGNIZE_SERVE_TOKEN); only loopback addresses may run without one")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
