"""Made-up artist names for the synthetic catalogue, one per (style, key), stable across runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_gen.melodies import stable_hash

_ADJ = ("Velvet", "Electric", "Silver", "Midnight", "Golden", "Crimson", "Wandering", "Paper",
        "Hollow", "Neon", "Quiet", "Wild", "Copper", "Lunar", "Restless", "Amber", "Northern")
_NOUNS = ("Foxes", "Harbours", "Lanterns", "Sparrows", "Rivers", "Engines", "Pilots", "Ghosts",
          "Orchards", "Tides", "Comets", "Wolves", "Mirrors", "Anchors", "Echoes", "Ravens")
_FIRST = ("Ada", "Ben", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Iris", "Jonas",
          "Kasia", "Leo", "Mara", "Nico", "Olga", "Pablo", "Rosa", "Sami", "Tilda", "Viktor")
_LAST = ("Arden", "Bellamy", "Castell", "Dunmore", "Eklund", "Farrow", "Galloway", "Hartley",
         "Ivers", "Jansen", "Kovac", "Lindqvist", "Moreau", "Novak", "Oakes", "Pereira", "Quill",
         "Rowan", "Sato", "Thorne", "Valdez", "Whitlock")
_PLACES = ("Kingsford", "Ashby", "Brackwater", "Dunmore", "Elmstead", "Foxhall", "Glenarm",
           "Hollins", "Ivybridge", "Larkhill", "Millbrook", "Northwick", "Redcliffe", "Stonehaven")


def band_name(style: str, key: str) -> str:
    """A deterministic made-up artist name fitting `style`, drawn from a hash of `key`."""
    rng = np.random.default_rng(stable_hash(f"artist:{style}:{key}"))

    def pick(items: Sequence[str]) -> str:
        return items[int(rng.integers(len(items)))]

    person = f"{pick(_FIRST)} {pick(_LAST)}"
    templates = {
        "pop_band": (f"The {pick(_ADJ)} {pick(_NOUNS)}", f"{pick(_ADJ)} {pick(_NOUNS)}"),
        "rock": (f"{pick(_ADJ)} {pick(_NOUNS)}", f"The {pick(_NOUNS)}"),
        "folk_acoustic": (f"{person} & the {pick(_PLACES)} Ramblers", f"The {pick(_PLACES)} Fiddlers"),
        "piano_ballad": (person,),
        "strings": (f"The {pick(_PLACES)} String Ensemble", f"{pick(_LAST)} Chamber Orchestra"),
        "electronic": (f"{pick(_ADJ)}{pick(_NOUNS)[:-1]}", f"DJ {pick(_FIRST)} {pick(_ADJ)}"),
        "jazz_trio": (f"{person} Trio",),
        "brass_band": (f"{pick(_PLACES)} Silver Band", f"{pick(_PLACES)} Colliery Brass Band"),
        "organ_hymn": (f"St. {pick(_FIRST)}'s Chapel Choir", f"{pick(_PLACES)} Cathedral Singers"),
        "bossa": (f"{person} Quarteto", f"{pick(_FIRST)} {pick(_LAST)} & Bossa Azul"),
    }.get(style, (person,))
    return pick(templates)
