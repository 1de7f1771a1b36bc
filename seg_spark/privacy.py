"""Pseudonymisation: customer ids replaced by a keyed hash (HMAC-SHA256) inside Spark.

The key comes from an environment variable named in config and is never written to a
table, a log or MLflow. The same key gives the same pseudonym in every source, so
transactions, profiles and events still join.
"""

from __future__ import annotations

import hashlib
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

from seg_spark.config import PrivacySettings
from seg_spark.errors import DataError

_BLOCK = 64  # SHA-256 block size in bytes


class PrivacyError(DataError):
    """Pseudonymisation is asked for but cannot be done safely."""


def pseudonym_key(settings: PrivacySettings) -> bytes:
    """The key from the configured environment variable.

    Raises:
        PrivacyError: The variable is unset or too short to be a secret.
    """
    key = os.environ.get(settings.key_env, "")
    if len(key) < 16:
        raise PrivacyError(
            f"privacy.pseudonymise_customer_id is on but environment variable {settings.key_env} "
            f"{'is not set' if not key else 'holds fewer than 16 characters'}: export a secret of at least "
            "16 characters there (it is never stored), or turn pseudonymisation off"
        )
    return key.encode("utf-8")


def hmac_sha256(value: Column, key: bytes) -> Column:
    """HMAC-SHA256 of ``value`` (as UTF-8 text) as 64 hex characters; null stays null."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner_pad = bytearray(b ^ 0x36 for b in key)
    outer_pad = bytearray(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), value.cast("string").cast("binary")), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)
