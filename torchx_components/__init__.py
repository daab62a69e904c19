"""TorchX components of crossrank (``torchx run -s SCHEDULER torchx_components/crossrank.py:train``)."""
