__version__ = "0.1.0"

def __getattr__(name):
    "`dataeff.estimate` and `dataeff.demo`, the main job, imported on first use so that `import dataeff` stays light."
    if name in ("estimate", "demo", "EstimateReport"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'dataeff' has no attribute {name!r}")
