"""Text attacks on the zoo's word-level LSTM (lstm-tweets): HotFlip, universal triggers and
black-box word substitution, with the threat model's own token check on every output.

Measured here (2 CPU cores, torch 1 thread), seeds fixed, on the first 200 test tweets
(lstm-tweets: 85.0% clean accuracy):

- HotFlip, 10 re-scored candidates per step: eps 1 → 37.0%, eps 2 → 5.5%, eps 3 → 0.5%
  (median 1 swap, ~15 queries and ~10 ms per example); plain greedy (candidates=1), eps 3 → 4.5%.
- Universal trigger, 3 tokens learned on 2,000 training tweets (4 rounds of 64): 'cheating thank
  cheating' → 46.5%.
- Word substitution (black-box, eps 3, ≤ 25% of the words, MiniLM neighbours): 49.5%, 1.9 words
  changed and 28 queries per example on average.
- minilm-tweets (first 100 test tweets, 91.0% clean): HotFlip eps 3 (4 candidates) → 10.0%,
  ~0.23 s per example; a short trigger search (4 rounds of 64) → 70.0%. Here it is only
  checked lightly (word pieces, special tokens), the encoder being slow on CPU.

The whole file runs in ~25 s. ``benchmarks/text_attacks.py`` prints the same numbers.
"""

from __future__ import annotations

import re

import pytest
import torch

import maestro
from maestro.attacks import HotFlip, UniversalTrigger, WordSubstitution
from maestro.attacks._text import insertable_tokens
from maestro.errors import AccessDenied, AssetUnavailable
from maestro.threat import _WORDS, ThreatModel

N = 200  # test tweets attacked


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lstm():
    try:
        return maestro.models.load("lstm-tweets")
    except AssetUnavailable:
        maestro.models.build("lstm-tweets", progress=False)
        return maestro.models.load("lstm-tweets")


@pytest.fixture(scope="module")
def data():
    train = maestro.datasets.load("tweets", "train")
    test = maestro.datasets.load("tweets", "test")
    return train, test.x[:N], test.y[:N]


def accuracy(model, x, y) -> float:
    return float((model.predict(x).cpu() == y).float().mean())


def new_words(clean: str, adv: str) -> list[str]:
    """Counted units of ``adv`` that are not in ``clean`` (the inserted or swapped words)."""
    from maestro.threat import _edits

    return _edits(_WORDS.findall(clean), _WORDS.findall(adv))[1]


def assert_real_vocabulary(model, result, x):
    tok = model.tokenizer
    ok = insertable_tokens(tok)
    for clean, adv in zip(x, result.x_adv):
        assert isinstance(adv, str) and adv.strip()
        for w in new_words(clean, adv):
            i = tok.token_to_id(w)
            assert ok[i] and i not in tok.special_ids and tok.id_to_token(i) == w, w


# -- HotFlip -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hotflip(lstm, data):
    _, x, y = data
    threat = ThreatModel("tokens", 3)
    return threat, HotFlip(threat)(lstm, x, y)


def test_hotflip_lowers_accuracy_by_20_points_with_3_swaps(lstm, data, hotflip):
    _, x, y = data
    threat, result = hotflip
    clean, attacked = accuracy(lstm, x, y), accuracy(lstm, result.x_adv, y)
    assert clean > 0.75
    assert attacked <= clean - 0.20, (clean, attacked)
    threat.check(x, result.x_adv)
    assert int(result.norms.max()) <= 3
    assert (result.info["changed"].float() == result.norms).all()
    # success is judged on the returned strings
    assert (result.success == (lstm.predict(result.x_adv).cpu() != y)).all()


def test_hotflip_swaps_are_real_vocabulary_words(lstm, data, hotflip):
    _, x, _ = data
    _, result = hotflip
    assert_real_vocabulary(lstm, result, x)
    for swaps in result.info["swaps"]:
        for _pos, old, new in swaps:
            assert new not in ("[PAD]", "[UNK]") and new != old
    ids = result.info["input_ids"]
    assert ids.shape[0] == N and int(ids.max()) < lstm.tokenizer.vocab_size


def test_hotflip_leaves_broken_examples_and_padding_alone(lstm, data, hotflip):
    _, x, y = data
    _, result = hotflip
    wrong = lstm.predict(x).cpu() != y
    assert all(result.x_adv[i] == x[i] for i in wrong.nonzero().flatten().tolist())
    tb = lstm.tokenize(x)
    assert (result.info["input_ids"][tb.attention_mask == 0] == lstm.tokenizer.pad_id).all()


def test_hotflip_respects_vocab_and_is_deterministic(lstm, data):
    _, x, y = data
    words = ["bad", "worst", "hate", "love", "great", "good"]
    threat = ThreatModel("tokens", 2, vocab=words)
    a = HotFlip(threat, candidates=3)(lstm, x[:40], y[:40])
    b = HotFlip(threat, candidates=3)(lstm, x[:40], y[:40])
    assert a.x_adv == b.x_adv
    threat.check(x[:40], a.x_adv)
    assert all(w in words for c, s in zip(x[:40], a.x_adv) for w in new_words(c, s))
    assert a.success.any()


def test_hotflip_accepts_token_batches(lstm, data):
    _, x, y = data
    result = HotFlip(ThreatModel("tokens", 1))(lstm, lstm.tokenize(x[:8]), y[:8])
    assert all(isinstance(s, str) for s in result.x_adv) and len(result.x_adv) == 8


# -- universal triggers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trigger(lstm, data):
    train, _, _ = data
    threat = ThreatModel("tokens", 3)
    attack = UniversalTrigger(threat, steps=4, batch_size=64, candidates=8, seed=0)
    return threat, attack.fit(lstm, train.x[:2000], train.y[:2000])


def test_trigger_lowers_accuracy_by_20_points(lstm, data, trigger):
    _, x, y = data
    threat, attack = trigger
    result = attack(lstm, x, y)
    clean, attacked = accuracy(lstm, x, y), accuracy(lstm, result.x_adv, y)
    assert attacked <= clean - 0.20, (clean, attacked, attack.trigger)
    threat.check(x, result.x_adv)
    assert (result.norms == 3).all()
    assert all(adv == f"{attack.trigger} {c}" for c, adv in zip(x, result.x_adv))
    assert_real_vocabulary(lstm, result, x)
    assert result.queries == N  # applying a learned trigger costs one query per input


def test_trigger_is_deterministic_for_a_seed(lstm, data, trigger):
    train, _, _ = data
    threat, attack = trigger
    again = UniversalTrigger(threat, steps=4, batch_size=64, candidates=8, seed=0)
    again.fit(lstm, train.x[:2000], train.y[:2000])
    assert again.trigger_ids == attack.trigger_ids
    assert len(attack.trigger_ids) == 3 and len(attack.history) == 4


def test_trigger_shorter_than_eps_and_fit_on_call(lstm, data):
    _, x, y = data
    attack = UniversalTrigger(ThreatModel("tokens", 3), length=1, steps=1, batch_size=32, candidates=4)
    result = attack(lstm, x[:32], y[:32])  # not fitted: learns on the inputs first
    assert attack.trigger is not None and len(attack.trigger_ids) == 1
    assert (result.norms == 1).all()


# -- word substitution (black-box) -----------------------------------------------------------------
def test_word_substitution_stays_inside_the_query_budget_exactly(lstm, data):
    _, x, y = data
    blackbox = lstm.restrict("scores", budget=150)
    threat = ThreatModel("tokens", 2, access="scores", query_budget=40)
    result = WordSubstitution(threat, neighbours=8)(blackbox, x[:20], y[:20])
    assert blackbox.queries <= 150 and result.queries == blackbox.queries
    assert int(result.info["spent"].max()) <= 40
    assert int(result.info["spent"].sum()) == result.queries
    threat.check(x[:20], result.x_adv)
    # a budget that ends mid-attack stops it cleanly
    tight = lstm.restrict("scores", budget=37)
    result = WordSubstitution(ThreatModel("tokens", 2, access="scores"))(tight, x[:20], y[:20])
    assert tight.remaining == 0 and result.queries == 37


def test_word_substitution_flips_predictions(lstm, data):
    _, x, y = data
    blackbox = lstm.restrict("scores")
    threat = ThreatModel("tokens", 3, access="scores")
    result = WordSubstitution(threat)(blackbox, x[:60], y[:60])
    threat.check(x[:60], result.x_adv)
    assert (result.success == (lstm.predict(result.x_adv).cpu() != y[:60])).all()
    assert accuracy(lstm, result.x_adv, y[:60]) <= accuracy(lstm, x[:60], y[:60]) - 0.2
    changed = result.info["changed"]
    words = torch.tensor([len(re.findall(r"\w+", t)) for t in x[:60]])
    assert (changed <= torch.clamp((0.25 * words).long(), min=1)).all()
    assert_real_vocabulary(lstm, result, x[:60])


# -- bad inputs -------------------------------------------------------------------------------------
class _Image(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :2]


def test_bad_inputs_get_clear_errors(lstm, data):
    _, x, y = data
    image = maestro.ModelWrapper(_Image(), modality="image", num_classes=2, input_shape=(1, 2, 2))
    for cls in (HotFlip, UniversalTrigger, WordSubstitution):
        with pytest.raises(TypeError, match="text attacks on image models"):
            cls(ThreatModel("tokens", 1))(image, torch.zeros(2, 1, 2, 2), [0, 1])
        with pytest.raises(ValueError, match="≥ 1"):
            cls(ThreatModel("tokens", 0))
        with pytest.raises(ValueError, match="supports norm tokens"):
            cls(ThreatModel("linf", 0.1))
    with pytest.raises(AccessDenied, match="white-box"):
        HotFlip(ThreatModel("tokens", 1))(lstm.restrict("scores"), x[:2], y[:2])
    with pytest.raises(AccessDenied, match="scores"):
        WordSubstitution(ThreatModel("tokens", 1))(lstm.restrict("labels"), x[:2], y[:2])
    with pytest.raises(AccessDenied, match="threat model allows only"):
        UniversalTrigger(ThreatModel("tokens", 1, access="scores"))(lstm, x[:2], y[:2])
    with pytest.raises(TypeError, match="one str"):
        HotFlip(ThreatModel("tokens", 1))(lstm, x[0], y[:1])
    with pytest.raises(ValueError, match="as words"):
        HotFlip(ThreatModel("tokens", 1, vocab=[5, 6]))
    with pytest.raises(ValueError, match="length"):
        UniversalTrigger(ThreatModel("tokens", 2), length=3)
    with pytest.raises(ValueError, match="targeted=True needs"):
        UniversalTrigger(ThreatModel("tokens", 1), targeted=True).fit(lstm, x[:4], y[:4])


# -- a word-piece tokenizer (MiniLM), lightly: the encoder is slow on CPU ------------------------
@pytest.fixture(scope="module")
def minilm():
    try:
        return maestro.models.load("minilm-tweets")
    except AssetUnavailable:  # not built: the same encoder with an untrained head will do here
        from transformers import AutoTokenizer

        from maestro.models.archs import MINILM_PACKAGE, EncoderClassifier, encoder_identity

        encoder = encoder_identity(MINILM_PACKAGE)
        torch.manual_seed(0)
        net = EncoderClassifier(encoder, 2)
        tok = AutoTokenizer.from_pretrained(encoder["path"])
        return maestro.ModelWrapper(net, modality="text", num_classes=2, tokenizer=tok, name="minilm")


def test_wordpiece_models_keep_special_tokens_and_whole_words(minilm, data):
    _, x, _ = data
    x = ["Un-believable!! I'm SO happy about the café :)", *x[:5]]
    y = minilm.predict(x).cpu()
    threat = ThreatModel("tokens", 2)
    result = HotFlip(threat, candidates=2)(minilm, x, y)
    threat.check(x, result.x_adv)
    assert result.success.any()
    tok = minilm.tokenizer
    clean = minilm.tokenize(x)
    ids = result.info["input_ids"]
    special = torch.isin(clean.input_ids, torch.tensor(tok.special_ids))
    assert (ids[special] == clean.input_ids[special]).all()  # [CLS], [SEP], [PAD] untouched
    for swaps in result.info["swaps"]:
        assert all(not new.startswith("##") and new not in tok.hf.all_special_tokens for _, _, new in swaps)
    assert_real_vocabulary(minilm, result, x)
    trigger = UniversalTrigger(threat, length=1, steps=1, batch_size=6, candidates=2).fit(minilm, x, y)
    applied = trigger(minilm, x, y)
    assert minilm.tokenize(applied.x_adv).input_ids[0, 1] == trigger.trigger_ids[0]  # right after [CLS]
