"""The training/scoring batch: what the reader yields and the model consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One batch of B rows, ``Pipelineable`` so ``TrainPipelineSparseDist`` can copy it ahead of use.

    Args:
        dense: [B, F_dense] float dense features (transformed, missing values filled).
        pooled: KJT of the pooled features (``FeatureSpec.pooled_keys``), for the EmbeddingBagCollection.
        sequences: KJT of every domain's history and candidate slot (``FeatureSpec.sequence_keys``), for the
            EmbeddingCollection; key-major lengths, stride B.
        labels: [B] float 0/1 (zeros when scoring unlabeled data).
        weights: [B] float, 1 for real rows, 0 for the padding rows that keep every rank's batches equal.
        domains: [B] int64 index of each row's candidate domain.
        row_ids: [B] int64 row ids (-1 for padding rows and non-integer row ids), for scoring outputs.
        loss_scale: [1] float, what the summed loss of the real rows is multiplied by: 1 / (real rows) by
            default (this batch's mean); the trainer sets world_size / (real rows of the step on all ranks),
            so that the ranks' losses, averaged by DDP, are the step's global mean over real rows.
    """

    dense: torch.Tensor
    pooled: KeyedJaggedTensor
    sequences: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    domains: torch.Tensor
    row_ids: torch.Tensor
    loss_scale: torch.Tensor

    def _map(self, fn_tensor, fn_kjt) -> Batch:  # type: ignore[no-untyped-def]
        return Batch(
            **{
                f.name: (fn_kjt if isinstance(v, KeyedJaggedTensor) else fn_tensor)(v)
                for f in dataclasses.fields(self)
                for v in [getattr(self, f.name)]
            }
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return self._map(
            lambda t: t.to(device=device, non_blocking=non_blocking),
            lambda k: k.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).record_stream(stream)

    def pin_memory(self) -> Batch:
        return self._map(lambda t: t.pin_memory(), lambda k: k.pin_memory())

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])
