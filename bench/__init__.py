"""Benchmarks: ``python -m bench {train,index,soak}`` (see ``bench/__main__.py``)."""
