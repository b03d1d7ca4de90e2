"""The backends of each stage, one module each; pipeline.registry names them by stage and
backend name and imports one when it is built. This package imports nothing."""
