"""Hugging Face Hub conventions: a Hub id resolves to a cached snapshot; a saved model uploads as a folder.

:meth:`BindModel.from_pretrained <anchorbind.model.BindModel.from_pretrained>` calls
:func:`resolve_model_dir` first: an existing local folder wins; otherwise a name shaped like a Hub id
(``org/name``) goes through ``huggingface_hub.snapshot_download``, which keeps the Hub's cache
(``HF_HUB_CACHE``, ``cache_dir=``) and honours ``HF_HUB_OFFLINE``. Only the model files are fetched
(``allow_patterns``), and every failure is one :class:`~anchorbind.errors.ModelFileError` line.

:func:`upload_folder` is what :meth:`BindModel.push_to_hub <anchorbind.model.BindModel.push_to_hub>`
hands its ``save_pretrained`` folder to: ``HfApi.create_repo(exist_ok=True)`` then
``HfApi.upload_folder``, both huggingface_hub's own.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anchorbind.errors import ModelFileError

__all__ = ["hub_offline", "looks_like_hub_id", "resolve_model_dir", "upload_folder"]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean variables


def looks_like_hub_id(name: str | os.PathLike[str]) -> bool:
    """True for ``org/name``: one slash, no leading ``/``, ``.`` or ``~`` (so no path can be mistaken)."""
    text = os.fspath(name)
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as it is now (huggingface_hub reads it once, at import; tests set it later)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_VALUES


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def resolve_model_dir(
    name: str | os.PathLike[str],
    files: Sequence[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local folder holding a saved model: ``name`` itself, or its Hub snapshot.

    Args:
        name: a local folder (used when it exists) or a Hub id ``org/name``.
        files: the file names to fetch (``allow_patterns``).
        revision: a branch, tag or commit of the Hub repository (default ``main``).
        cache_dir: the Hub cache (default ``HF_HUB_CACHE``).
        token: a Hub token for private repositories (default: the logged-in one).

    Returns:
        The folder; a name that is neither an existing folder nor a Hub id is returned unchanged,
        for the caller's "no such model folder" error.

    Raises:
        ModelFileError: one line: the model is not cached while offline mode is on, the
            repository or revision does not exist (or is private), the download failed.
    """
    path = Path(name)
    if path.is_dir() or not looks_like_hub_id(name):
        if path.is_dir() and revision is not None:
            logger.warning("%s is a local folder: revision=%r is ignored", path, revision)
        return path
    repo_id = os.fspath(name)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    shown_revision = revision or constants.DEFAULT_REVISION
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    where = f"{repo_id}: no local folder of that name, and as a Hub model (revision {shown_revision!r})"
    try:
        version = importlib.metadata.version("anchorbind")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        version = "unknown"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=list(files),
            local_files_only=offline,
            library_name="anchorbind",
            library_version=version,
        )
    except LocalEntryNotFoundError as err:
        if type(err).__name__ == "IncompleteSnapshotError":  # huggingface_hub 2.x: a partial cached snapshot
            raise ModelFileError(f"{where} its cached copy in {cache} is incomplete ({_one_line(err)})") from err
        if offline:
            raise ModelFileError(
                f"{where} it is not in the Hugging Face cache ({cache}) and offline mode is on (HF_HUB_OFFLINE); "
                "download it once with network access, or point HF_HUB_CACHE / cache_dir at a cache that holds it"
            ) from err
        cause = err.__cause__ or err
        raise ModelFileError(f"{where} it is not cached in {cache} and could not be downloaded "
                             f"({type(cause).__name__}: {_one_line(cause)})") from err
    except RevisionNotFoundError as err:
        raise ModelFileError(f"{where}: the repository has no revision {shown_revision!r}") from err
    except RepositoryNotFoundError as err:
        raise ModelFileError(f"{where}: no such repository on the Hub, or it is private or gated "
                             "(log in with `hf auth login` or pass token=)") from err
    except HFValidationError as err:
        raise ModelFileError(f"{where}: not a valid Hub id ({_one_line(err)})") from err
    except (HfHubHTTPError, OSError) as err:
        raise ModelFileError(f"{where}: download failed ({type(err).__name__}: {_one_line(err)})") from err
    return Path(folder)


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload AnchorBind model",
    revision: str | None = None,
    api: Any = None,
) -> Any:
    """Create ``repo_id`` if needed (``exist_ok``) and upload ``folder`` to it; returns the ``CommitInfo``.

    ``api`` defaults to ``huggingface_hub.HfApi()``; the upload itself is huggingface_hub's
    ``upload_folder`` (one commit with every file of the folder).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
                             commit_message=commit_message, revision=revision)
