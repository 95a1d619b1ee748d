"""The sweep engine: grids of configs planned into compiled programs, trained in chunks, written
as Parquet (`python -m sweeps`; the pieces are listed in `engine`)."""
