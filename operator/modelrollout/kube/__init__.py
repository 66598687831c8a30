"""Kubernetes objects (objects.py) and the only module that calls the API (api.py)."""
