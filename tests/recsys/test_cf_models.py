"""CF models (MF-BPR, LightGCN, NeuMF) and their trainer: forward/backward, LightGCN propagation against
its definition, BPR sampling, end-to-end training beating random, checkpoint resume, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.data.implicit import ImplicitDataset
from recsys.models.cf import Recommender
from recsys.models.lightgcn import LightGCN
from recsys.models.mf import MF
from recsys.models.neumf import NeuMF
from recsys.ranking import evaluate_ranking
from recsys.training.cf import BPRSampler, CFTrainConfig, build_model, load_model, save_model, train_cf
from sparsekit.errors import ArtifactError, InputError

NUM_USERS, NUM_ITEMS = 40, 60


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensor ops: one thread


def planted(num_users: int = 120, num_items: int = 150, groups: int = 5, per_user: int = 12,
            seed: int = 0) -> ImplicitDataset:
    """Users like items of their own group; 20% of each user's items are held out as test."""
    rng = np.random.default_rng(seed)
    user_group, item_group = rng.integers(0, groups, num_users), np.arange(num_items) % groups
    rows, cols, is_test = [], [], []
    for u in range(num_users):
        items = rng.choice(np.flatnonzero(item_group == user_group[u]), per_user, replace=False)
        rows += [u] * per_user
        cols += items.tolist()
        is_test += (np.arange(per_user) < per_user // 5).tolist()
    rows, cols, is_test = np.array(rows), np.array(cols), np.array(is_test)

    def csr(sel: np.ndarray) -> sp.csr_matrix:
        ones = np.ones(sel.sum(), np.float32)
        return sp.csr_matrix((ones, (rows[sel], cols[sel])), shape=(num_users, num_items))

    return ImplicitDataset(csr(~is_test), csr(is_test), num_users, num_items)


def _interactions() -> sp.csr_matrix:
    return sp.random(NUM_USERS, NUM_ITEMS, density=0.1, format="csr", random_state=3,
                     data_rvs=np.ones).astype(np.float32)


@pytest.mark.parametrize("kind", ["mf", "lightgcn", "neumf"])
def test_forward_backward_on_tiny_data(kind: str) -> None:
    torch.manual_seed(0)
    hparams = {"dim": 8} if kind == "mf" else {"dim": 8, "layers": 2}
    model = build_model(kind, NUM_USERS, NUM_ITEMS, _interactions(), **hparams)
    users, pos, neg = torch.tensor([0, 3, 3, 39]), torch.tensor([1, 2, 59, 0]), torch.tensor([5, 6, 7, 8])
    loss, bpr = model.bpr_loss(users, pos, neg, weight_decay=1e-2)
    assert torch.isfinite(loss) and loss > bpr > 0
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
    for name, param in model.sparse_parameters().items():
        assert param.grad.abs().sum() > 0, name
    with torch.no_grad():
        scores = model.pair_scores(users, pos, neg)
        every = model.score_all(users)
    assert every.shape == (4, NUM_ITEMS)
    torch.testing.assert_close(every[torch.arange(4), pos], scores.pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(every[torch.arange(4), neg], scores.neg, rtol=1e-5, atol=1e-6)


def test_lightgcn_matches_its_definition() -> None:
    """Mean over layers 0..K of A_hat^k E with A_hat = D^-1/2 A D^-1/2 on the full (users+items) graph."""
    torch.manual_seed(0)
    inter = _interactions().tolil()
    inter[7] = 0  # a user without interactions (degree 0)
    inter = inter.tocsr()
    inter.eliminate_zeros()
    model = LightGCN(NUM_USERS, NUM_ITEMS, dim=4, layers=3, interactions=inter)
    n = NUM_USERS + NUM_ITEMS
    adj = np.zeros((n, n))
    adj[:NUM_USERS, NUM_USERS:] = inter.toarray()
    adj += adj.T
    deg = adj.sum(1)
    inv = np.where(deg > 0, deg, 1.0) ** -0.5 * (deg > 0)
    norm = inv[:, None] * adj * inv[None, :]
    layer = np.concatenate([t.detach().numpy() for t in (model.user_emb, model.item_emb)]).astype(np.float64)
    total = layer.copy()
    for _ in range(3):
        layer = norm @ layer
        total += layer
    users, items = model.final_embeddings()
    np.testing.assert_allclose(users.detach().numpy(), total[:NUM_USERS] / 4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), total[NUM_USERS:] / 4, rtol=1e-5, atol=1e-6)


def test_neumf_tower_widths() -> None:
    model = NeuMF(NUM_USERS, NUM_ITEMS, dim=16, layers=3)
    assert [(layer.in_features, layer.out_features) for layer in model.mlp] == [(32, 16), (16, 8), (8, 4)]
    assert model.predict.in_features == 16 + 4


def test_neumf_without_mlp_layers_is_refused_by_name() -> None:
    # layers=0 used to build an empty tower and crash at the first batch with an IndexError
    with pytest.raises(InputError, match="layers"):
        NeuMF(NUM_USERS, NUM_ITEMS, dim=8, layers=0)
    with pytest.raises(InputError, match="layers"):
        CFTrainConfig(model="neumf", layers=0)
    CFTrainConfig(model="lightgcn", layers=0)  # still fine: LightGCN without propagation


def test_bpr_sampler_visits_every_pair_with_unseen_negatives() -> None:
    data = planted()
    sampler = BPRSampler(data.train, seed=0)
    users, pos, neg = sampler.epoch()
    assert len(users) == data.train.nnz
    got = sorted(zip(users.tolist(), pos.tolist(), strict=True))
    coo = data.train.tocoo()
    assert got == sorted(zip(coo.row.tolist(), coo.col.tolist(), strict=True))
    assert not np.asarray(data.train[users, neg]).any()
    again = BPRSampler(data.train, seed=0).epoch()
    assert all(np.array_equal(a, b) for a, b in zip((users, pos, neg), again, strict=True))


@pytest.mark.parametrize("kind", ["mf", "lightgcn", "neumf"])
def test_training_beats_random_recall(kind: str) -> None:
    data = planted()
    config = CFTrainConfig(model=kind, dim=16, layers=2, lr=0.02, batch_size=256, epochs=15, eval_every=15,
                           seed=1, device="cpu", progress=False)
    _, history = train_cf(config, data)
    assert len(history) == 15 and history[-1]["loss"] < history[0]["loss"]
    generator = torch.Generator().manual_seed(0)
    random = evaluate_ranking(lambda u: torch.rand(len(u), data.num_items, generator=generator), data.train,
                              data.test)
    assert history[-1]["recall@20"] > 2 * random.recall + 0.1


def test_dsl_training_keeps_the_density() -> None:
    data = planted()
    config = CFTrainConfig(model="mf", dim=16, lr=0.02, batch_size=256, epochs=4, density=0.25,
                           dsl_delta_t=2, device="cpu", progress=False)
    model, _ = train_cf(config, data)
    for param in model.sparse_parameters().values():
        assert int((param != 0).sum()) <= round(0.25 * param.numel())


def test_resume_continues_exactly(tmp_path: Path) -> None:
    data = planted()
    base = {"model": "lightgcn", "dim": 8, "layers": 2, "lr": 0.02, "batch_size": 256, "epochs": 3,
            "density": 0.3, "dsl_delta_t": 2, "seed": 4, "device": "cpu", "progress": False}
    straight, straight_history = train_cf(CFTrainConfig(**base), data)
    ckpt = str(tmp_path / "ckpt")
    _, first = train_cf(CFTrainConfig(**base, checkpoint_dir=ckpt, time_budget_s=1e-9), data)  # one epoch
    assert len(first) == 1
    resumed, history = train_cf(CFTrainConfig(**base, checkpoint_dir=ckpt, resume=True), data)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["loss"] for r in history] == pytest.approx([r["loss"] for r in straight_history])
    for name, param in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], param)
    with pytest.raises(ArtifactError, match="different config"):
        train_cf(CFTrainConfig(**{**base, "lr": 0.1}, checkpoint_dir=ckpt, resume=True), data)
    with pytest.raises(ArtifactError, match="other data"):  # same shape, other interactions
        train_cf(CFTrainConfig(**base, checkpoint_dir=ckpt, resume=True), planted(seed=1))
    with pytest.raises(ArtifactError, match="other data"):  # another shape
        train_cf(CFTrainConfig(**base, checkpoint_dir=ckpt, resume=True), planted(num_users=90))


def test_resume_restores_a_checkpoint_left_only_as_its_backup(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill between the two renames of a checkpoint replace leaves only the backup: resume uses it
    (it used to retrain from scratch and then overwrite the backup), and reads the state on the CPU,
    where ``torch.set_rng_state`` needs it whatever device the model is on."""
    from recsys.training.cf import checkpoint_path
    from sparsekit.atomic import temp_sibling

    data = planted()
    config = CFTrainConfig(model="mf", dim=8, lr=0.02, batch_size=256, epochs=2, seed=3, device="cpu",
                           progress=False, checkpoint_dir=str(tmp_path / "ckpt"))
    _, history = train_cf(config, data)
    target = checkpoint_path(config)
    target.rename(temp_sibling(target, "old"))
    locations = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: locations.append(kw.get("map_location"))
                        or real_load(*a, **kw))
    _, resumed = train_cf(CFTrainConfig(**{**config.__dict__, "resume": True}), data)
    assert resumed == history and target.is_dir()  # nothing retrained: the backup's two epochs came back
    assert locations == ["cpu"]


def test_a_finished_dense_run_is_extended_by_resuming_with_more_epochs(tmp_path: Path) -> None:
    data = planted()
    base = {"model": "mf", "dim": 8, "lr": 0.02, "batch_size": 256, "seed": 2, "device": "cpu",
            "progress": False}
    straight, _ = train_cf(CFTrainConfig(**base, epochs=3), data)
    ckpt = str(tmp_path / "ckpt")
    train_cf(CFTrainConfig(**base, epochs=2, checkpoint_dir=ckpt), data)
    extended, history = train_cf(CFTrainConfig(**base, epochs=3, checkpoint_dir=ckpt, resume=True), data)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for name, param in straight.state_dict().items():
        torch.testing.assert_close(extended.state_dict()[name], param)
    dsl = {**base, "density": 0.3}  # DSL's prune schedule spans every epoch: no extending it
    train_cf(CFTrainConfig(**dsl, epochs=1, checkpoint_dir=str(tmp_path / "dsl")), data)
    with pytest.raises(ArtifactError, match=r"different config \(fields \['epochs'\]\)"):
        train_cf(CFTrainConfig(**dsl, epochs=2, checkpoint_dir=str(tmp_path / "dsl"), resume=True), data)


def test_starting_over_beside_a_checkpoint_warns_that_it_will_be_replaced(tmp_path: Path) -> None:
    config = CFTrainConfig(model="mf", dim=8, batch_size=256, epochs=1, device="cpu", progress=False,
                           checkpoint_dir=str(tmp_path / "ckpt"))
    train_cf(config, planted())
    with pytest.warns(UserWarning, match="starting over without resume"):
        train_cf(config, planted())


@pytest.mark.parametrize("kind", ["mf", "lightgcn", "neumf"])
def test_save_and_load_serve_the_same_recommendations(tmp_path: Path, kind: str) -> None:
    data = planted()
    config = CFTrainConfig(model=kind, dim=8, layers=2, lr=0.02, batch_size=256, epochs=1, device="cpu",
                           progress=False)
    model, _ = train_cf(config, data)
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model", device="cpu")
    assert type(loaded) is type(model) and loaded.hparams() == model.hparams()
    users = np.arange(data.num_users)
    want_items, want_scores = Recommender.from_model(model).recommend(users, k=10)
    items, scores = Recommender.from_model(loaded).recommend(users, k=10)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    with pytest.raises(ArtifactError, match="already exists"):
        save_model(model, tmp_path / "model")


def test_bad_config_names_the_field() -> None:
    with pytest.raises(InputError, match="model"):
        CFTrainConfig(model="svd")
    with pytest.raises(InputError, match="density"):
        CFTrainConfig(density=1.5)
    with pytest.raises(InputError, match="static_sparsity"):
        CFTrainConfig(static_sparsity=True)
    with pytest.raises(InputError, match="num_users"):
        MF(0, 5)


def test_a_checkpoint_folder_that_is_a_file_fails_before_training(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.training import cf as cf_training

    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.setattr(cf_training, "_train_epoch", lambda *a, **k: pytest.fail("an epoch ran first"))
    for folder in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "ckpt"):
        with pytest.raises(InputError, match=r"checkpoint_dir: .*notes\.txt is a file"):
            train_cf(CFTrainConfig(model="mf", dim=4, epochs=1, checkpoint_dir=str(folder), progress=False),
                     planted())
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_tables_too_large_for_memory_are_refused_by_name(tmp_path: Path) -> None:
    """One raw id (999999999) where remapped ids belong sizes a table for a billion rows: refused with
    the sizes, before anything is allocated; a remapped subsample with gaps in its ids still trains."""
    from recsys.data.implicit import load_implicit

    (tmp_path / "train.txt").write_text("0 1 2\n1 2 999999999\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    data = load_implicit(tmp_path)
    with pytest.raises(InputError, match=r"data: 2 users and 1000000000 items .* remap them to 0\.\.n-1"):
        train_cf(CFTrainConfig(model="mf", dim=64, epochs=1, progress=False), data)
    from recsys.training import cf as cf_training

    assert cf_training.TABLES_PER_ID["neumf"] == 2  # GMF and MLP tables: counted twice
    assert set(cf_training.TABLES_PER_ID) == {"mf", "lightgcn", "neumf"}
    (tmp_path / "train.txt").write_text("0 1 2\n1 2 91591\n")  # a head sample of a large catalogue
    _, history = train_cf(CFTrainConfig(model="mf", dim=8, epochs=1, progress=False), load_implicit(tmp_path))
    assert len(history) == 1


def test_the_memory_check_counts_the_dsl_masks_and_gradient_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    # DSL keeps a bool mask, a float keep factor and a float gradient sum per entry beside the weight,
    # gradient and Adam moments: 25 bytes, not the 16 the check used to count
    from types import SimpleNamespace

    from recsys.training import cf as cf_training

    data = planted()
    entries = (data.num_users + data.num_items) * 8
    monkeypatch.setattr(cf_training.psutil, "virtual_memory", lambda: SimpleNamespace(available=20 * entries))
    config = CFTrainConfig(model="mf", dim=8, epochs=1, progress=False)
    cf_training._check_tables_fit(config, data, torch.device("cpu"))  # dense: 16 bytes an entry fit
    for static, need in ((False, 25), (True, 21)):
        sparse = CFTrainConfig(model="mf", dim=8, epochs=1, density=0.5, static_sparsity=static)
        assert cf_training.bytes_per_entry(sparse) == need
        with pytest.raises(InputError, match="DSL masks"):
            cf_training._check_tables_fit(sparse, data, torch.device("cpu"))
