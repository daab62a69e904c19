"""``crossrank prepare movielens``: GroupLens MovieLens rating logs -> train/valid/test Parquet.

Reads the three GroupLens file layouts as downloaded (the format is detected from the files present):

* ``ml-100k``:   ``u.data`` (user\\titem\\trating\\ttimestamp) and ``u.item`` (``|``-separated, latin-1,
  the last 19 fields are genre flags in ``u.genre`` order);
* ``ml-1m``:     ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
  (``MovieID::Title::Genres``, genres ``|``-separated, latin-1); ml-10m uses the same layout;
* ``ml-latest``: ``ratings.csv`` (``userId,movieId,rating,timestamp``, with header) and ``movies.csv``
  (``movieId,title,genres``); also ml-20m / ml-25m / ml-32m.

Data contract of the output (one row per rating; see ``output_schema``):

* a movie belongs to the domain of its FIRST listed genre; a genre named by no domain, and a movie without a
  genre ("unknown", "(no genres listed)"), go to the ``"*"`` domain, or are dropped (and counted) without one;
* rows are ordered by (user, timestamp, item id); ``row_id`` numbers them 0..N-1 across all three splits;
* ``hist_<D>`` holds the movies the user rated in domain D STRICTLY before the row's timestamp (a rating on
  the same second is not history: MovieLens timestamps tie a lot, and ties would leak the future), most
  recent last, truncated to the last ``max_len``; ``hist_count_<D>`` is the untruncated count;
* ``hist_liked_<D>`` holds, for each event of ``hist_<D>``, 1 if the user rated it >= 4, else 0 (the
  history lists what the user rated, this says how);
* per user, the last ``n_test`` rows are test, the ``n_valid`` before them valid, the rest train.

Everything is vectorised (numpy / pyarrow): ml-25m has 25M ratings.

Modules: ``formats`` (which layout a folder holds), ``ratings`` and ``movies`` (parsing the two files),
``domains`` (the domain map, and each movie's domain), ``rows`` (order, splits, histories, split files),
``summary`` (``summary.json``) and ``job`` (``prepare_movielens``, tying them together).
"""

from crossrank.pipeline.prepare.movielens.domains import (
    DEFAULT_DOMAINS,
    NO_GENRE,
    STAR,
    load_domain_map,
)
from crossrank.pipeline.prepare.movielens.formats import FORMATS, SourceFormat, detect_format
from crossrank.pipeline.prepare.movielens.job import prepare_movielens
from crossrank.pipeline.prepare.movielens.movies import GENRES_100K
from crossrank.pipeline.prepare.movielens.rows import PART_NAME, SPLITS, output_schema
from crossrank.pipeline.prepare.movielens.summary import SUMMARY_NAME, PrepareSummary, SplitStats

__all__ = [
    "DEFAULT_DOMAINS",
    "FORMATS",
    "GENRES_100K",
    "NO_GENRE",
    "PART_NAME",
    "SPLITS",
    "STAR",
    "SUMMARY_NAME",
    "PrepareSummary",
    "SourceFormat",
    "SplitStats",
    "detect_format",
    "load_domain_map",
    "output_schema",
    "prepare_movielens",
]
