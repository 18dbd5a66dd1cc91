"""The RAM paper's data engine: localize each tag, crop its regions, re-check each crop with the tagger,
cluster every tag's crops and drop the outliers. One package, used by recipes on one image or a dataset.

The logic is plain functions with no Stage, model or file layout attached (testable on arrays, the same
in one process or on a cluster); the stages are thin wrappers that add the tagger and Frame bookkeeping:

- `crops`:       `crop_box` / `crop_region`, a region's pixels with padding, clipped to the image.
- `confirm`:     `confirm_regions` / `confirm_many` keep a region only when a scoring callable confirms its
                 tag on its crop; `tags_without_confirmed_region` says which image tags lost their support.
- `outliers`:    `find_outliers`, per tag K-Means++ over the crops' embeddings, drop the farthest.
- `crop_embeddings`: the crop embeddings `region_confirm` computed, taken by `region_outliers` (each
                 crop encoded once).
- `given_tags`:  `merge_tags`, `read_sidecar`, `CaptionsFile`: tags and captions given with the images.
- `captions`:    `CaptionParser` / `parse_caption_tags`: vocabulary names found in captions.
- `reasons`:     the drop reasons recorded in `Frame.dropped`.
- stages:        `merge_tags_stage`, `confirm_stage` (`region_confirm`), `outliers_stage` (`region_outliers`),
                 on `tagger_access` (the tagger that judges crops); `clip_images` (CLIP crop features).
- `plugin`:      registers the stages and the data-engine outputs, like any third-party plugin.
"""

from recognize.data_engine.captions import (
    CaptionParser,
    parse_caption_tags,
    plural_forms,
)
from recognize.data_engine.confirm import (
    RegionCheck,
    ScoreFn,
    TagPolicy,
    confirm_many,
    confirm_regions,
    tags_without_confirmed_region,
)
from recognize.data_engine.crops import crop_box, crop_region
from recognize.data_engine.given_tags import (
    CaptionsFile,
    GivenTags,
    clean_tag_name,
    merge_tags,
    read_sidecar,
    split_tag_text,
    vocabulary_index,
)
from recognize.data_engine.outliers import TagOutliers, cluster_distances, find_outliers

__all__ = [
    "CaptionParser", "CaptionsFile", "GivenTags", "RegionCheck", "ScoreFn", "TagOutliers", "TagPolicy",
    "clean_tag_name", "cluster_distances", "confirm_many", "confirm_regions", "crop_box", "crop_region",
    "find_outliers", "merge_tags", "parse_caption_tags", "plural_forms", "read_sidecar", "split_tag_text",
    "tags_without_confirmed_region", "vocabulary_index",
]
