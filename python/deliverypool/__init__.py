"""deliverypool: routes outbound mail to a normal or a high-risk delivery pool."""

from deliverypool._core import (
    ContentType,
    Decision,
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
    "ContentType",
    "Decision",
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
