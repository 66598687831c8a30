"""Hold-outs in S3-compatible object storage (AWS, MinIO, Ceph, SeaweedFS, S3Proxy...).

botocore signs a presigned GET locally (no network call) and the download goes through the same
checked path as a URL source (holdout_http): the endpoint's host must be on the admin's list,
the credentials go only to the host their Secret's owner pinned, every byte is counted. Only the
rollout's own Secret signs: the operator's cloud identity (IRSA, instance profile) is never used,
or any tenant could read whatever the operator may.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from modelrollout.core.spec import S3Source
from modelrollout.holdout_http import SecretGetter, TooLarge, canon, checked_url, download, pinned_secret
from modelrollout.holdout_parse import HoldoutError

PRESIGN_SECONDS = 900
STATUSES = {403: "access denied: check the Secret's keys and the bucket's policy",
            404: "no such bucket or key", 400: "refused: is spec.holdout.s3.region the bucket's region?"}


def locate(s3: S3Source) -> tuple[str, str, str, str]:
    """(bucket, key, endpoint URL, addressing style): path style on a given endpoint (what
    MinIO-like stores expect), virtual hosts on AWS where the bucket name allows it."""
    bucket, _, key = s3.uri.removeprefix("s3://").partition("/")
    if s3.endpoint is not None:
        return bucket, key, s3.endpoint.rstrip("/"), "path"
    return bucket, key, f"https://s3.{s3.region}.amazonaws.com", "path" if "." in bucket else "virtual"


def presign(s3: S3Source, keys: tuple[str, str] | None) -> str:
    """A GET URL for the object, signed with `keys` (access key id, secret), or unsigned."""
    import botocore.session  # only here: a few hundred ms to import, needed only for S3 sources
    from botocore import UNSIGNED
    from botocore.config import Config

    bucket, key, endpoint, style = locate(s3)
    cfg = Config(signature_version=UNSIGNED if keys is None else "s3v4", s3={"addressing_style": style},
                 retries={"max_attempts": 0})
    session = botocore.session.Session()
    session.set_config_variable("credentials_file", "/dev/null")  # never the operator's own profiles
    session.set_config_variable("config_file", "/dev/null")
    client = session.create_client("s3", region_name=s3.region, endpoint_url=endpoint, config=cfg,
                                   aws_access_key_id=keys[0] if keys else None,
                                   aws_secret_access_key=keys[1] if keys else None)
    return str(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=PRESIGN_SECONDS))


def host_of(s3: S3Source) -> tuple[str, int | None]:
    """The host the request goes to, before anything is signed for it."""
    bucket, _, endpoint, style = locate(s3)
    u = urlsplit(endpoint)
    host = canon(u.hostname or "")
    return (f"{bucket}.{host}" if style == "virtual" else host), u.port


async def fetch_s3(s3: S3Source, ns: str, secret: SecretGetter, *, hosts: frozenset[str],
                   timeout: aiohttp.ClientTimeout, limit: int, sizer: Callable[[str], TooLarge]) -> tuple[bytes, str]:
    shown = s3.uri
    host, port = host_of(s3)
    endpoint = f"{urlsplit(locate(s3)[2]).scheme}://{host}{f':{port}' if port else ''}/"
    checked_url(endpoint, "spec.holdout.s3.endpoint", hosts)  # listed, before any Secret is read
    keys = None
    if s3.secret_ref is not None:
        ref, what = s3.secret_ref, "the S3 hold-out"
        keys = (await pinned_secret(secret, ns, ref.name, ref.access_key_id_key, host, port, what),
                await pinned_secret(secret, ns, ref.name, ref.secret_access_key_key, host, port, what))
        keys = (keys[0].strip(), keys[1].strip())
        if not all(keys) or any(not (" " < c <= "~") for k in keys for c in k):
            raise HoldoutError(f"Secret {ref.name}: keys {ref.access_key_id_key!r} and {ref.secret_access_key_key!r} "
                               f"must hold an access key id and secret (printable, no spaces)", "HoldoutInvalid")
    signed = await asyncio.to_thread(presign, s3, keys)
    url, _, got, got_port = checked_url(signed, "spec.holdout.s3", hosts)
    if (got, got_port) != (host, port):  # what was checked and pinned is what is contacted
        raise HoldoutError(f"{shown}: the signed URL names host {got}, not {host}", "HoldoutInvalid")
    return await download(url, shown, {}, limit=limit, too_large=sizer(shown), timeout=timeout,
                          statuses=STATUSES), shown
