"""The domain map (domain name -> genres, or ``"*"``): loading, validating, and assigning movies to domains."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from crossrank.features.errors import InputError
from crossrank.pipeline.prepare.movielens.formats import SourceFormat

STAR = "*"
DEFAULT_DOMAINS: dict[str, list[str] | str] = {
    "A": ["Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "War", "Western", "Horror"],
    "B": STAR,
}
# Genre labels that mean "no genre": such movies go to the "*" domain.
NO_GENRE: frozenset[str] = frozenset({"", "unknown", "(no genres listed)"})

_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def load_domain_map(path: Path | None) -> dict[str, list[str] | str]:
    """Read a domain map: a YAML mapping of domain name -> list of genres, or ``"*"`` for every other genre.

    The order of the keys is the domain order (of the ``hist_<D>`` columns). At most one domain may be
    ``"*"``; without one, ratings of movies whose first genre no domain names are dropped.

    Args:
        path: the YAML file, or None for ``DEFAULT_DOMAINS``.

    Returns:
        The validated map (a fresh dict).

    Raises:
        InputError: the file is missing, unreadable, not a mapping, has two ``"*"`` domains, names a genre
            twice, or has a bad domain name or genre entry.

    Example (YAML; quote the star, a bare ``*`` is YAML alias syntax)::

        action: [Action, Adventure, Sci-Fi, Thriller]
        drama: [Drama, Romance]
        other: "*"
    """
    if path is None:
        return {k: (v if isinstance(v, str) else list(v)) for k, v in DEFAULT_DOMAINS.items()}
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "domain map file not found" if not path.exists() else "domain map is not a file",
            where=str(path),
            fix='pass the path of a YAML file mapping each domain name to a list of genres or to "*", '
            'or leave the option out for the default map (A = action-like genres, B = "*").',
        )
    text = path.read_text(encoding="utf-8")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(
            f"the domain map is not valid YAML ({problem})",
            where=where,
            fix='write one `domain: [Genre, ...]` or `domain: "*"` line per domain; quote the star '
            "(a bare * is YAML alias syntax).",
        ) from None
    return _validate_domain_map(obj, str(path))


def _validate_domain_map(obj: object, where: str) -> dict[str, list[str] | str]:
    """Check the parsed YAML of a domain map; see ``load_domain_map``.

    Args:
        obj: the parsed YAML document.
        where: the file name, for messages.
    """
    fix = 'write a YAML mapping such as `A: [Action, Adventure]` and `B: "*"`, one line per domain.'
    if not isinstance(obj, dict) or not obj:
        kind = "empty" if not obj else f"a YAML {type(obj).__name__}"
        raise InputError(
            f"the domain map must be a non-empty mapping of domain -> genres, got {kind}",
            where=where,
            fix=fix,
        )
    out: dict[str, list[str] | str] = {}
    star: str | None = None
    owner: dict[str, str] = {}  # genre -> domain that names it
    for name, genres in obj.items():
        if not isinstance(name, str) or not _DOMAIN_NAME.match(name):
            raise InputError(
                f"domain name {name!r} is not a word of letters, digits and '_'",
                where=where,
                fix="rename the domain: it becomes part of the column names hist_<D> and hist_count_<D>.",
            )
        if genres == STAR:
            if star is not None:
                raise InputError(
                    f'two domains are "*" ({star!r} and {name!r}); only one may take every other genre',
                    where=where,
                    fix=f"list the genres of {name!r} explicitly, or drop one of the two.",
                )
            star = name
            out[name] = STAR
            continue
        out[name] = _check_genres(name, genres, owner, where, fix)
    return out


def _check_genres(name: str, genres: object, owner: dict[str, str], where: str, fix: str) -> list[str]:
    """Check one domain's genre list and record its genres in ``owner``; returns a copy of the list.

    Args:
        name: the domain.
        genres: what the YAML maps it to (not ``"*"``).
        owner: genre -> domain that names it, over the domains checked so far (updated).
        where: the file name, for messages.
        fix: the advice for a value that is not a list of names.
    """
    if not isinstance(genres, list) or not genres or not all(isinstance(g, str) and g for g in genres):
        raise InputError(
            f'domain {name!r} must map to a non-empty list of genre names or to "*", got {genres!r}',
            where=where,
            fix=fix,
        )
    for g in genres:
        if g == STAR:
            raise InputError(
                f'domain {name!r} lists "*" inside a list',
                where=where,
                fix=f'write `{name}: "*"` (the star alone, quoted) instead of a list.',
            )
        if g in NO_GENRE:
            raise InputError(
                f"domain {name!r} names {g!r}, which MovieLens uses for movies without a genre",
                where=where,
                fix='remove it: movies without a genre always go to the "*" domain (or are dropped).',
            )
        if g in owner:
            where_else = "twice in that domain" if owner[g] == name else f"also in domain {owner[g]!r}"
            raise InputError(
                f"genre {g!r} is named by domain {name!r} and {where_else}",
                where=where,
                fix="name each genre in exactly one domain.",
            )
        owner[g] = name
    return list(genres)


def _movie_domains(genre: np.ndarray, domain_map: dict[str, list[str] | str]) -> tuple[np.ndarray, list[str]]:
    """Domain index of each movie from its first genre; -1 = no domain (dropped).

    Args:
        genre: first genre per movie ("" / "unknown" / "(no genres listed)" = none).
        domain_map: the validated domain map.

    Returns:
        (domain index per movie as int16, genres the map names that no movie has as first genre)
    """
    star = next((i for i, g in enumerate(domain_map.values()) if g == STAR), -1)
    lookup = {g: i for i, gs in enumerate(domain_map.values()) if gs != STAR for g in gs}
    codes = pd.Series(genre, dtype=object).map(lookup).fillna(star).astype(np.int16).to_numpy()
    present = set(pd.unique(genre))
    unused = [g for g in lookup if g not in present]
    return codes, unused


def _rating_domains(
    item: np.ndarray, movie_item: np.ndarray, movie_dom: np.ndarray, fmt: SourceFormat, src_dir: Path
) -> np.ndarray:
    """Domain index of each rating's movie (-1 = no domain), by binary search in the sorted movie ids.

    Args:
        item: the movie id per rating.
        movie_item: the movie ids of the movies file.
        movie_dom: ``_movie_domains`` of those movies.
        fmt: the layout, for messages.
        src_dir: the input folder, for messages.

    Raises:
        InputError: a rating of a movie the movies file does not list.
    """
    movie_order = np.argsort(movie_item, kind="stable")
    movie_ids = movie_item[movie_order]
    pos = np.minimum(np.searchsorted(movie_ids, item), movie_ids.size - 1)
    known = movie_ids[pos] == item
    if not known.all():
        missing = np.unique(item[~known])
        raise InputError(
            f"{np.count_nonzero(~known):,} ratings are of {missing.size:,} movie id(s) that "
            f"{fmt.movies} does not list (e.g. {missing[:5].tolist()})",
            where=str(src_dir / fmt.ratings),
            fix=f"use {fmt.ratings} and {fmt.movies} from the same GroupLens archive.",
        )
    return movie_dom[movie_order][pos]
