"""Typed frames and deterministic parquet: the row/column plumbing every report table goes through."""
from __future__ import annotations

import io
import math

import pandas as pd


def _py(v):
    return v.item() if hasattr(v, "item") else v


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA



def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else -math.inf


def _opt_float(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


ARROW = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}


def _frame(rows: list[dict], cols: dict[str, str]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly `cols` in that order; the column kinds travel in attrs so the
    parquet schema is fixed even when a column is all null."""
    import pyarrow as pa

    schema = pa.schema([(c, ARROW[k]) for c, k in cols.items()])
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=schema)
    df = table.to_pandas()
    df.attrs["schema"] = cols
    return df


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic parquet: the same rows give the same bytes (explicit schema, no index, no
    pandas metadata, which would carry the writer's library versions twice)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = df.attrs.get("schema") or {c: _kind_of(df[c]) for c in df.columns}
    schema = pa.schema([(c, ARROW[k]) for c, k in cols.items()])
    records = [{c: (None if not _present(v) else _py(v)) for c, v in zip(cols, row)}
               for row in df[list(cols)].itertuples(index=False, name=None)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def _kind_of(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int"
    if pd.api.types.is_float_dtype(s):
        return "float"
    return "str"
