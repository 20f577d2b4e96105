"""A faster word tokenizer for datatrove's heuristic filters, with the same tokens.

The Gopher, C4 and FineWeb filters split text with datatrove's spaCy tokenizer, which spends most of the heuristic
steps' time re-creating spaCy's lexeme of every word it meets: each call runs inside spaCy's ``memory_zone``,
which frees the words the call added (against unbounded vocabulary growth), so common words are paid for again in
every document. ``SharedSpaCyTokenizer`` keeps the vocabulary and rebuilds the spaCy pipeline once it holds
``MAX_LEXEMES`` words (memory stays bounded), and remembers the words of the text it split last: the Gopher
repetition, Gopher quality and FineWeb filters each split the same document in turn (a document goes through every
step before the next one is read). Passed as the filters' (and MinHash's) ``language``, one instance serves all.
"""

from __future__ import annotations

import functools
from typing import Any

from datatrove.utils.word_tokenizers import SpaCyTokenizer, load_word_tokenizer, strip_strings

MAX_LEXEMES = 500_000  # a few hundred MB of spaCy vocabulary at most, per worker process
_PIPELINES: dict[str, Any] = {}  # language -> this process's spaCy pipeline


class SharedSpaCyTokenizer(SpaCyTokenizer):
    """datatrove's ``SpaCyTokenizer`` for ``language`` without ``memory_zone``, remembering the last text's words."""

    def __init__(self, language: str, config: dict | None = None):
        super().__init__(language, config)
        self._last_words: tuple[str, list[str]] | None = None

    @property
    def tokenizer(self):  # noqa: ANN201 - a spaCy Language
        """The spaCy pipeline, one per process and language (built in seconds; each task unpickles its steps
        afresh), rebuilt with an empty vocabulary past MAX_LEXEMES."""
        nlp = _PIPELINES.get(self.language)
        if nlp is None or len(nlp.vocab) > MAX_LEXEMES:
            nlp = _PIPELINES[self.language] = SpaCyTokenizer(self.language, self.config).tokenizer
        return nlp

    def _docs(self, text: str) -> list:  # noqa: ANN401 - spaCy Docs
        self.tokenizer.max_length = len(text) + 10
        return self._do_tokenize(text)

    def word_tokenize(self, text: str) -> list[str]:
        # the same object, not an equal text: a step that rewrites doc.text (C4 drops lines) makes a new one
        if self._last_words is None or self._last_words[0] is not text:
            self._last_words = (text, strip_strings([token.text for doc in self._docs(text) for token in doc]))
        return self._last_words[1]

    def sent_tokenize(self, text: str) -> list[str]:
        return strip_strings([sentence.text for doc in self._docs(text) for sentence in doc.sents])

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for doc in self._docs(text):  # as datatrove's: chunk offsets continue from the previous chunk's end
            start = spans[-1][1] if spans else 0
            spans += [(start + sentence.start_char, start + sentence.end_char) for sentence in doc.sents]
        return spans


@functools.lru_cache(maxsize=None)
def shared_tokenizer(language: str) -> SharedSpaCyTokenizer | str:
    """One SharedSpaCyTokenizer per language that datatrove splits with spaCy, else ``language`` itself (datatrove's
    own tokenizer for it is then used)."""
    stock = load_word_tokenizer(language)
    return SharedSpaCyTokenizer(stock.language, stock.config) if type(stock) is SpaCyTokenizer else language
