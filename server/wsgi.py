"""WSGI entry point: ``gunicorn aquamask.server.wsgi:app``."""
from aquamask.server.app import create_app

app = create_app()
