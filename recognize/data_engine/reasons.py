"""Why the data engine dropped a region or a tag: the reasons recorded in `Frame.dropped`, shared by the
stages that drop and the report that counts the drops."""

from __future__ import annotations

REASON_NOT_CONFIRMED = "not confirmed on its crop"
REASON_OUTSIDE = "box outside the image"
REASON_UNKNOWN_TAG = "tag unknown to the tagger"
REASON_OUTLIER = "outlier among the tag's crops"
REASON_NO_CONFIRMED_REGION = "no confirmed region"
REASON_ALL_REJECTED = "all regions rejected"
