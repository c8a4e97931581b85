"""Config range checks: every bad number is refused where it is given, naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from embeddings.sweep import SweepConfig
from recsys.data.synthetic_ctr import SyntheticCTRConfig
from recsys.gcn.training import GCNTrainConfig
from recsys.training.cf import CFTrainConfig
from recsys.training.ctr import CTRTrainConfig
from retrieval.encoders.idf_query import IdfQueryConfig
from retrieval.encoders.sparse_doc import SparseEncoderConfig
from retrieval.index.bigranular import BiGranularConfig
from retrieval.index.dense import DenseConfig
from retrieval.index.hybrid import HybridConfig
from retrieval.quantization.contrastive_pq import ContrastivePQConfig
from retrieval.rag.chunk_cache import CacheConfig
from retrieval.training.progressive import ProgressiveConfig
from retrieval.training.query_table import QueryTableConfig
from retrieval.training.sparse import SparseTrainConfig
from retrieval.training.teachers import TeacherConfig
from services.server import ServerConfig
from sparsekit.bounds import at_least, count, each_count, each_positive, one_of, positive, within
from sparsekit.errors import InputError


@dataclass
class _Config:
    count: int | None = 3
    rate: float = 0.1
    rates: tuple[float, ...] = (0.01, 0.1)
    fraction: float = 0.5
    sizes: tuple[int, ...] = (2, 3)
    mode: str = "a"


def test_each_bound_accepts_good_values_and_none() -> None:
    config = _Config(count=None)
    count(config, 1, "count")
    at_least(config, 0, "rate")
    positive(config, "rate")
    within(config, 0.0, 1.0, "fraction")
    each_count(config, 1, "sizes")
    each_positive(config, "rates")
    one_of(config, "mode", ("a", "b"))
    count(_Config(count=np.int64(2)), 1, "count")  # numpy scalars are numbers too
    positive(_Config(rate=np.float32(0.5)), "rate")


@pytest.mark.parametrize(("check", "config"), [
    (lambda c: count(c, 1, "count"), _Config(count=0)),
    (lambda c: count(c, 1, "count"), _Config(count=1.5)),
    (lambda c: count(c, 1, "count"), _Config(count="3")),
    (lambda c: count(c, 1, "count"), _Config(count=True)),
    (lambda c: at_least(c, 0, "rate"), _Config(rate=-0.1)),
    (lambda c: at_least(c, 0, "rate"), _Config(rate=math.nan)),
    (lambda c: positive(c, "rate"), _Config(rate=0.0)),
    (lambda c: positive(c, "rate"), _Config(rate=math.nan)),
    (lambda c: positive(c, "rate"), _Config(rate=math.inf)),
    (lambda c: within(c, 0.0, 1.0, "fraction"), _Config(fraction=1.5)),
    (lambda c: within(c, 0.0, 1.0, "fraction", open_high=True), _Config(fraction=1.0)),
    (lambda c: each_count(c, 1, "sizes"), _Config(sizes=(2, 0))),
    (lambda c: each_count(c, 1, "sizes"), _Config(sizes=())),
    (lambda c: each_positive(c, "rates"), _Config(rates=(0.1, 0.0))),
    (lambda c: each_positive(c, "rates"), _Config(rates=())),
    (lambda c: one_of(c, "mode", ("a", "b")), _Config(mode="c")),
])
def test_each_bound_refuses_a_bad_value_naming_the_field(check, config) -> None:
    with pytest.raises(InputError) as error:
        check(config)
    assert error.value.source in {"count", "rate", "rates", "fraction", "sizes", "mode"}


BAD_CONFIGS = [
    (lambda: SparseTrainConfig(data="d", out="o", lr=-1.0), "lr"),
    (lambda: SparseTrainConfig(data="d", out="o", queries_per_step=0), "queries_per_step"),
    (lambda: SparseTrainConfig(data="d", out="o", candidates_per_query=1), "candidates_per_query"),
    (lambda: SparseTrainConfig(data="d", out="o", dev_fraction=1.0), "dev_fraction"),
    (lambda: SparseTrainConfig(data="d", out="o", distill="teacher"), "distill"),
    (lambda: SparseTrainConfig(data="d", out="o", temperature=math.nan), "temperature"),
    (lambda: SparseEncoderConfig(max_length=0), "max_length"),
    (lambda: SparseEncoderConfig(head="linear"), "head"),
    (lambda: SparseEncoderConfig(lexical_b=2.0), "lexical_b"),
    (lambda: TeacherConfig(depth=0), "depth"),
    (lambda: QueryTableConfig(model="m", out="o", lrs=(0.01, -0.1)), "lrs"),
    (lambda: QueryTableConfig(model="m", out="o", lrs=()), "lrs"),
    (lambda: ProgressiveConfig(sampling="bfs"), "sampling"),
    (lambda: ProgressiveConfig(temperature=0.0), "temperature"),
    (lambda: ContrastivePQConfig(epochs=0), "epochs"),
    (lambda: IdfQueryConfig(vocab_size=0), "vocab_size"),
    (lambda: DenseConfig(nprobe=0), "nprobe"),
    (lambda: BiGranularConfig(dtype="int8"), "dtype"),
    (lambda: BiGranularConfig(candidates=0), "candidates"),
    (lambda: HybridConfig(rrf_k=-1), "rrf_k"),
    (lambda: CacheConfig(host_bytes=-1), "host_bytes"),
    (lambda: CTRTrainConfig(dropout=1.0), "dropout"),
    (lambda: CTRTrainConfig(hidden=(400, 0)), "hidden"),
    (lambda: CTRTrainConfig(lr=-1e-3), "lr"),
    (lambda: CTRTrainConfig(max_epochs=2.5), "max_epochs"),
    (lambda: CFTrainConfig(dsl_delta_t=0), "dsl_delta_t"),
    (lambda: CFTrainConfig(time_budget_s=-5.0), "time_budget_s"),
    (lambda: GCNTrainConfig(hidden=0), "hidden"),
    (lambda: GCNTrainConfig(eval_fanout=0), "eval_fanout"),
    (lambda: SweepConfig(embed_dim=0), "embed_dim"),
    (lambda: SyntheticCTRConfig(field_dims=(10, 0)), "field_dims"),
    (lambda: SyntheticCTRConfig(zipf_a=0.0), "zipf_a"),
    (lambda: ServerConfig(workers=0), "workers"),
]


@pytest.mark.parametrize(("make", "field"), BAD_CONFIGS)
def test_every_config_refuses_a_bad_number_when_it_is_made(make, field: str) -> None:
    with pytest.raises(InputError) as error:
        make()
    assert error.value.source == field


def test_every_default_config_is_valid() -> None:
    for make in (SparseEncoderConfig, TeacherConfig, ProgressiveConfig, ContrastivePQConfig, DenseConfig,
                 BiGranularConfig, HybridConfig, CacheConfig, CTRTrainConfig, CFTrainConfig, SweepConfig,
                 SyntheticCTRConfig):
        make()
    SparseTrainConfig(data="d", out="o")
    QueryTableConfig(model="m", out="o")
    IdfQueryConfig(vocab_size=10)
    GCNTrainConfig(device="cpu", eval_fanout=-1)
