"""A cheap check, after the cosine threshold, that a semantic-cache hit asks the same thing.

Sentence embeddings place "weather in Paris today" next to "weather in London today", and
"what is 2+2" next to "what is 2+3": the words that change the answer are a small part of the
sentence. `agrees(query, cached)` compares exactly those words and refuses the hit when they
differ. It uses regexes and set operations only (tens of microseconds for a question), so it can
run on every candidate hit.

What is compared, each in both directions (a hit is refused if either side has something the
other lacks):

- numbers: digit runs (`2`, `3.5`, `2,000` -> `2000`, `1st` -> `1`), and written numbers `two` to
  `twenty`, tens and `hundred`/`thousand`/`million`/`billion`, mapped to digits so "2" and "two"
  agree. `one` is left out: in questions it is mostly a pronoun ("which one is better").
  Years are numbers, so 2019 versus 2020 is refused.
- time words: weekdays, months (not `may`, mostly a verb) and today/tomorrow/yesterday/tonight,
  compared as sets, whatever their case.
- named entities: words written with a capital letter that do not start a sentence (`Paris`,
  `iPhone`, `USA`), with a possessive `'s` dropped. An entity of one side must appear, in any
  case, among the words of the other side: "France" versus "france" agrees, "Paris" versus
  "London" does not. Sentence-initial words are skipped because every sentence starts with a
  capital; "Paris weather" versus "London weather" is therefore left to the embedding.
- negation: whether the text contains any of not, no, never, nor, none, nobody, nothing, cannot,
  without, or a word ending in n't. Only presence is compared ("is it safe" versus "is it not
  safe" is refused); two different negations agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType


def _words(*lines: str) -> tuple[str, ...]:
    return tuple(word for line in lines for word in line.split())


_SMALL_NUMBERS = _words(
    "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    "fifteen sixteen seventeen eighteen nineteen twenty",
)
_WRITTEN_NUMBERS = MappingProxyType(
    {word: str(value) for value, word in enumerate(_SMALL_NUMBERS) if word != "_"}
    | {
        "thirty": "30",
        "forty": "40",
        "fifty": "50",
        "sixty": "60",
        "seventy": "70",
        "eighty": "80",
        "ninety": "90",
        "hundred": "100",
        "thousand": "1000",
        "million": "1000000",
        "billion": "1000000000",
    }
)
_TIME_WORDS = frozenset(
    _words(
        "today tomorrow yesterday tonight",
        "monday tuesday wednesday thursday friday saturday sunday",
        "january february march april june july august september october november december",
    )
)
_NEGATIONS = frozenset(_words("not no never nor none nobody nothing cannot without"))
# Capitalised words that are not names: pronouns and the words questions start clauses with.
_NOT_ENTITIES = frozenset(
    _words(
        "i i'm i've i'd i'll what why how when where which who whom whose",
        "is are do does did can could should would will the a an if",
    )
)
_CURLY_APOSTROPHE = "\u2019"

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:['\u2019][A-Za-z]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# What ends the sentence before a word (possibly with whitespace between): the word then starts a
# new sentence (or a quoted or bracketed one), so its capital is grammar, not a name.
_SENTENCE_ENDS = frozenset('.!?:;"\u201c(\n')
_POSSESSIVE = re.compile(r"['\u2019]s$", re.IGNORECASE)
# Texts longer than this are not compared: a hit is refused. Every rule here is linear in the
# text, but an embedding of a long text says little about its details, which are what the guard
# is for, and embedding it costs seconds (0.4 s for 6,000 characters, 5 s for 64,000 with the
# local model), so the cache keeps such requests exact-only (`keys.derive_keys`).
MAX_GUARDED_CHARS = 8 * 1024


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """Whether a cached question may answer the query; `reason` says what differed, if anything."""

    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Salient:
    """The parts of a text that change its answer, plus all its words for entity look-ups."""

    numbers: frozenset[str]
    times: frozenset[str]
    entities: frozenset[str]
    negated: bool
    words: frozenset[str]


_AGREE = GuardVerdict(ok=True, reason="")
_TOO_LONG = GuardVerdict(ok=False, reason=f"too long to compare (over {MAX_GUARDED_CHARS} chars)")


def agrees(query: str, cached: str) -> GuardVerdict:
    """Whether `cached`'s answer can serve `query`: numbers, time words, named entities and
    negation must agree (see the module docstring for the exact rules). Texts over
    `MAX_GUARDED_CHARS` are refused uncompared."""
    if len(query) > MAX_GUARDED_CHARS or len(cached) > MAX_GUARDED_CHARS:
        return _TOO_LONG
    a, b = _salient(query), _salient(cached)
    if a.numbers != b.numbers:
        return _refuse("numbers", a.numbers, b.numbers)
    if a.times != b.times:
        return _refuse("dates", a.times, b.times)
    missing_in_cached = a.entities - b.words
    missing_in_query = b.entities - a.words
    if missing_in_cached or missing_in_query:
        return _refuse("entities", missing_in_cached, missing_in_query)
    if a.negated != b.negated:
        side = "query" if a.negated else "cached question"
        return GuardVerdict(ok=False, reason=f"negation: only the {side} is negated")
    return _AGREE


def _refuse(kind: str, only_query: frozenset[str], only_cached: frozenset[str]) -> GuardVerdict:
    query_side = sorted(only_query - only_cached)
    cached_side = sorted(only_cached - only_query)
    return GuardVerdict(
        ok=False, reason=f"{kind}: query has {query_side}, cached question has {cached_side}"
    )


def _salient(text: str) -> _Salient:
    numbers = {_canonical_number(match) for match in _NUMBER.findall(text)}
    times: set[str] = set()
    entities: set[str] = set()
    words: set[str] = set()
    negated = False
    for match in _WORD.finditer(text):
        word = match.group()
        lower = _POSSESSIVE.sub("", word.lower().replace(_CURLY_APOSTROPHE, "'"))
        words.add(lower)
        if lower in _NEGATIONS or lower.endswith("n't"):
            negated = True
        elif lower in _WRITTEN_NUMBERS:
            numbers.add(_WRITTEN_NUMBERS[lower])
        elif lower in _TIME_WORDS:
            times.add(lower)
        elif (
            _is_capitalised(word)
            and lower not in _NOT_ENTITIES
            and not _starts_sentence(text, match.start())
        ):
            entities.add(lower)
    return _Salient(
        frozenset(numbers), frozenset(times), frozenset(entities), negated, frozenset(words)
    )


def _starts_sentence(text: str, start: int) -> bool:
    """Whether the word at `start` begins a sentence: only whitespace before it, or a sentence end
    (`_SENTENCE_ENDS`, a newline among them) before or within the whitespace in front of it. Reads
    back over that whitespace only, which precedes one word, so a whole text costs linear time."""
    at = start
    while at > 0 and text[at - 1].isspace():
        at -= 1
        if text[at] == "\n":
            return True
    return at == 0 or text[at - 1] in _SENTENCE_ENDS


def _is_capitalised(word: str) -> bool:
    # "Paris", "USA", and also "iPhone"/"eBay": a capital anywhere but the whole word lower-case.
    return word[0].isupper() or any(char.isupper() for char in word[1:])


def _canonical_number(text: str) -> str:
    """`2,000` -> `2000`, `3.50` -> `3.5`, `007` -> `7`; a decimal comma is read as a separator."""
    whole, _, fraction = text.replace(",", "").partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0").replace(".", "")
    return f"{whole}.{fraction}" if fraction else whole
