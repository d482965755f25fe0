"""Monitoring: water over a place through time (water-timeseries, -change, -frequency)."""
