"""ModelWrapper: gradients against finite differences, access levels, budgets (also from
threads), independence of wrappers, and clear errors on bad input. Real data (digits, tweets)
and real small models trained here in a second."""

from __future__ import annotations

import threading

import pytest
import torch

import maestro
from maestro.datasets import load
from maestro.errors import AccessDenied, QueryBudgetExceeded
from maestro.text import TokenBatch, WordTokenizer


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.tanh(self.conv(x)), 2)
        return self.fc(h.flatten(1))


class TinyLSTM(torch.nn.Module):
    def __init__(self, vocab: int, dim: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = torch.nn.LSTM(dim, dim, batch_first=True)
        self.fc = torch.nn.Linear(dim, 2)

    def get_input_embeddings(self):
        return self.emb

    def forward_embeds(self, inputs_embeds, attention_mask):
        h, _ = self.lstm(inputs_embeds)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.fc((h * m).sum(1) / m.sum(1).clamp_min(1))

    def forward(self, input_ids, attention_mask):
        return self.forward_embeds(self.emb(input_ids), attention_mask)


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train"), load("digits", "test")


@pytest.fixture(scope="module")
def cnn(digits):
    train, _ = digits
    torch.manual_seed(0)
    net = TinyCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(8):
        for x, y in train.batches(64, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()


def image_wrapper(net, **kw) -> maestro.ModelWrapper:
    return maestro.ModelWrapper(net, modality="image", num_classes=10, input_shape=(1, 8, 8), **kw)


@pytest.fixture(scope="module")
def tweets_model():
    train = load("tweets", "train")[:600]
    tok = WordTokenizer.fit(train.x, min_freq=2, max_length=32)
    torch.manual_seed(0)
    return TinyLSTM(tok.vocab_size).double().eval(), tok


def test_trained_model_is_real(cnn, digits):
    _, test = digits
    acc = (image_wrapper(cnn).predict(test.x) == test.y).float().mean()
    assert acc > 0.9


def test_image_gradient_matches_finite_differences(cnn, digits):
    net = TinyCNN()
    net.load_state_dict(cnn.state_dict())
    net = net.double()
    w = image_wrapper(net)
    _, test = digits
    x = test.x[:3].double().clamp(0.05, 0.95)
    y = test.y[:3]
    g = w.gradient(x, y)
    assert g.shape == x.shape
    loss = lambda z: torch.nn.functional.cross_entropy(net(z), y, reduction="sum")
    h = 1e-6
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        d = torch.randn(x.shape, generator=gen, dtype=torch.double)
        fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
        assert torch.isclose((g * d).sum(), fd, rtol=1e-5, atol=1e-7)


def test_targeted_gradient_is_negated_and_margin_loss(cnn, digits):
    w = image_wrapper(cnn)
    x, y = digits[1].x[:5], digits[1].y[:5]
    assert torch.allclose(w.gradient(x, y, targeted=True), -w.gradient(x, y))
    g, logits = w.gradient(x, y, loss="margin", return_logits=True)
    assert g.shape == x.shape and torch.allclose(logits, w.logits(x), atol=1e-5)
    custom = w.gradient(x, y, loss=lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"))
    assert torch.allclose(custom, w.gradient(x, y))


def test_batching_gives_the_same_answers(cnn, digits):
    x = digits[1].x
    big, small = image_wrapper(cnn), image_wrapper(cnn, batch_size=7)
    assert torch.allclose(big.logits(x), small.logits(x), atol=1e-5)
    assert torch.allclose(big.gradient(x[:20], digits[1].y[:20]), small.gradient(x[:20], digits[1].y[:20]), atol=1e-6)
    assert torch.allclose(big.predict_proba(x).sum(1), torch.ones(len(x)))


def test_text_gradient_matches_finite_differences(tweets_model):
    net, tok = tweets_model
    w = maestro.ModelWrapper(net, modality="text", num_classes=2, tokenizer=tok)
    texts = ["this flight was great , thanks !", "worst service ever"]
    tb = w.tokenize(texts)
    y = torch.tensor([1, 0])
    g = w.gradient(texts, y)
    emb = w.embeddings(tb)
    assert g.shape == emb.shape == (2, tb.input_ids.shape[1], net.emb.embedding_dim)
    loss = lambda e: torch.nn.functional.cross_entropy(
        w.logits_from_embeddings(e, tb.attention_mask), y, reduction="sum"
    )
    d = torch.randn(emb.shape, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    h = 1e-6
    fd = (loss(emb + h * d) - loss(emb - h * d)) / (2 * h)
    assert torch.isclose((g * d).sum(), fd, rtol=1e-5)
    assert torch.allclose(w.logits(tb), w.logits_from_embeddings(emb, tb.attention_mask))
    assert w.embedding_matrix().shape == (tok.vocab_size, net.emb.embedding_dim)


def test_text_round_trip_is_readable(tweets_model):
    _, tok = tweets_model
    w = maestro.ModelWrapper(tweets_model[0], modality="text", num_classes=2, tokenizer=tok, access="labels")
    out = w.detokenize(w.tokenize(["the flight was late, again!"]))
    assert out == ["the flight was late, again!"]
    assert isinstance(w.tokenize(["a", "b c"]), TokenBatch)


def test_access_levels(cnn, digits, tweets_model):
    x, y = digits[1].x[:4], digits[1].y[:4]
    labels = image_wrapper(cnn, access="labels")
    scores = image_wrapper(cnn, access="scores")
    assert labels.predict(x).shape == (4,)
    for call in (lambda: labels.logits(x), lambda: labels.predict_proba(x), lambda: labels.gradient(x, y)):
        with pytest.raises(AccessDenied, match="'labels' access"):
            call()
    assert scores.predict_proba(x).shape == (4, 10)
    with pytest.raises(AccessDenied, match="gradient\\(\\) needs 'white-box'"):
        scores.gradient(x, y)
    with pytest.raises(AccessDenied):
        scores.model  # noqa: B018
    public = [getattr(scores, a) for a in dir(scores) if not a.startswith("_") and a != "model"]
    params = {id(p) for p in cnn.parameters()} | {id(cnn)}
    assert not any(id(v) in params for v in public)
    assert all(not isinstance(v, torch.nn.Module) for v in public)
    with pytest.raises(AccessDenied, match="cannot raise access"):
        scores.restrict("white-box")
    text = maestro.ModelWrapper(tweets_model[0], modality="text", num_classes=2, tokenizer=tweets_model[1], access="scores")
    with pytest.raises(AccessDenied):
        text.embedding_matrix()
    with pytest.raises(AccessDenied):
        text.embeddings(["hello"])


def test_budget_refuses_whole_batches_and_counts(cnn, digits):
    x, y = digits[1].x, digits[1].y
    w = image_wrapper(cnn, budget=50)
    w.predict(x[:30])
    w.gradient(x[:10], y[:10])
    assert (w.queries, w.gradient_queries, w.remaining) == (40, 10, 10)
    with pytest.raises(QueryBudgetExceeded, match="needs 11 queries but only 10"):
        w.logits(x[:11])
    assert w.queries == 40  # nothing ran, nothing charged
    w.predict(x[:10])
    assert w.remaining == 0
    with pytest.raises(QueryBudgetExceeded):
        w.predict(x[:1])
    w.reset()
    assert w.queries == 0 and w.remaining == 50


def test_failed_call_is_refunded(cnn):
    w = image_wrapper(cnn, budget=5)
    with pytest.raises(ValueError):
        w.gradient(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 99]))
    assert w.queries == 0


def test_budget_is_exact_under_concurrent_threads(cnn, digits):
    x = digits[1].x[:5]
    w = image_wrapper(cnn, budget=50)
    answered, refused = [], []
    lock = threading.Lock()

    def worker():
        for _ in range(5):
            try:
                w.predict(x)
                with lock:
                    answered.append(len(x))
            except QueryBudgetExceeded:
                with lock:
                    refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(answered) == 50 == w.queries
    assert len(refused) == 40 - 10


def test_wrappers_share_no_state(cnn, digits):
    x = digits[1].x[:8]
    a, b = image_wrapper(cnn, budget=8), image_wrapper(cnn, access="labels", budget=100)
    a.predict(x)
    assert (a.queries, b.queries) == (8, 0)
    b.predict(x)
    assert (a.queries, b.queries) == (8, 8)
    c = a.restrict("scores", budget=3)
    assert c.queries == 0 and c.budget == 3 and a.budget == 8


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.rand(1, 8, 8), ValueError, "reshape"),
        (torch.rand(2, 1, 28, 28), ValueError, "expected shape N×1×8×8"),
        (torch.randint(0, 2, (2, 1, 8, 8)), TypeError, "floating-point"),
        (torch.full((2, 1, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.rand(2, 1, 8, 8) * 255, ValueError, "divide by 255"),
        (["a text"], TypeError, "expects a float tensor"),
        ("a text", TypeError, "expects a float tensor"),
    ],
)
def test_bad_image_inputs(cnn, bad, error, match):
    with pytest.raises(error, match=match):
        image_wrapper(cnn).predict(bad)


def test_bad_labels_and_arguments(cnn, tweets_model):
    w = image_wrapper(cnn)
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        w.gradient(x, [0, 1, 10])
    with pytest.raises(ValueError, match="expected 3 labels"):
        w.gradient(x, [0, 1])
    with pytest.raises(TypeError, match="integer class labels"):
        w.gradient(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="loss must be"):
        w.gradient(x, [0, 1, 2], loss="hinge")
    with pytest.raises(ValueError, match="access must be one of"):
        image_wrapper(cnn, access="root")
    with pytest.raises(ValueError, match="budget must be"):
        image_wrapper(cnn, budget=-1)
    with pytest.raises(ValueError, match="num_classes"):
        maestro.ModelWrapper(cnn, modality="image", num_classes=1)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        maestro.ModelWrapper(cnn, modality="text", num_classes=2)
    with pytest.raises(TypeError, match="is for text models"):
        w.tokenize(["x"])
    text = maestro.ModelWrapper(tweets_model[0], modality="text", num_classes=2, tokenizer=tweets_model[1])
    with pytest.raises(TypeError, match="expects a list of str"):
        text.predict(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="one str"):
        text.predict("hello")


def test_device_moves(cnn):
    w = image_wrapper(TinyCNN())
    assert w.to("cpu") is w and w.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            w.to("cuda")


def test_outputs_without_gradient_path_give_zero_gradient(digits):
    class HardOneHot(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot((x.flatten(1).sum(1) > 30).long(), 10).float()

    w = image_wrapper(HardOneHot())
    x, y = digits[1].x[:4], digits[1].y[:4]
    assert torch.equal(w.gradient(x, y), torch.zeros_like(x))


def test_common_mistakes_get_hints(cnn, digits):
    w = image_wrapper(cnn)
    with pytest.raises(TypeError, match="pass its inputs, data.x"):
        w.predict(digits[1])
    with pytest.raises(TypeError, match=r"x.float\(\) / 255"):
        w.predict((digits[1].x[:2] * 16).to(torch.uint8))
    with pytest.raises(ValueError, match=r"x.reshape\(1, 1, 8, 8\)"):
        w.predict(digits[1].x[0, 0])
    with pytest.raises(ValueError, match="did you mean 'mnist'"):
        load("MNIST")
    with pytest.raises(ValueError, match="did you mean 'dev'"):
        load("digits", "validation")
    with pytest.raises(ValueError, match="did you mean 'lenet-mnist'"):
        maestro.models.load("lenet-minst")


def test_cudnn_stays_off_until_the_last_overlapping_rnn_gradient_is_done():
    """cuDNN is switched off (process-wide) while an RNN model's gradient runs on a GPU; calls in
    several threads overlap, and the flag comes back only when the last one ends."""
    import threading
    import time

    from maestro.wrapper import _cudnn_disabled

    was = torch.backends.cudnn.enabled
    seen, start = [], threading.Barrier(3)

    def hold(seconds):
        start.wait()
        with _cudnn_disabled():
            time.sleep(seconds)
            seen.append(torch.backends.cudnn.enabled)

    threads = [threading.Thread(target=hold, args=(s,)) for s in (0.01, 0.1, 0.2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [False, False, False] and torch.backends.cudnn.enabled == was
