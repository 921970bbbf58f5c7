"""Datasets: import user files as dataset artifacts; builders for experiments arrive with them."""

from heredity.data.io import import_dataset, put_rows

__all__ = ["import_dataset", "put_rows"]
