"""deliverypool: routes outbound mail to a normal or a high-risk delivery pool."""

from deliverypool._core import (
    CacheStats,
    ContentType,
    Decision,
    DnsCache,
    DsnVerdict,
    HeaderFacts,
    MimePart,
    Policy,
    PolicyError,
    RecipientStatus,
    ScoreError,
    __version__,
    classify,
    classify_many,
    scan,
)

__all__ = [
    "CacheStats",
    "ContentType",
    "Decision",
    "DnsCache",
    "DsnVerdict",
    "HeaderFacts",
    "MimePart",
    "Policy",
    "PolicyError",
    "RecipientStatus",
    "ScoreError",
    "__version__",
    "classify",
    "classify_many",
    "scan",
]
