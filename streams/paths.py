"""Where livelearn keeps its state under the data directory, named once.

Every process that shares the data directory (workers, trainers, the CLI, ``livelearn status``)
finds the registry and the online checkpoint through :class:`StatePaths`, so a folder renamed
here is renamed everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

__all__ = ["StatePaths"]


@dataclass(frozen=True)
class StatePaths:
    """The folders and files of one deployment's state.

    Parameters
    ----------
    registry
        The model registry's root (versions, ``SERVING`` pointers), shared with the trainers.
    checkpoint
        The online model's checkpoint (model, label store, monitors, offsets): the learner
        writes it, a new lease holder and the predict-only replicas read it.
    faust
        faust's own data folder (the worker's tables).

    >>> paths = StatePaths.of(Settings(data_dir=Path("/srv/ll")))
    >>> paths.registry, paths.checkpoint
    (PosixPath('/srv/ll/registry'), PosixPath('/srv/ll/online/default.ckpt'))
    """

    registry: Path
    checkpoint: Path
    faust: Path

    @classmethod
    def of(cls, settings: Settings) -> StatePaths:
        """The paths of ``settings.data_dir`` for the model ``settings.models.name``."""
        root = settings.data_dir
        return cls(
            registry=root / "registry",
            checkpoint=root / "online" / f"{settings.models.name}.ckpt",
            faust=root / "faust",
        )
