"""modelrollout: gate and roll out machine-learning models with evidence."""

__version__ = "0.1.0"
