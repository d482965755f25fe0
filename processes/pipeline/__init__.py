"""The detection pipeline, as plain functions that know nothing of HTTP: sources give a
``Scene`` (``sources``), a detection method (``methods``) streams it into a mask
(``detection``), products are its COGs and STAC item (``products``); ``flow`` is the one path
from a request to a product, shared by water-detection and the monitoring processes."""
