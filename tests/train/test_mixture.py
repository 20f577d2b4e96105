"""Mixed training streams: exact shares over any window, random access equal to the sequential stream, disjoint
ranks, exact resume, the logged tokens and epochs, and the refusals."""

from __future__ import annotations

import itertools
import json
import shutil
from fractions import Fraction

import pytest
from lightning.pytorch.callbacks import Callback

from slmtrain.config import ConfigError
from slmtrain.train.callbacks import read_metrics
from slmtrain.train.mixture import MixtureSampler, draws_before, exact_weights, source_order
from slmtrain.train.run import LAST_CHECKPOINT, train
from tests.conftest import tiny_recipe


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.7, 0.2, 0.05, 0.05], [1, 1], [0.15, 0.0, 0.85],
                                     [1 / 3, 1 / 3, 1 / 3]])
def test_every_window_holds_each_source_in_its_share_up_to_rounding(weights):
    exact = exact_weights(weights)
    stream = [s for s, _ in itertools.islice(source_order(exact, 0), 5000)]
    for width in (7, 50, 999):
        for start in range(0, 4000, 53):
            window = stream[start: start + width]
            for source, weight in enumerate(exact):
                assert abs(window.count(source) - width * weight) < 2, (width, start, source)
    assert exact == [Fraction(w).limit_denominator(10**9) / sum(
        Fraction(x).limit_denominator(10**9) for x in weights) for w in weights]


def test_random_access_equals_the_stream_and_costs_nothing_at_a_trillion_tokens():
    exact = exact_weights([0.5, 0.25, 0.15, 0.1])
    stream = list(itertools.islice(source_order(exact, 0), 3000))
    counts = [0] * 4
    for position, (source, draw) in enumerate(stream):
        if position % 101 == 0:
            assert draws_before(exact, position) == counts
            assert list(itertools.islice(source_order(exact, position), 20)) == stream[position: position + 20]
        assert draw == counts[source]
        counts[source] += 1
    far = 10**12 // 2048  # samples of a 1T-token run at seq_len 2048
    counts = draws_before(exact, far)
    assert sum(counts) == far and all(abs(c - far * w) < 2 for c, w in zip(counts, exact))


def test_ranks_are_disjoint_and_together_the_single_stream():
    sizes, weights = [40, 25, 30], [0.5, 0.3, 0.2]
    whole = list(itertools.islice(iter(MixtureSampler(sizes, weights, seed=3, start=12)), 300))
    ranks = [list(itertools.islice(iter(MixtureSampler(sizes, weights, 3, 12, rank, 3)), 100)) for rank in range(3)]
    assert [ranks[i % 3][i // 3] for i in range(300)] == whole
    first_epoch = whole[:50]  # within the first epoch of every source no sample repeats
    assert len(set(first_epoch)) == len(first_epoch)
    resumed = list(itertools.islice(iter(MixtureSampler(sizes, weights, seed=3, start=112)), 200))
    assert resumed == whole[100:]


def test_config_refusals_name_the_key(shards, tmp_path):
    with pytest.raises(ConfigError, match="data.mixture.code: not a source; valid choices: web"):
        tiny_recipe(shards, tmp_path / "a", data__sources={"web": str(shards)}, data__mixture={"code": 1.0})
    with pytest.raises(ConfigError, match="data.mixture.web: a weight is a finite number >= 0"):
        tiny_recipe(shards, tmp_path / "a", data__sources={"web": str(shards)}, data__mixture={"web": -1})
    with pytest.raises(ConfigError, match="data.mixture: the weights are all zero"):
        tiny_recipe(shards, tmp_path / "a", data__sources={"web": str(shards)}, data__mixture={"web": 0})


def mixed(shards, run_dir, tmp_path, **overrides):
    other = tmp_path / "copy"
    if not other.exists():
        shutil.copytree(shards, other)
    return tiny_recipe(shards, run_dir, data__sources={"web": str(shards), "edu": str(other)},
                       data__mixture={"web": 0.75, "edu": 0.25}, **overrides)


class StopAt(Callback):
    def __init__(self, step, checkpoint):
        self.step, self.checkpoint = step, checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.checkpoint, weights_only=False)
            trainer.should_stop = True


def losses(run_dir):
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir / "metrics.csv") if r["train_loss"]}


def test_a_mixed_run_logs_its_sources_and_resumes_exactly(shards, tmp_path):
    whole = tmp_path / "whole"
    train(mixed(shards, whole, tmp_path))
    use = json.loads((whole / "mixture.json").read_text())
    assert use["step"] == 16 and [u["name"] for u in use["used"]] == ["web", "edu"]
    samples = 16 * 8  # steps x samples per step (512 tokens / 64)
    assert [u["draws"] for u in use["used"]] == [96, 32] and sum(u["draws"] for u in use["used"]) == samples
    assert use["used"][0]["tokens"] == 96 * 64 and use["used"] == use["planned"]

    interrupted = tmp_path / "interrupted"
    config = mixed(shards, interrupted, tmp_path)
    train(config, callbacks=[StopAt(6, interrupted / LAST_CHECKPOINT)])  # as Ctrl-C does: checkpoint, stop
    assert json.loads((interrupted / "mixture.json").read_text())["step"] == 6
    train(config, resume=True)
    assert losses(interrupted) == losses(whole)
    assert json.loads((interrupted / "mixture.json").read_text()) == use


def test_over_repeated_and_changed_sources_are_refused_before_training(shards, tmp_path):
    with pytest.raises(ConfigError, match=r"data.max_epochs: source web would be read .* times"):
        train(mixed(shards, tmp_path / "run", tmp_path, budget__tokens=512 * 4000))
    assert not (tmp_path / "run" / "checkpoints").exists()
    config = mixed(shards, tmp_path / "run", tmp_path)
    train(config, callbacks=[StopAt(2, tmp_path / "run" / LAST_CHECKPOINT)])
    shutil.rmtree(tmp_path / "copy")  # the edu source rewritten with a part of the data only
    shutil.copytree(shards, tmp_path / "copy")
    meta = json.loads((tmp_path / "copy" / "meta.json").read_text())
    meta["splits"]["train"]["tokens"] //= 2
    (tmp_path / "copy" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="data.sources.edu: changed on disk since the run began"):
        train(config, resume=True)


def test_a_source_made_with_another_tokenizer_is_refused(shards, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    config = tiny_recipe(shards, tmp_path / "run", data__sources={"web": str(shards), "edu": str(other)})
    with pytest.raises(ConfigError, match="data.sources.edu: .* another tokenizer than data.shards"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_dry_run_plan_shows_each_sources_tokens_and_epochs(shards, tmp_path):
    from slmtrain.train.run import plan

    planned = plan(mixed(shards, tmp_path / "run", tmp_path))
    assert [(u["name"], u["draws"]) for u in planned.sources] == [("web", 96), ("edu", 32)]
    assert "edu: 0.25, 2,048 tokens" in planned.format()
