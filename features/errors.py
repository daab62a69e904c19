"""The one exception type users see for bad input."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (a file, a column, a row, a spec): the message says where and how to fix it.

    The CLI prints the message as one paragraph and exits with status 2, without a traceback.

    Args:
        what: what is wrong, e.g. ``"column 'hist_A' has type string, expected list<int64>"``.
        where: the file (and row group / row / column) concerned.
        fix: what the user should do about it.
        spec: the feature spec (file and feature) involved, if any.

    Example::

        raise InputError("no such file", where="data/train.parquet", fix="check the path")
    """

    def __init__(self, what: str, *, where: str = "", fix: str = "", spec: str = "") -> None:
        self.what, self.where, self.fix, self.spec = what, where, fix, spec
        parts = [f"{where}: {what}" if where else what]
        if spec:
            parts.append(f"(feature spec: {spec})")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))
