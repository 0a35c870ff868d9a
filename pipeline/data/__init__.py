"""Data sets: fetch (download, verify, index), preprocess (Parquet + manifest), and reading them back."""
