"""Values several layers share, in one place (as titiler's ``resources/enums.py``): media types,
the Sentinel-2 bands detection reads, mask classes, and the pattern of job and product ids."""
from __future__ import annotations

import re

# media types of the files results are made of
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOJSON_MEDIA_TYPE = "application/geo+json"
JSON_MEDIA_TYPE = "application/json"
CSV_MEDIA_TYPE = "text/csv"
PNG_MEDIA_TYPE = "image/png"

# Sentinel-2 band names the detector works with, in model order (the model's weights say
# which they were trained on: ``pipeline.methods`` checks them against these)
DETECTION_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")

# mask classes (uint8)
DRY = 0
WATER = 1
INVALID = 255

# a job id, or the id of a product a job published: letters, digits, '-' and '_' (uuid4 ids
# of jobs, ``{job}--t<time>`` of a series' dates)
PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
