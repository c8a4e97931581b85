"""gRPC RecommendService (``protos/recommend.proto``): top-k items per user and CTR scores per row.

Serves named recommenders — a dense trained CF model (``cf-model`` artifact) or a DSL sparse export
(``cf-sparse``), both answering through :class:`recsys.models.cf.Recommender`, by model row or, for a
model trained on an interaction table, by raw user id (items then carry their raw ids) — and named CTR models
(``ctr-model`` artifacts, original or low-rank compressed by AFM). Status codes: an unknown model or user
NOT_FOUND; a bad ``k`` or a malformed CTR row INVALID_ARGUMENT naming the field (``rows[3].gender``); too
many rows RESOURCE_EXHAUSTED; a CTR model saved without its field schema FAILED_PRECONDITION.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.api import recommend_pb2, recommend_pb2_grpc
from services.status import RequestError, guarded
from sparsekit.artifacts import artifact_format
from sparsekit.errors import ArtifactError, InputError, NotFoundError

SERVICE_NAME = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name


@dataclass(frozen=True)
class RecommendLimits:
    """Per-request bounds of the recommend service."""

    max_k: int = 1000
    default_k: int = 20
    max_ctr_rows: int = 8192


@dataclass
class ServedRecommender:
    """A recommender (anything with ``recommend(user_ids, k, exclude_seen)``), its kind for listings and
    its raw-id vocabulary (:class:`recsys.id_vocab.IdVocab`, for models trained on an interaction table)."""

    recommender: Any
    kind: str
    num_items: int
    ids: Any = None


@dataclass
class ServedCTR:
    """A CTR model, the schema that turns raw field values into feature ids, and its kind."""

    model: Any
    schema: Any
    kind: str


def load_recommender(path: str | Path, device: str = "cpu") -> ServedRecommender:
    """Open a ``cf-model`` (dense) or ``cf-sparse`` (DSL export) artifact for serving."""
    from recsys.id_vocab import IdVocab
    from recsys.models.cf import Recommender
    from recsys.sparse_export import FORMAT as SPARSE_FORMAT
    from recsys.sparse_export import load_sparse
    from recsys.training.cf import MODEL_FORMAT, load_model

    path = Path(path)
    fmt = artifact_format(path)
    if fmt == SPARSE_FORMAT:
        rec = load_sparse(path, device=device)
        ids = IdVocab.read(path, (rec.num_users, rec.num_items))
        return ServedRecommender(rec, f"{rec.kind}-sparse", rec.num_items, ids)
    if fmt == MODEL_FORMAT:
        model = load_model(path, device=device)
        ids = IdVocab.read(path, (model.num_users, model.num_items))
        return ServedRecommender(Recommender.from_model(model), model.kind, model.num_items, ids)
    raise ArtifactError(path, f"format {fmt!r} is not a recommender ({MODEL_FORMAT!r} or {SPARSE_FORMAT!r})")


def load_ctr(path: str | Path) -> ServedCTR:
    """Open a ``ctr-model`` artifact (original or AFM-compressed) for serving."""
    from recsys.training.ctr import load_ctr_model

    art = load_ctr_model(path)
    kind = art.params.get("model", "ctr") + ("-afm" if art.params.get("lowrank") else "")
    return ServedCTR(art.model, art.schema, kind)


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    """Implements Recommend, ScoreCTR and ListModels."""

    def __init__(self, recommenders: Mapping[str, ServedRecommender], ctr_models: Mapping[str, ServedCTR],
                 limits: RecommendLimits | None = None) -> None:
        self.recommenders = dict(recommenders)
        self.ctr_models = dict(ctr_models)
        self.limits = limits or RecommendLimits()

    @staticmethod
    def _lookup(models: Mapping[str, Any], name: str, what: str) -> Any:
        if not name:
            raise InputError("model", f"missing {what} name")
        if name not in models:
            raise NotFoundError(f"model: no {what} named {name!r} (serving {sorted(models)})")
        return models[name]

    def _recommend(self, req: recommend_pb2.RecommendRequest) -> recommend_pb2.RecommendResponse:
        start = time.perf_counter()
        served = self._lookup(self.recommenders, req.model, "recommender")
        k = req.k or min(self.limits.default_k, served.num_items)  # unset: 20, or all of a smaller catalog
        if k > min(self.limits.max_k, served.num_items):
            raise InputError("k", f"{k} exceeds the limit of {min(self.limits.max_k, served.num_items)}")
        user = self._user(served, req)
        try:
            items, scores = served.recommender.recommend([user], k=k, exclude_seen=req.exclude_seen)
        except NotFoundError as exc:  # the model names the id; the reply names the field too
            raise NotFoundError(f"{'user' if req.user else 'user_id'}: {exc}") from exc
        names = served.ids.items if served.ids is not None else None
        hits = [recommend_pb2.ScoredItem(item_id=int(i), score=float(s), rank=r,
                                         item=names[int(i)] if names else "")
                for r, (i, s) in enumerate(zip(items[0], scores[0], strict=True), 1) if s != float("-inf")]
        return recommend_pb2.RecommendResponse(model=req.model, items=hits,
                                               took_ms=1000 * (time.perf_counter() - start))

    @staticmethod
    def _user(served: ServedRecommender, req: recommend_pb2.RecommendRequest) -> int:
        """The model row asked for: ``user_id`` as given, or the raw ``user`` looked up in the vocabulary."""
        if not req.user:
            if served.ids is not None:
                raise InputError("user", f"model {req.model!r} was trained on raw ids: set user (a raw "
                                         "id), not user_id")
            return req.user_id
        if req.user_id:
            raise InputError("user", "set one of user and user_id, not both")
        if served.ids is None:
            raise InputError("user", f"model {req.model!r} has no raw-id vocabulary (it was trained on "
                                     "pre-indexed data); pass user_id")
        return served.ids.user_row(req.user)

    def _score(self, req: recommend_pb2.ScoreCTRRequest) -> recommend_pb2.ScoreCTRResponse:
        from recsys.training.ctr import predict

        start = time.perf_counter()
        served = self._lookup(self.ctr_models, req.model, "CTR model")
        if not req.rows:
            raise InputError("rows", "no rows to score")
        if len(req.rows) > self.limits.max_ctr_rows:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rows",
                               f"{len(req.rows)} rows exceeds the limit of {self.limits.max_ctr_rows}")
        if served.schema is None:
            raise ArtifactError(req.model, "this CTR model was saved without its field schema; it cannot "
                                           "encode raw rows")
        try:
            features = served.schema.encode([dict(row.fields) for row in req.rows])
        except InputError as exc:  # name the request field: rows[i].<field>
            where = f"rows[{exc.line - 1}]" if exc.line is not None else "rows"
            field = where if exc.source == "row" else f"{where}.{exc.source}"
            raise InputError(field, exc.reason) from exc
        probs = predict(served.model, features)
        return recommend_pb2.ScoreCTRResponse(model=req.model, probabilities=[float(p) for p in probs],
                                              took_ms=1000 * (time.perf_counter() - start))

    def Recommend(self, request: recommend_pb2.RecommendRequest,
                  context: grpc.ServicerContext) -> recommend_pb2.RecommendResponse:
        return guarded(context, lambda: self._recommend(request), "recommend")

    def ScoreCTR(self, request: recommend_pb2.ScoreCTRRequest,
                 context: grpc.ServicerContext) -> recommend_pb2.ScoreCTRResponse:
        return guarded(context, lambda: self._score(request), "score")

    def ListModels(self, request: recommend_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> recommend_pb2.ListModelsResponse:
        # two namespaces (Recommend, ScoreCTR): one name may be served by both
        served = sorted([*self.recommenders.items(), *self.ctr_models.items()], key=lambda item: item[0])
        infos = [recommend_pb2.ModelInfo(name=n, kind=m.kind) for n, m in served]
        return recommend_pb2.ListModelsResponse(models=infos)
