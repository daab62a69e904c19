"""Reading a GroupLens users file (ml-100k ``u.user``, ml-1m ``users.dat``): each user's gender, age and
occupation. ml-latest and later releases have none: their rows get nulls there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from crossrank.features.errors import InputError
from crossrank.pipeline.prepare.movielens.formats import SourceFormat

# Per layout: the file, its separator, and the positions of (id, gender, age, occupation) in a line.
_LAYOUTS: dict[str, tuple[str, str, tuple[int, int, int, int], str]] = {
    "ml-100k": ("u.user", "|", (0, 2, 1, 3), "user id|age|gender|occupation|zip code"),
    "ml-1m": ("users.dat", "::", (0, 1, 2, 3), "UserID::Gender::Age::Occupation::Zip-code"),
}


@dataclass
class Users:
    """Users' attributes, by user id (sorted): ``gender`` ("M"/"F"), ``age`` (ml-100k: years; ml-1m: the
    lower bound of the age band, e.g. 25 for 25-34), ``occupation`` (ml-100k: a name; ml-1m: its code, as a
    string). Users missing from the file get nulls."""

    ids: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray

    def take(self, user: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gender, age, occupation) of each user id in ``user``: object arrays with None, and a float array
        with NaN, for users the file does not list."""
        n = len(user)
        if not len(self.ids):
            return np.full(n, None, object), np.full(n, np.nan), np.full(n, None, object)
        pos = np.minimum(np.searchsorted(self.ids, user), len(self.ids) - 1)
        unknown = self.ids[pos] != user
        gender, occupation = self.gender[pos], self.occupation[pos]  # copies (fancy indexing)
        gender[unknown] = occupation[unknown] = None
        return gender, np.where(unknown, np.nan, self.age[pos]), occupation


def users_file(src_dir: Path, fmt: SourceFormat) -> Path | None:
    """The users file of the layout, if the layout has one and it is there."""
    layout = _LAYOUTS.get(fmt.name)
    return src_dir / layout[0] if layout and (src_dir / layout[0]).is_file() else None


def read_users(src_dir: Path, fmt: SourceFormat) -> Users:
    """Parse the users file (none: no user known).

    Raises:
        InputError: a line with too few fields, a non-numeric id or age, or the same user twice.
    """
    path = users_file(src_dir, fmt)
    if path is None:
        empty = np.array([], dtype=object)
        return Users(np.array([], np.int64), empty, np.array([], np.float64), empty)
    _, sep, (i_id, i_gender, i_age, i_occ), expected = _LAYOUTS[fmt.name]
    text = path.read_text(encoding="latin-1", errors="replace").splitlines()
    lines = pd.Series(text, index=pd.RangeIndex(1, len(text) + 1), dtype=object)
    lines = lines[lines.str.strip() != ""]
    parts = lines.str.split(sep, regex=False)
    short = parts.map(len) < 4

    def error(line: int, what: str) -> InputError:
        return InputError(
            what,
            where=f"{path}, line {line}",
            fix=f"every line must be `{expected}`; repair or re-download it.",
        )

    if short.any():
        line = int(short.index.to_numpy()[np.argmax(short.to_numpy())])
        raise error(line, "line has fewer than 4 fields")
    for name, i in (("user id", i_id), ("age", i_age)):
        ok = parts.str[i].str.strip().str.fullmatch(r"[0-9]+")
        if not ok.all():
            line = int(ok.index.to_numpy()[np.argmax(~ok.to_numpy())])
            raise error(line, f"{name} {parts[line][i]!r} is not a number")
    ids = parts.str[i_id].astype(np.int64).to_numpy()
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        raise error(
            int(lines.index[int(np.argmax(dup))]), f"user id {ids[int(np.argmax(dup))]} appears twice"
        )
    order = np.argsort(ids, kind="stable")
    column = [parts.str[i].str.strip().to_numpy(dtype=object)[order] for i in (i_gender, i_occ)]
    age = parts.str[i_age].astype(np.float64).to_numpy()[order]
    return Users(ids[order], column[0], age, column[1])
