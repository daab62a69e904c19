"""``crossrank``: the command line (``main.py``), its parser (``parser.py``) and the commands it runs."""

from crossrank.pipeline.cli.main import main

__all__ = ["main"]
