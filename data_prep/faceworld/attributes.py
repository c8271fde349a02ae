"""The editable attributes of a render: vocabularies, sampling, held-out pairs, captions and parsing.

An attribute dict maps every name of ATTRIBUTES to one of its values (hat_color is None exactly when
hat is "none"). Captions come from a small grammar around the identity's class word ("man", "woman",
"boy", "girl"), e.g. "a photo of a woman wearing a red hat and sunglasses, smiling, in a snowy
forest"; a caption names a subset of the attributes and `parse_caption` gives that subset back
(round trip: parse_caption(caption(a, ...)) == the mentioned part of a). A generic "hat" in a caption
parses as hat = ANY_HAT (some hat, kind unspecified).

Identity splits: disjoint ranges of identity indices (SPLITS). Held-out pairs (HELD_OUT): attribute
pairs that never occur together in training renders (nor, hence, in training captions); evaluation
prompts use them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import numpy as np

from data_prep.faceworld.hashing import STREAM_ATTRIBUTES, Draws, uniforms

CLASS_WORDS = ("man", "woman", "boy", "girl")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "scene": ("beach", "forest", "city street", "snow", "under the sea", "outer space", "desert", "living room"),
    "hat": ("none", "cap", "beanie", "cowboy hat", "top hat", "party hat"),
    "hat_color": ("red", "blue", "green", "yellow", "black", "white"),
    "glasses": ("none", "glasses", "sunglasses"),
    "clothing": ("red", "orange", "yellow", "green", "blue", "purple", "black", "white"),
    "expression": ("neutral", "smiling", "surprised"),
    "style": ("photo", "painting", "sketch"),
}
ANY_HAT = "any"  # parse_caption's hat value for a generic "a red hat"

# Pairs never rendered together for training identities; together they cover every attribute.
HELD_OUT: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("glasses", "sunglasses"), ("scene", "under the sea")),
    (("hat", "cowboy hat"), ("scene", "outer space")),
    (("expression", "surprised"), ("style", "painting")),
    (("clothing", "purple"), ("scene", "snow")),
    (("hat", "top hat"), ("expression", "smiling")),
    (("glasses", "glasses"), ("style", "sketch")),
    (("hat", "beanie"), ("hat_color", "yellow")),
    (("hat", "party hat"), ("clothing", "red")),
)

# Identity index ranges [start, stop) of the splits (identity parameters come from (seed, index)).
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 1_100_000),
    "test": (1_100_000, 1_200_000),
}

# Sampling weights per attribute value: "world" for training renders, "portrait" for photo folders
# (a user's photos: mostly plain photos, some hats, glasses and places).
WEIGHTS: dict[str, dict[str, tuple[float, ...]]] = {
    "world": {"scene": (1,) * 8, "hat": (4, 1.2, 1.2, 1.2, 1.2, 1.2), "hat_color": (1,) * 6,
              "glasses": (2, 1, 1), "clothing": (1,) * 8, "expression": (4, 3.5, 2.5), "style": (6, 2, 2)},
    "portrait": {"scene": (1,) * 8, "hat": (7, 1, 1, 0.5, 0.3, 0.2), "hat_color": (1,) * 6,
                 "glasses": (6, 3, 1), "clothing": (1,) * 8, "expression": (5, 4, 1), "style": (38, 1, 1)},
}
_ATTEMPTS = 8  # independent draws per attribute and item for redrawing held-out pairs


class CaptionError(ValueError):
    """A caption names two different values of one attribute."""


def split_of(identity: int) -> str:
    for name, (lo, hi) in SPLITS.items():
        if lo <= identity < hi:
            return name
    raise ValueError(f"identity index {identity} lies in no split {SPLITS}")


def split_range(split: str) -> tuple[int, int]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    return SPLITS[split]


def check_attributes(attrs: Mapping[str, str | None], partial: bool = True) -> None:
    """Raise ValueError for unknown names or values (or a missing name when not partial)."""
    for name, value in attrs.items():
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; attributes are {list(ATTRIBUTES)}")
        if name == "hat_color" and value is None:
            continue
        if name == "hat" and value == ANY_HAT:
            continue
        if value not in ATTRIBUTES[name]:
            raise ValueError(f"unknown {name} {value!r}; choose one of {list(ATTRIBUTES[name])}")
    if not partial:
        missing = [n for n in ATTRIBUTES if n not in attrs]
        if missing:
            raise ValueError(f"attributes lack {missing}")


def with_value(attrs: Mapping[str, str | None], name: str, value: str,
               new_hat_color: str | None = None) -> dict[str, str | None]:
    """attrs with `name` set to `value`, under the renderer's hat rule: a hat taken off loses its colour; a hat put
    on a bare head takes `new_hat_color` (default: the first colour); a hat changed for another keeps its colour."""
    out = {**attrs, name: value}
    if name == "hat" and value == "none":
        out["hat_color"] = None
    elif name == "hat" and out.get("hat_color") is None:
        out["hat_color"] = new_hat_color or ATTRIBUTES["hat_color"][0]
    return out


def held_out_pairs_in(attrs: Mapping[str, str | None]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The HELD_OUT pairs that `attrs` contains (both values present)."""
    return [pair for pair in HELD_OUT if all(attrs.get(n) == v for n, v in pair)]


def _codes(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: rows[:, j] for j, name in enumerate(ATTRIBUTES)}


def _violations(codes: dict[str, np.ndarray]) -> np.ndarray:
    bad = np.zeros(len(next(iter(codes.values()))), dtype=bool)
    for (n1, v1), (n2, v2) in HELD_OUT:
        bad |= (codes[n1] == ATTRIBUTES[n1].index(v1)) & (codes[n2] == ATTRIBUTES[n2].index(v2))
    return bad


def sample_attributes(seed: int, identities, renders, *, avoid_held_out: bool | np.ndarray, mode: str = "world",
                      overrides: list[Mapping[str, str] | None] | None = None) -> list[dict[str, str | None]]:
    """One full attribute dict per (identity, render) item, from (seed, identity, render) alone.

    avoid_held_out: never return a HELD_OUT pair (training identities; a bool or one per item); values given in
    `overrides` (one partial dict or None per item) are kept as given, even when they form a pair.
    mode: "world" (training distribution) or "portrait" (photo folders).
    """
    if mode not in WEIGHTS:
        raise ValueError(f"unknown attribute mode {mode!r}; choose one of {sorted(WEIGHTS)}")
    ids = np.atleast_1d(np.asarray(identities))
    n_items = len(ids)
    if overrides is None:
        overrides = [None] * n_items
    if len(overrides) != n_items:
        raise ValueError(f"{len(overrides)} attribute overrides for {n_items} items")
    names = list(ATTRIBUTES)
    d = Draws(uniforms(seed, STREAM_ATTRIBUTES, ids, renders, _ATTEMPTS * len(names)))
    weights = WEIGHTS[mode]
    attempts = np.stack([np.stack([d.choice(weights[n]) for n in names], axis=1) for _ in range(_ATTEMPTS)])
    fixed = np.full((n_items, len(names)), -1, dtype=np.int64)  # -1: free
    for i, ov in enumerate(overrides):
        if not ov:
            continue
        check_attributes(ov)
        for name, value in ov.items():
            if value is None or value == ANY_HAT:
                continue
            fixed[i, names.index(name)] = ATTRIBUTES[name].index(value)
        if ov.get("hat") == "none" and ov.get("hat_color") is not None:
            raise ValueError(f"hat_color {ov['hat_color']!r} asked for together with hat 'none'")
        if ov.get("hat") == ANY_HAT or (ov.get("hat_color") is not None and "hat" not in ov):
            # some hat: a kind drawn below, never "none"
            attempts[:, i, names.index("hat")] = 1 + attempts[:, i, names.index("hat")] % (len(ATTRIBUTES["hat"]) - 1)
    attempts = np.where(fixed[None] >= 0, fixed[None], attempts)
    rows = attempts[0].copy()
    avoid = np.broadcast_to(np.asarray(avoid_held_out, dtype=bool), (n_items,))
    if avoid.any():
        # a held-out pair: redraw only its second value (its first when the second was asked for) from
        # the next attempt, so that the other attributes stay as first drawn
        for k in range(1, _ATTEMPTS):
            for (n1, v1), (n2, v2) in HELD_OUT:
                j1, j2 = names.index(n1), names.index(n2)
                hit = avoid & (rows[:, j1] == ATTRIBUTES[n1].index(v1)) & (rows[:, j2] == ATTRIBUTES[n2].index(v2))
                j = np.where(fixed[:, j2] < 0, j2, j1)
                i = np.flatnonzero(hit & (fixed[np.arange(n_items), j] < 0))
                rows[i, j[i]] = attempts[k][i, j[i]]
        for i in np.flatnonzero(_violations(_codes(rows)) & avoid):  # still one (rare): step values on
            rows[i] = _repair(rows[i], fixed[i])
    out = []
    hat_none = ATTRIBUTES["hat"].index("none")
    for i in range(n_items):
        a = {n: ATTRIBUTES[n][rows[i, j]] for j, n in enumerate(names)}
        if rows[i, names.index("hat")] == hat_none:
            a["hat_color"] = None
        out.append(a)
    return out


def _repair(row: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Step a free value of each held-out pair in `row` on (cyclically) until no pair is left."""
    names = list(ATTRIBUTES)
    row = row.copy()
    for _ in range(64):
        hit = next((pair for pair in HELD_OUT
                    if all(row[names.index(n)] == ATTRIBUTES[n].index(v) for n, v in pair)), None)
        if hit is None:
            break
        free = [names.index(n) for n, _ in reversed(hit) if fixed[names.index(n)] < 0]
        if not free:
            break  # both values were asked for: keep them
        j = free[0]
        row[j] = (row[j] + 1) % len(ATTRIBUTES[names[j]])
    return row


# ------------------------------------------------------------------------------------------ captions
STYLE_HEADS = {
    "photo": ("a photo of", "a portrait photo of", "a close-up photo of", "a photograph of"),
    "painting": ("a painting of", "an oil painting of", "a painted portrait of"),
    "sketch": ("a sketch of", "a pencil sketch of", "a drawing of"),
}
SCENE_PHRASES = {
    "beach": ("on a beach", "at the beach", "on the beach by the sea"),
    "forest": ("in a forest", "in the woods", "among the trees"),
    "city street": ("on a city street", "in the city", "on a busy street"),
    "snow": ("in the snow", "in a snowy forest", "in a snowy landscape"),
    "under the sea": ("under the sea", "underwater", "deep under the sea"),
    "outer space": ("in outer space", "in space", "floating in space"),
    "desert": ("in a desert", "in the desert", "among desert dunes"),
    "living room": ("in a living room", "at home in the living room", "indoors in a living room"),
}
HAT_NOUNS = {
    "cap": ("cap", "baseball cap"),
    "beanie": ("beanie", "knit hat", "woolly hat"),
    "cowboy hat": ("cowboy hat",),
    "top hat": ("top hat",),
    "party hat": ("party hat",),
}
GENERIC_HAT = "hat"
GLASSES_PHRASES = {"glasses": ("glasses", "eyeglasses", "spectacles"), "sunglasses": ("sunglasses", "dark sunglasses")}
NONE_PHRASES = {"hat": ("without a hat", "with no hat"), "glasses": ("without glasses", "with no glasses")}
GARMENTS = ("t-shirt", "shirt", "sweater", "top")
EXPRESSION_CLAUSES = {
    "neutral": ("with a neutral expression", "with a straight face", "looking serious"),
    "smiling": ("smiling", "with a smile", "with a big smile"),
    "surprised": ("looking surprised", "with a surprised face", "surprised"),
}
EXPRESSION_ADJECTIVES = {"neutral": "serious", "smiling": "smiling", "surprised": "surprised"}

# how often each attribute is named when the caption picks its own subset
MENTION_P = {"style": 0.85, "scene": 0.7, "hat": 0.75, "hat_color": 0.8, "glasses": 0.75, "clothing": 0.5,
             "expression": 0.6}
NONE_MENTION_P = 0.12  # "without a hat" / "without glasses"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def choose_mentions(attrs: Mapping[str, str | None], rng: np.random.Generator) -> set[str]:
    """The random subset of attribute names a training caption names."""
    out = set()
    for name in ("style", "scene", "hat", "glasses", "clothing", "expression"):
        value = attrs[name]
        p = NONE_MENTION_P if value == "none" else MENTION_P[name]
        if rng.random() < p:
            out.add(name)
    if "hat" in out and attrs["hat"] != "none" and rng.random() < MENTION_P["hat_color"]:
        out.add("hat_color")
    return out


def caption(attrs: Mapping[str, str | None], class_word: str, rng: np.random.Generator,
            mention: Collection[str] | str | None = None, generic_hat_p: float = 0.25) -> str:
    """A caption for a render with attributes `attrs` of a `class_word` person.

    mention: the attribute names to state ("all", a collection of names, or None for a random
    subset, see choose_mentions). hat_color is only stated together with hat; with probability
    generic_hat_p a coloured hat is called just "hat" ("a red hat": parses as hat ANY_HAT).
    Phrasing and order are drawn from `rng`.
    """
    if class_word not in CLASS_WORDS:
        raise ValueError(f"class word {class_word!r} is not one of {CLASS_WORDS}")
    check_attributes(attrs)
    if mention is None:
        names = choose_mentions(attrs, rng)
    elif mention == "all":
        names = {n for n in ATTRIBUTES if attrs.get(n) is not None}
    else:
        names = set(mention)
    unknown = names - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"cannot mention unknown attributes {sorted(unknown)}")
    missing = [n for n in names if n not in attrs or (attrs[n] is None and n != "hat_color")]
    if missing:
        raise ValueError(f"caption asked to mention {missing} but the attributes lack them")
    if "hat_color" in names and (attrs.get("hat") in (None, "none") or attrs.get("hat_color") is None):
        names.discard("hat_color")

    wear, extra = [], []  # "wearing ..." items; other clauses
    hat = attrs.get("hat")
    if "hat" in names or "hat_color" in names:
        if hat == "none":
            extra.append(_pick(rng, NONE_PHRASES["hat"]))
        else:
            color = attrs["hat_color"] if "hat_color" in names else None
            generic = hat == ANY_HAT or ("hat" not in names) or (color is not None and rng.random() < generic_hat_p)
            noun = GENERIC_HAT if generic else _pick(rng, HAT_NOUNS[hat])
            phrase = f"{color} {noun}" if color else noun
            wear.append(f"{_article(phrase)} {phrase}")
    if "glasses" in names:
        g = attrs["glasses"]
        if g == "none":
            extra.append(_pick(rng, NONE_PHRASES["glasses"]))
        else:
            wear.append(_pick(rng, GLASSES_PHRASES[g]))
    if "clothing" in names:
        color = attrs["clothing"]
        if rng.random() < 0.2:
            extra.append(f"dressed in {color}")
        else:
            garment = _pick(rng, GARMENTS)
            wear.append(f"{_article(color)} {color} {garment}")
    order = rng.permutation(len(wear))
    wear = [wear[i] for i in order]

    style = attrs.get("style")
    head = _pick(rng, STYLE_HEADS[style]) + " " if "style" in names else ""
    expr = attrs.get("expression") if "expression" in names else None
    adjective = expr is not None and rng.random() < 0.35
    subject = f"{EXPRESSION_ADJECTIVES[expr]} {class_word}" if adjective else class_word
    subject = f"{_article(subject)} {subject}"
    parts = [head + subject]
    if wear:
        joined = wear[0] if len(wear) == 1 else ", ".join(wear[:-1]) + " and " + wear[-1]
        parts.append(f"wearing {joined}")
    parts.extend(extra)
    if expr is not None and not adjective:
        parts.append(_pick(rng, EXPRESSION_CLAUSES[expr]))
    scene = _pick(rng, SCENE_PHRASES[attrs["scene"]]) if "scene" in names else None
    if scene is not None:
        if rng.random() < 0.3 and len(parts) > 1:
            parts.insert(1, scene)
        else:
            parts.append(scene)
    text = parts[0]
    for k, p in enumerate(parts[1:]):
        sep = " " if k == 0 and p.startswith("wearing") and rng.random() < 0.6 else ", "
        text += sep + p
    return text


def _phrase_table() -> dict[str, dict[str, str]]:
    """Every phrase the grammar uses -> the attribute values it states."""
    table: dict[str, dict[str, str]] = {}
    for style, heads in STYLE_HEADS.items():
        for h in heads:
            table[h] = {"style": style}
    for scene, phrases in SCENE_PHRASES.items():
        for p in phrases:
            table[p] = {"scene": scene}
    for hat, nouns in HAT_NOUNS.items():
        for noun in nouns:
            table[noun] = {"hat": hat}
            for color in ATTRIBUTES["hat_color"]:
                table[f"{color} {noun}"] = {"hat": hat, "hat_color": color}
    table[GENERIC_HAT] = {"hat": ANY_HAT}
    for color in ATTRIBUTES["hat_color"]:
        table[f"{color} {GENERIC_HAT}"] = {"hat": ANY_HAT, "hat_color": color}
    for g, phrases in GLASSES_PHRASES.items():
        for p in phrases:
            table[p] = {"glasses": g}
    for name, phrases in NONE_PHRASES.items():
        for p in phrases:
            table[p] = {name: "none"}
    for color in ATTRIBUTES["clothing"]:
        table[f"dressed in {color}"] = {"clothing": color}
        for garment in GARMENTS:
            table[f"{color} {garment}"] = {"clothing": color}
    for expr, phrases in EXPRESSION_CLAUSES.items():
        for p in phrases:
            table[p] = {"expression": expr}
    for expr, adj in EXPRESSION_ADJECTIVES.items():
        table.setdefault(adj, {"expression": expr})
    return table


_PHRASES = _phrase_table()
_PHRASE_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(p) for p in sorted(_PHRASES, key=len, reverse=True))
                        + r")(?![\w-])")
_CLASS_RE = re.compile(r"\b(" + "|".join(CLASS_WORDS) + r")\b")


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption states ({name: value}, names it does not state are absent).

    Unknown words are ignored (competition prompts say more than the grammar knows); hat may be
    ANY_HAT for a generic "hat". Raises CaptionError when one attribute gets two values.
    """
    out: dict[str, str] = {}
    for m in _PHRASE_RE.finditer(text.lower()):
        for name, value in _PHRASES[m.group(1)].items():
            old = out.get(name)
            if old is not None and old != value:
                if name == "hat" and ANY_HAT in (old, value):
                    value = old if value == ANY_HAT else value
                else:
                    raise CaptionError(f"caption {text!r} states {name} = {old!r} and {value!r}")
            out[name] = value
    return out


def class_word_of(text: str) -> str | None:
    """The first class word (man, woman, boy, girl) in a caption or prompt, or None."""
    m = _CLASS_RE.search(text.lower())
    return m.group(1) if m else None
