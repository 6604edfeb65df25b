"""Checkpoints: an orbax ``CheckpointManager`` in the run's workdir.

Saved every N steps and at the end, the last K kept; a rerun with the same workdir resumes from
the latest step. Saves are asynchronous: `Checkpointer.save` returns once the arrays are copied
off the device, and the files are written in the background (orbax writes each step into a
temporary directory and renames it when complete, so a process killed mid-write leaves the
previous checkpoints intact and the partial one ignored). A checkpoint that cannot be read, or
that was written by a model of another shape, raises `CheckpointError` before anything is
written, so nothing a user had is lost.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxquant.errors import CheckpointError


def _shapes(tree) -> list:
    """(path, shape, dtype) of every leaf: what must match between a checkpoint and a model."""
    return [
        (jax.tree_util.keystr(path), tuple(np.shape(leaf)), str(jnp.result_type(leaf)))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _names(path) -> tuple[str, ...]:
    """A leaf's path as plain names: a `TrainState` field, a dict key and a list index read
    alike, so a template and orbax's metadata tree (dicts and lists) compare."""
    return tuple(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _shape_mismatches(stored, template) -> list[tuple[str, tuple, tuple]]:
    """``(path, stored shape, template shape)`` of the leaves ``stored`` (arrays or orbax's array
    metadata) holds in another shape than ``template``."""
    wanted = {
        _names(path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]
    }
    mismatches = []
    leaves = jax.tree_util.tree_flatten_with_path(stored, is_leaf=lambda m: hasattr(m, "shape"))[0]
    for path, leaf in leaves:
        key, shape = _names(path), tuple(getattr(leaf, "shape", np.shape(leaf)))
        if key in wanted and wanted[key] != shape:
            mismatches.append(("/".join(key), shape, wanted[key]))
    return mismatches


def _mismatch_line(mismatches: list[tuple[str, tuple, tuple]]) -> str:
    """The shape mismatches in a few words: a run trained at another number of bit-widths when
    every one is in the leading axis (one row per bit-width) with the same two lengths."""
    path, stored, wanted = mismatches[0]
    example = f"{path} is {stored} in the checkpoint and {wanted} in this config's model"
    rows = {
        (s[0], w[0]) if len(s) == len(w) and s and s[1:] == w[1:] else None
        for _, s, w in mismatches
    }
    if len(rows) == 1 and None not in rows:
        ((stored_rows, wanted_rows),) = rows
        return (
            f"it was written for {stored_rows} bit-widths and this config has {wanted_rows} "
            f"({example})"
        )
    return f"{len(mismatches)} arrays have other shapes ({example})"


@contextlib.contextmanager
def _orbax_failures_held_back():
    """A corrupt checkpoint is reported as one `CheckpointError`; hold back what orbax says
    besides it while it opens and reads the directory.

    Orbax logs its own ERROR lines (through absl) for a metadata file it cannot parse, and when
    one array of a corrupt checkpoint fails, it abandons the other pending reads, whose
    coroutines Python reports as "Exception ignored ... Traceback" when they are collected. Both
    would put more than the one-line error on a user's stderr.
    """
    absl_logger = logging.getLogger("absl")
    level, hook = absl_logger.level, sys.unraisablehook

    def unless_orbax_read(unraisable):
        if not _abandoned_read(unraisable):
            hook(unraisable)

    absl_logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = unless_orbax_read
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        gc.collect()  # the abandoned reads are collected here, while they are held back
        raise
    finally:
        sys.unraisablehook = hook
        absl_logger.setLevel(level)
        if failed:
            _keep_holding_back_abandoned_reads()


def _abandoned_read(unraisable) -> bool:
    """What a failed restore leaves behind: an orbax read coroutine that was never awaited, or
    its tensorstore completion callback arriving after the restore's event loop closed
    (``RuntimeError('Event loop is closed')`` raised in asyncio)."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    return (
        unraisable.object is None
        and isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    )


def _keep_holding_back_abandoned_reads() -> None:
    """After a failed restore the abandoned reads keep being reported (some only when the
    interpreter exits), so they stay held back for the rest of the process; any other
    unraisable exception still reaches the hook that was there."""
    previous = sys.unraisablehook
    if getattr(previous, "holds_back_abandoned_reads", False):
        return

    def hook(unraisable):
        if not _abandoned_read(unraisable):
            previous(unraisable)

    hook.holds_back_abandoned_reads = True
    sys.unraisablehook = hook


class Checkpointer:
    """Save and restore a training-state pytree under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, asynchronous: bool = True):
        self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
        )
        with _orbax_failures_held_back():  # it reads every step's metadata
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    @staticmethod
    def exists(workdir: str | pathlib.Path) -> bool:
        """Whether ``workdir`` holds a finished checkpoint (read without creating anything)."""
        directory = pathlib.Path(workdir) / "checkpoints"
        return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        """Write ``state`` as step ``step``. Asynchronous (the default): returns once the arrays
        are copied to host memory (so the caller may donate or overwrite them), while the files
        are written in the background; a previous save still in flight is finished first.
        `wait`, `restore` and `close` wait for it."""
        self.manager.save(int(step), args=ocp.args.StandardSave(state), force=True)

    def wait(self) -> None:
        """Block until every save has been written."""
        self.manager.wait_until_finished()

    def restore(self, template, step: int | None = None):
        """The state at ``step`` (default: the latest), with the structure of ``template``.

        Raises `CheckpointError` when the files are unreadable or hold a differently shaped model.
        """
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(
                f"no checkpoint in {self.directory}; "
                "train first with `jaxquant train --workdir ...`"
            )
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        try:
            with _orbax_failures_held_back():
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types for corrupt or mismatched files
            mismatches = self._stored_mismatches(step, template)
            if mismatches:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} cannot be restored into this "
                    f"config's model: {_mismatch_line(mismatches)}; use a new --workdir, or the "
                    "config that wrote it"
                ) from e
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored into this config's "
                f"model ({type(e).__name__}: {first_line}); use a new --workdir, or the config "
                "that wrote it"
            ) from e
        if _shapes(restored) != _shapes(template):
            mismatches = _shape_mismatches(restored, template)
            detail = f" ({_mismatch_line(mismatches)})" if mismatches else ""
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} holds a model of other shapes than "
                f"this config builds{detail}; use a new --workdir, or the config that wrote it"
            )
        return restored

    def _stored_mismatches(self, step: int, template) -> list[tuple[str, tuple, tuple]]:
        """`_shape_mismatches` of step ``step``'s stored arrays (orbax's metadata, read after a
        failed restore registered its handler) against ``template``; none if unreadable."""
        try:
            with _orbax_failures_held_back():
                metadata = self.manager.item_metadata(step)
        except Exception:  # a corrupt checkpoint: its error says so
            return []
        return [] if metadata is None else _shape_mismatches(metadata, template)

    def close(self) -> None:
        """Finish any save in flight (orbax's close waits for it) and release the manager."""
        self.manager.close()
