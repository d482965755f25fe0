"""What several test modules share: the real server (``server``), the map engine's catalogue
and masks (``mapserver``), the stand-ins of remote services (``standins``, ``geoserver_standin``,
``objectstore``, ``postgres``) and the dated scenes of the monitoring tests
(``monitoring_scenes``). Fixtures among them are registered in tests/conftest.py."""
