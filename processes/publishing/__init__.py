"""Publishing: results as WMS/WCS layers. ``service`` records each layer in the job store and
chooses the engine (GeoServer when configured, the embedded one otherwise or meanwhile);
``base`` is the interface of an engine; ``mapserver`` and ``geoserver`` implement it."""
