"""The side columns of each row: its user's gender, age and occupation (``users``) and its movie's genres and
release year (``movies``), the standard MovieLens context features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from crossrank.pipeline.prepare.movielens.users import Users

SIDE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("gender", pa.string()),
    pa.field("age", pa.int64()),
    pa.field("occupation", pa.string()),
    pa.field("genres", pa.list_(pa.string())),
    pa.field("year", pa.int64()),
)


@dataclass
class SideInfo:
    """Users' and movies' attributes, looked up per row (nulls where a file does not say).

    Args:
        users: :func:`read_users` of the users file.
        movies: ``_read_movies`` of the movies file (``item_id``, ``genres``, ``year``).
    """

    users: Users
    movies: pd.DataFrame

    def __post_init__(self) -> None:
        # Per movie, in id order, once: a chunk's rows then take theirs without a Python loop.
        order = np.argsort(self.movies["item_id"].to_numpy(), kind="stable")
        self.movie_ids = self.movies["item_id"].to_numpy()[order]
        self.movie_genres = pa.array(list(self.movies["genres"].to_numpy()[order]), pa.list_(pa.string()))
        self.movie_year = self.movies["year"].to_numpy(dtype=np.float64)[order]

    def arrays(self, user: np.ndarray, item: np.ndarray) -> list[pa.Array]:
        """The ``SIDE_FIELDS`` columns of rows with these user and movie ids."""
        gender, age, occupation = self.users.take(user)
        # every rated movie is in the movies file (checked when reading the ratings)
        movie = np.minimum(np.searchsorted(self.movie_ids, item), len(self.movie_ids) - 1)
        year = self.movie_year[movie]
        return [
            pa.array(gender, pa.string()),
            pa.array(np.nan_to_num(age).astype(np.int64), mask=np.isnan(age)),
            pa.array(occupation, pa.string()),
            self.movie_genres.take(pa.array(movie)),
            pa.array(np.nan_to_num(year).astype(np.int64), mask=np.isnan(year)),
        ]
