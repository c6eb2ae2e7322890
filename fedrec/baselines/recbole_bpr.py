"""RecBole 1.2.1's BPR, trained by RecBole's own Trainer on exactly our train interactions.

Data arrangement (ANCHORS.md section 4.11, DEPENDENCIES.md section 6):

- Our dense indices become RecBole tokens (``str(index)``). We write a *pre-split benchmark*
  (``benchmark_filename = [train, valid, test]``) so that RecBole trains on all of our train pairs and
  splits nothing away. RecBole insists on building valid/test loaders, so those two files hold a single
  pair copied from train: it adds no token and no training interaction (RecBole's train-phase negative
  sampler only looks at the train file), and we never evaluate with RecBole.
- We also write ``.user`` and ``.item`` files listing the whole catalog, so RecBole's vocabulary is
  exactly ours: every user and item has an embedding, and items without training interactions are
  still sampled as negatives (as in fedrec's own BPR) and so end up with low scores. Hence no item
  needs a ``-inf`` score; a missing token would be a bug and raises.
- Training runs ``epochs`` epochs with no validation or early stopping and saves no checkpoint
  (``saved=False``: no reload, so torch >= 2.6's ``weights_only`` error E4 cannot happen); the
  model after the last epoch is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from fedrec.data.interactions import Interactions
from fedrec.eval import Scorer
from fedrec.models import mf_scorer

_DATASET = "fedrec"  # no RecBole properties/dataset/<name>.yaml exists for this name
_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class RecBoleBPRFit:
    """A trained RecBole BPR together with the id maps between RecBole and our dense indices."""

    model: Any  # recbole.model.general_recommender.BPR, on CPU after training
    dataset: Any  # RecBole's Dataset (``field2id_token`` / ``token2id``)
    user_index: np.ndarray  # RecBole internal id of each of our users, int64 [n_users]
    item_index: np.ndarray  # RecBole internal id of each of our items, int64 [n_items]
    info: dict[str, Any]

    def scorer(self) -> Scorer:
        """Scorer with ``scorer(u)[:, i]`` = RecBole's BPR score of our user ``u`` and item ``i``."""
        with torch.no_grad():
            user_e = self.model.user_embedding.weight.detach().cpu()[torch.from_numpy(self.user_index)]
            item_e = self.model.item_embedding.weight.detach().cpu()[torch.from_numpy(self.item_index)]
        return mf_scorer(item_e, user_e)


def _write_atomic_files(train: Interactions, directory: Path) -> None:
    """Write our train pairs as RecBole atomic files under ``directory/<_DATASET>/``."""
    data_dir = directory / _DATASET
    data_dir.mkdir(parents=True, exist_ok=True)
    pairs = np.stack([train.user_of_entry(), train.indices], axis=1)
    header = "user_id:token\titem_id:token"
    for split in _SPLITS:
        rows = pairs if split == "train" else pairs[:1]  # valid/test only satisfy RecBole's loaders
        path = data_dir / f"{_DATASET}.{split}.inter"
        np.savetxt(path, rows, fmt="%d", delimiter="\t", header=header, comments="")
    np.savetxt(
        data_dir / f"{_DATASET}.user", np.arange(train.n_users), fmt="%d", header="user_id:token", comments=""
    )
    np.savetxt(
        data_dir / f"{_DATASET}.item", np.arange(train.n_items), fmt="%d", header="item_id:token", comments=""
    )


@contextlib.contextmanager
def _recbole_sandbox(workdir: Path, device: torch.device, num_threads: int) -> Iterator[None]:
    """Contain RecBole's process-wide side effects for the duration of one training run."""
    # RecBole's Config rewrites CUDA_VISIBLE_DEVICES; querying CUDA first fixes the visible devices for
    # this process under the caller's setting, and the variable is restored afterwards.
    torch.cuda.is_available()
    saved_cuda_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    saved_random, saved_np = random.getstate(), np.random.get_state()  # init_seed reseeds them
    saved_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    root = logging.getLogger()  # RecBole logs through the root logger
    saved_level = root.level
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(num_threads)
        with contextlib.ExitStack() as stack:
            # init_seed reseeds torch's CPU generator (and every GPU's, only touched on a GPU run).
            gpus = range(torch.cuda.device_count()) if device.type == "cuda" else []
            stack.enter_context(torch.random.fork_rng(devices=gpus))
            # Config reads --key=value from sys.argv and lets it override config_dict.
            stack.enter_context(mock.patch.object(sys, "argv", sys.argv[:1]))
            # The Trainer writes ./log_tensorboard (and RecBole defaults to ./saved, ./log) in the cwd.
            stack.enter_context(contextlib.chdir(workdir))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", FutureWarning)  # pandas chained assignment, GradScaler
            root.setLevel(max(saved_level, logging.WARNING))
            yield
    finally:
        torch.set_num_threads(saved_threads)
        root.setLevel(saved_level)
        random.setstate(saved_random)
        np.random.set_state(saved_np)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved_cudnn
        if saved_cuda_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_cuda_env


def _internal_ids(dataset: Any, field: str, n: int) -> np.ndarray:
    """RecBole internal id of every dense index ``0..n-1`` (token ``str(index)``)."""
    token_id = dataset.field2token_id[field]
    missing = [k for k in range(n) if str(k) not in token_id]
    if missing:
        raise RuntimeError(f"RecBole dropped {len(missing)} {field} tokens, e.g. {missing[:5]}")
    return np.fromiter((token_id[str(k)] for k in range(n)), dtype=np.int64, count=n)


def _run_recbole(root: Path, settings: dict[str, Any], device: torch.device) -> tuple[Any, Any, list[float]]:
    """Build RecBole's dataset from ``root`` and train BPR; returns (model, dataset, per-epoch loss)."""
    # Imported here, inside the sandbox: RecBole's import takes seconds, draws from the global
    # ``random`` stream and patches numpy aliases; keep all that off ``import fedrec.baselines``.
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(model="BPR", dataset=_DATASET, config_dict=settings)
    config["device"] = device  # RecBole would pick a bare "cuda"; honour the index we were given
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = BPR(config, train_data.dataset).to(device)
    trainer = Trainer(config, model)
    try:
        trainer.fit(train_data, valid_data=None, verbose=False, saved=False, show_progress=False)
    finally:
        trainer.tensorboard.close()  # release the event file before the directory goes
    # RecBole's per-epoch loss: the sum of the batch-mean BPR losses of the epoch.
    losses = [float(loss) for _, loss in sorted(trainer.train_loss_dict.items())]
    return model.cpu().eval(), dataset, losses


def fit_recbole_bpr(
    train: Interactions,
    *,
    embedding_size: int = 64,
    epochs: int = 100,
    learning_rate: float = 1e-3,
    train_batch_size: int = 2048,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_threads: int = 1,
    workdir: str | Path | None = None,
) -> RecBoleBPRFit:
    """Train RecBole's BPR on ``train`` and return the model (on CPU) with its id maps.

    ``embedding_size``, ``learning_rate`` (Adam) and ``train_batch_size`` are RecBole's defaults;
    ``epochs`` is fixed (no validation, no early stopping): 100 was the best of 10/50/100/200/300 on
    ML-100K (random 80/20 split, recall@10), and RecBole's BPR has no regularisation, so it overfits
    later. ``num_threads``: torch threads while training (restored afterwards); one thread is the
    fastest for these small batches and immune to oversubscription on a shared 2-core machine.
    ``device``: where RecBole trains (``"cuda:0"`` needs a CUDA build of torch).

    ``workdir``: where the atomic files and RecBole's own outputs go; a temporary directory that is
    removed afterwards when ``None`` (a given directory is kept, for inspection). Nothing is written
    to the current directory. The global RNG streams, root logging level, torch thread count,
    ``sys.argv`` and ``CUDA_VISIBLE_DEVICES`` are restored afterwards (RecBole's numpy alias patches
    stay). ``info`` holds ``wall_s`` (files + dataset + training), the per-epoch ``train_loss`` and
    the hyper-parameters.
    """
    if train.nnz == 0:
        raise ValueError("train has no interactions")
    dev = torch.device(device)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedrec-recbole-")))
        else:
            root = Path(workdir).resolve()
            root.mkdir(parents=True, exist_ok=True)
        _write_atomic_files(train, root)
        settings = {
            "data_path": str(root),
            "checkpoint_dir": str(root / "saved"),
            "benchmark_filename": list(_SPLITS),
            "load_col": {"inter": ["user_id", "item_id"], "user": ["user_id"], "item": ["item_id"]},
            "embedding_size": embedding_size,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "train_batch_size": train_batch_size,
            "seed": seed,
            "reproducibility": True,
            "use_gpu": dev.type == "cuda",
            "gpu_id": str(dev.index or 0) if dev.type == "cuda" else "",
            "show_progress": False,
            "save_dataset": False,
            "save_dataloaders": False,
            "worker": 0,
        }
        with _recbole_sandbox(root, dev, num_threads):
            model, dataset, losses = _run_recbole(root, settings, dev)
    info: dict[str, Any] = {
        "model": "recbole-bpr",
        "wall_s": time.perf_counter() - start,
        "train_loss": losses,
        "embedding_size": embedding_size,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "train_batch_size": train_batch_size,
        "seed": seed,
        "device": str(dev),
        "num_threads": num_threads,
    }
    return RecBoleBPRFit(
        model=model,
        dataset=dataset,
        user_index=_internal_ids(dataset, dataset.uid_field, train.n_users),
        item_index=_internal_ids(dataset, dataset.iid_field, train.n_items),
        info=info,
    )


def train_recbole_bpr(train: Interactions, **options: Any) -> tuple[Scorer, dict[str, Any]]:
    """Train RecBole's BPR on ``train``; return ``(scorer, info)``. ``options`` are those of
    :func:`fit_recbole_bpr` (embedding_size, epochs, learning_rate, train_batch_size, seed, device,
    num_threads, workdir)."""
    fit = fit_recbole_bpr(train, **options)
    return fit.scorer(), fit.info
