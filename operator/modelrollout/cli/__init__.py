"""The command-line front ends: `modelrollout` (score, evaluate, demo, serve) and `kubectl modelrollout`.

They share the engine with the operator and import nothing of it back (no cycles: tests/unit/test_layering.py).
"""
