"""Tables from ``.npy`` or ``.csv`` files: split 80/10/10 and standardised per column."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfp_coupling.data.info import DatasetInfo

__all__ = ["column_names", "read_table", "resolve_columns"]

# A column whose spread is below this fraction of its magnitude varies by rounding error only.
_CONSTANT_RELATIVE_STD = 1e-10


def read_table(path: Path) -> np.ndarray:
    """A ``.npy`` array or ``.csv`` table (numbers, comma-separated, an optional header line) as
    float64 ``[examples, features]``; errors name the line and column of a bad value.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = path.write_text("a,b\\n1,2\\n\\n3,4.5\\n")
        >>> read_table(path).tolist()
        [[1.0, 2.0], [3.0, 4.5]]
    """
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of a .npy or .csv file")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a numeric .npy array ({e})") from None
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{path}: expected a numeric array, got dtype {x.dtype}")
        x = x.astype(np.float64)
    else:
        x = _parse_csv(path)
    if x.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array [examples, features], got shape "
                         f"{list(x.shape)}")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, c = bad[0]
        where = "row" if path.suffix.lower() == ".npy" else "data row"
        raise ValueError(f"{path}: {len(bad)} NaN/inf value(s), first at {where} {r + 1}, "
                         f"column {c + 1}")
    return x


def _parse_csv(path: Path) -> np.ndarray:
    """The numbers of a CSV file; blank lines are skipped, a first line of names is a header."""
    lines = path.read_text().splitlines()
    line_numbers = np.array([i + 1 for i, line in enumerate(lines) if line.strip()], dtype=int)
    rows = [lines[i - 1].split(",") for i in line_numbers]
    if rows and _is_header(rows[0]):
        rows, line_numbers = rows[1:], line_numbers[1:]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    widths = np.array([len(r) for r in rows])
    uneven = np.flatnonzero(widths != widths[0])
    if len(uneven):
        r = uneven[0]
        raise ValueError(f"{path}: line {line_numbers[r]} has {widths[r]} columns, expected "
                         f"{widths[0]}")
    fields = np.array(rows, dtype=str)
    try:
        return fields.astype(np.float64)
    except ValueError:
        numeric = np.vectorize(_is_number, otypes=[bool])(fields)
        r, c = np.argwhere(~numeric)[0]
        raise ValueError(f"{path}: line {line_numbers[r]}, column {c + 1}: "
                         f"{fields[r, c].strip()!r} is not a number") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(fields: list[str]) -> bool:
    """A first line whose first non-number field is text (not empty) names the columns."""
    text = next((f for f in fields if not _is_number(f)), None)
    return text is not None and text.strip().lower() not in ("nan", "inf", "-inf", "")


def column_names(path: Path) -> list[str] | None:
    """The names on a CSV file's header line, or None (no header, or a ``.npy`` file)."""
    if path.suffix.lower() != ".csv" or not path.is_file():
        return None
    with path.open() as f:
        first = next((line for line in f if line.strip()), "")
    fields = first.rstrip("\r\n").split(",")
    return [f.strip() for f in fields] if _is_header(fields) else None


def resolve_columns(path: Path, spec: str, num_columns: int) -> list[int]:
    """0-based indices of the columns ``spec`` lists: header names or column numbers counted
    from 1 (as error messages count them), comma-separated; a header name wins over a number.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = path.write_text("x,y,label\\n1,2,0\\n")
        >>> resolve_columns(path, "label,1", 3)
        [2, 0]
    """
    names = column_names(path) or []
    parts = [p.strip() for p in str(spec).split(",")]
    columns = []
    for part in parts:
        if part in names:
            columns.append(names.index(part))
        elif part.isdigit() and 1 <= int(part) <= num_columns:
            columns.append(int(part) - 1)
        else:
            known = f"names {', '.join(names)} or " if names else ""
            raise ValueError(f"{path}: no column {part!r}; give {known}numbers 1..{num_columns}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"{path}: column list {spec!r} names a column twice")
    return columns


def load_splits(
    path: Path, seed: int, normalize: bool
) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    """The splits in data units (float64) and the info that standardises them."""
    x = read_table(path)
    n = len(x)
    if n < 10:
        raise ValueError(f"{path}: {n} rows; need at least 10 to split into train, "
                         f"validation and test")
    order = np.random.default_rng(seed).permutation(n)
    n_val = n_test = max(1, n // 10)
    idx = {"train": order[:n - n_val - n_test], "validation": order[n - n_val - n_test:n - n_test],
           "test": order[n - n_test:]}
    d = x.shape[1]
    if normalize:
        train = x[idx["train"]]
        shift, scale = train.mean(axis=0), train.std(axis=0)
        # A spread of rounding error only (std 1e-17 around 0.3) is constant too: dividing by it
        # would blow the column up to a huge spike and the NLL to 1e13.
        magnitude = np.abs(train).max(axis=0)
        constant = np.flatnonzero((scale == 0) | (scale <= _CONSTANT_RELATIVE_STD * magnitude))
        if len(constant):
            raise ValueError(f"{path}: column(s) {', '.join(str(c + 1) for c in constant)} "
                             f"are constant in the training split (up to rounding error); drop "
                             f"them (a density needs every column to vary)")
    else:
        shift, scale = np.zeros(d), np.ones(d)
    integer = tuple(int(c) for c in np.flatnonzero(np.all(x == np.round(x), axis=0)))
    info = DatasetInfo(str(path.resolve()), "tabular", (d,),
                       {k: len(v) for k, v in idx.items()}, shift, scale,
                       source=f"file {path}", integer_columns=integer)
    return {k: x[v] for k, v in idx.items()}, info


def check_float32_range(key: str, raw: dict[str, np.ndarray],
                         splits: dict[str, np.ndarray]) -> None:
    """Finite data that overflow float32 (beyond 3.4e38) in model units are an error, by name.

    (Without this they would reach the model as Inf and be reported as "NaN or Inf" data.)
    """
    for name, x in splits.items():
        if not np.all(np.isfinite(x)):
            row, col = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(
                f"{key}: value {raw[name][row, col]:.6g} ({name} split, column {col + 1}) is "
                f"beyond float32's range (3.4e38) in the model's units (float32 overflow); "
                f"rescale that column")
