"""Where data comes from: the hold-out's and the drift reference's sources, one schema for both."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from modelrollout.core.specbase import MIB, Name, _bytes, _err, _Model


class SecretKeyRef(_Model):
    name: Name
    key: Name


class ConfigMapRef(_Model):
    name: Name
    key: Name


class UrlSource(_Model):
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret_ref: SecretKeyRef | None = None


class S3Credentials(_Model):
    """A Secret of the rollout's namespace holding an access key pair (the operator's own cloud
    identity is never used for a tenant's object: that would lend it the operator's reach)."""

    name: Name
    access_key_id_key: Name = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: Name = "AWS_SECRET_ACCESS_KEY"


class S3Source(_Model):
    uri: Annotated[str, Field(max_length=1100, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\x00-\x1f]+$")]
    endpoint: Annotated[str, Field(max_length=512, pattern=r"^https?://[^/?#@]+/?$")] | None = None  # default: AWS
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] = "us-east-1"
    secret_ref: S3Credentials | None = None  # none: an unsigned request (a public object)


class PvcSource(_Model):
    claim_name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    path: Name


class Source(_Model):
    """One source of a table (exactly one of configMapRef, url, pvc, s3 or file), its format and bounds."""

    config_map_ref: ConfigMapRef | None = None
    url: UrlSource | None = None
    pvc: PvcSource | None = None
    s3: S3Source | None = None
    file: Name | None = None
    format: Literal["csv", "parquet", "jsonl", "npz"] | None = None
    max_rows: int | None = Field(None, ge=1, le=10_000_000)
    max_size: Annotated[float, _bytes(1024 * MIB)] = 256 * 2**20
    seed: int = 0
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None  # refuse any other bytes

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        given = [n for n, f in (("configMapRef", "config_map_ref"), ("url", "url"), ("pvc", "pvc"), ("s3", "s3"),
                                ("file", "file")) if getattr(self, f) is not None]
        if len(given) != 1:
            raise _err("holdout_source", f"exactly one of configMapRef, url, pvc, s3 or file is required, got "
                       f"{', '.join(given) or 'none'}")
        return self


class ReferenceSource(Source):
    """Where the drift reference set is, as for the hold-out (no label column needed)."""
