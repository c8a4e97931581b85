"""gRPC RecommendService over real saved artifacts: a dense MF model, its sparse export, a DeepFM model and
its AFM-compressed copy.

Checks answers against the Python API, the status codes for bad input (unknown user or model NOT_FOUND,
a malformed CTR row INVALID_ARGUMENT naming the field, too many rows RESOURCE_EXHAUSTED), unseen values
going to the OOV id of a schema built from a table, health and reflection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.data.ctr import CTRField, CTRSchema
from recsys.id_vocab import IdVocab
from recsys.lowrank import compress
from recsys.sparse_export import export_sparse
from recsys.training.cf import build_model, save_model
from recsys.training.ctr import CTRTrainConfig, build_ctr_model, predict, save_ctr_model
from services.api import recommend_pb2, recommend_pb2_grpc
from services.recommend_service import (
    SERVICE_NAME,
    RecommendLimits,
    RecommendServicer,
    load_ctr,
    load_recommender,
)
from services.server import ServerConfig, make_server

SEEN = {0: [1, 2], 1: [0], 2: [], 3: [4, 5, 6], 4: [3]}
IDS = IdVocab(("ann", "bob", "cy", "dee", "eve"), tuple(f"sku-{i}" for i in range(7)))  # from a log
SCHEMA = CTRSchema((CTRField("user", 3, values=("ann", "bob", "cy")), CTRField("age", 3, bins=(18.0, 30.0))))
OOV_SCHEMA = CTRSchema((CTRField("user", 4, values=("ann", "bob", "cy"), oov=True),
                        CTRField("age", 4, bins=(18.0, 30.0), oov=True)))  # as train ctr builds from a table


def _interactions() -> sp.csr_matrix:
    rows = [u for u, items in SEEN.items() for _ in items]
    cols = [i for items in SEEN.values() for i in items]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(5, 7))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mf = build_model("mf", 5, 7, _interactions(), dim=4)
    with torch.no_grad():  # zero a few weights, as a DSL-trained table would have
        for p in mf.parameters():
            p[torch.rand_like(p) < 0.5] = 0.0
    save_model(mf, root / "mf")
    export_sparse(mf, root / "mf-sparse")
    save_model(mf, root / "mf-ids", ids=IDS)
    ctr = build_ctr_model(CTRTrainConfig(model="deepfm", embed_dim=4, hidden=[8]), SCHEMA.field_dims)
    save_ctr_model(ctr, root / "deepfm", schema=SCHEMA)
    save_ctr_model(ctr, root / "deepfm-noschema")
    oov = build_ctr_model(CTRTrainConfig(model="deepfm", embed_dim=4, hidden=[8]), OOV_SCHEMA.field_dims)
    save_ctr_model(oov, root / "deepfm-oov", schema=OOV_SCHEMA)
    calib = [torch.from_numpy(SCHEMA.encode([{"user": u, "age": a} for u in ("ann", "bob", "cy")
                                             for a in ("10", "25", "40")]))]
    save_ctr_model(compress(ctr, calib, rank=2), root / "deepfm-afm", schema=SCHEMA)
    return {"mf": root / "mf", "mf-sparse": root / "mf-sparse", "deepfm": root / "deepfm",
            "noschema": root / "deepfm-noschema", "oov": root / "deepfm-oov", "mf-ids": root / "mf-ids",
            "afm": root / "deepfm-afm"}


@pytest.fixture(scope="module")
def stub(artifacts: dict[str, Path]) -> Iterator[recommend_pb2_grpc.RecommendServiceStub]:
    recs = {name: load_recommender(artifacts[name]) for name in ("mf", "mf-sparse", "mf-ids")}
    ctrs = {name: load_ctr(artifacts[path]) for name, path in
            (("deepfm", "deepfm"), ("noschema", "noschema"), ("deepfm-oov", "oov"), ("deepfm-afm", "afm"))}
    servicer = RecommendServicer(recs, ctrs, RecommendLimits(max_ctr_rows=3))
    server, port = make_server({}, ServerConfig(address="127.0.0.1:0"), servicer)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield recommend_pb2_grpc.RecommendServiceStub(channel), channel
    server.stop(grace=None)


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code(), info.value.details()


def test_recommend_excludes_seen_and_matches_python(stub, artifacts) -> None:
    client, _ = stub
    for name in ("mf", "mf-sparse"):
        resp = client.Recommend(recommend_pb2.RecommendRequest(model=name, user_id=3, k=4, exclude_seen=True))
        items = [h.item_id for h in resp.items]
        assert len(items) == 4 and not set(items) & set(SEEN[3])
        assert [h.rank for h in resp.items] == [1, 2, 3, 4]
        want_items, want_scores = load_recommender(artifacts[name]).recommender.recommend([3], 4, True)
        assert items == want_items[0].tolist()
        np.testing.assert_allclose([h.score for h in resp.items], want_scores[0], rtol=1e-6)


def test_sparse_export_serves_the_same_ranking_as_the_dense_model(stub) -> None:
    client, _ = stub
    for user in SEEN:
        got = [client.Recommend(recommend_pb2.RecommendRequest(model=m, user_id=user, k=7)).items
               for m in ("mf", "mf-sparse")]
        assert [h.item_id for h in got[0]] == [h.item_id for h in got[1]]
        np.testing.assert_allclose([h.score for h in got[0]], [h.score for h in got[1]], atol=1e-5)


def test_recommend_by_raw_user_id_answers_with_raw_item_ids(stub) -> None:
    client, _ = stub
    by_row = client.Recommend(recommend_pb2.RecommendRequest(model="mf", user_id=3, k=4, exclude_seen=True))
    by_raw = client.Recommend(recommend_pb2.RecommendRequest(model="mf-ids", user="dee", k=4,
                                                             exclude_seen=True))
    assert [h.item_id for h in by_raw.items] == [h.item_id for h in by_row.items]
    assert [h.item for h in by_raw.items] == [f"sku-{h.item_id}" for h in by_row.items]
    assert all(h.item == "" for h in by_row.items)  # no vocabulary, no raw ids
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="mf-ids", user="zoe", k=3))
    assert code == grpc.StatusCode.NOT_FOUND and "'zoe'" in msg
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="mf", user="dee", k=3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("user:") and "user_id" in msg
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="mf-ids", user_id=0, k=3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "set user" in msg  # no silent row 0
    both = recommend_pb2.RecommendRequest(model="mf-ids", user="dee", user_id=2, k=3)
    code, msg = _code(client.Recommend, both)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not both" in msg


def test_recommend_status_codes(stub) -> None:
    client, _ = stub
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="mf", user_id=99, k=3))
    assert code == grpc.StatusCode.NOT_FOUND and msg.startswith("user_id: user id 99 not found"), msg
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="mf", user_id=2**64 - 1, k=3))
    assert code == grpc.StatusCode.NOT_FOUND and f"user id {2**64 - 1} not found" in msg, msg  # not "-1"
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="nope", user_id=0, k=3))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg
    code, msg = _code(client.Recommend, recommend_pb2.RecommendRequest(model="mf", user_id=0, k=8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("k:")


def test_recommend_without_k_serves_a_catalog_smaller_than_the_default(stub) -> None:
    # k unset means 20 (the proto's default); with 7 items that used to be INVALID_ARGUMENT "k: 20 exceeds"
    client, _ = stub
    resp = client.Recommend(recommend_pb2.RecommendRequest(model="mf", user_id=2))
    assert len(resp.items) == 7


def _rows(*rows: dict[str, str]) -> recommend_pb2.ScoreCTRRequest:
    return recommend_pb2.ScoreCTRRequest(model="deepfm", rows=[recommend_pb2.CTRRow(fields=r) for r in rows])


def test_score_ctr_matches_python(stub, artifacts) -> None:
    client, _ = stub
    rows = [{"user": "bob", "age": "25"}, {"user": "cy", "age": "61"}]
    resp = client.ScoreCTR(_rows(*rows))
    want = predict(load_ctr(artifacts["deepfm"]).model, SCHEMA.encode(rows))
    np.testing.assert_allclose(resp.probabilities, want, rtol=1e-5)
    assert all(0.0 < p < 1.0 for p in resp.probabilities)


def test_score_ctr_serves_the_compressed_model_as_python_does(stub, artifacts) -> None:
    client, _ = stub
    rows = [{"user": "bob", "age": "25"}, {"user": "cy", "age": "61"}, {"user": "ann", "age": "12"}]
    resp = client.ScoreCTR(recommend_pb2.ScoreCTRRequest(
        model="deepfm-afm", rows=[recommend_pb2.CTRRow(fields=r) for r in rows]))
    small = load_ctr(artifacts["afm"]).model
    assert small.lowrank_spec  # the low-rank layers were rebuilt, not the original ones
    np.testing.assert_allclose(resp.probabilities, predict(small, SCHEMA.encode(rows)), rtol=1e-5)
    code, msg = _code(client.ScoreCTR, recommend_pb2.ScoreCTRRequest(
        model="deepfm-afm", rows=[recommend_pb2.CTRRow(fields={"user": "zed", "age": "20"})]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("rows[0].user:"), msg


def test_score_ctr_status_codes(stub) -> None:
    client, _ = stub
    code, msg = _code(client.ScoreCTR, _rows({"user": "ann", "age": "20"}, {"user": "zed", "age": "20"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("rows[1].user:"), msg
    code, msg = _code(client.ScoreCTR, _rows({"user": "ann", "age": "old"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("rows[0].age:"), msg
    code, msg = _code(client.ScoreCTR, _rows({"user": "ann"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("rows[0].age:"), msg
    code, _ = _code(client.ScoreCTR, _rows(*[{"user": "ann", "age": "1"}] * 4))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, _ = _code(client.ScoreCTR, recommend_pb2.ScoreCTRRequest(model="deepfm"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code(client.ScoreCTR, recommend_pb2.ScoreCTRRequest(
        model="noschema", rows=[recommend_pb2.CTRRow(fields={"user": "ann", "age": "1"})]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_score_ctr_maps_unseen_values_to_the_oov_id_when_the_schema_has_one(stub, artifacts) -> None:
    client, _ = stub
    rows = [{"user": "zed", "age": ""}, {"user": "bob", "age": "40"}]
    resp = client.ScoreCTR(recommend_pb2.ScoreCTRRequest(
        model="deepfm-oov", rows=[recommend_pb2.CTRRow(fields=r) for r in rows]))
    np.testing.assert_array_equal(OOV_SCHEMA.encode(rows), [[3, 7], [1, 6]])
    want = predict(load_ctr(artifacts["oov"]).model, OOV_SCHEMA.encode(rows))
    np.testing.assert_allclose(resp.probabilities, want, rtol=1e-5)
    code, msg = _code(client.ScoreCTR, recommend_pb2.ScoreCTRRequest(
        model="deepfm-oov", rows=[recommend_pb2.CTRRow(fields={"user": "ann", "age": "old"})]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("rows[0].age:"), msg


def test_list_models_and_health(stub) -> None:
    client, channel = stub
    kinds = {m.name: m.kind for m in client.ListModels(recommend_pb2.ListModelsRequest()).models}
    assert kinds == {"mf": "mf", "mf-sparse": "mf-sparse", "mf-ids": "mf", "deepfm": "deepfm",
                     "noschema": "deepfm", "deepfm-oov": "deepfm", "deepfm-afm": "deepfm-afm"}
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(stub) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, channel = stub
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert SERVICE_NAME in names


def test_list_models_lists_a_recommender_and_a_ctr_model_of_the_same_name(artifacts) -> None:
    # Recommend and ScoreCTR look names up separately; ListModels merged them and hid one
    recs, ctrs = {"m": load_recommender(artifacts["mf"])}, {"m": load_ctr(artifacts["deepfm"])}
    servicer = RecommendServicer(recs, ctrs)
    infos = servicer.ListModels(recommend_pb2.ListModelsRequest(), None).models
    assert sorted((i.name, i.kind) for i in infos) == [("m", "deepfm"), ("m", "mf")]
