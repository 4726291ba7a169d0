"""Where the files shipped with the package are: ``configs/`` (recipes, task configs, demo configs) and the
published paper tables (``benchmark/published/*.yaml``).

Both are package data found through ``importlib.resources``, so the same code works in a checkout
(``python run_downstream.py`` from the root), in an editable install and in an installed wheel run from any
folder. Nothing here is relative to the current directory or to a source file's path.

>>> config_path("downstream", "esc50.yaml")          # configs/downstream/esc50.yaml wherever it is installed
>>> shipped_path("configs/pretrain/ssast_patch_mini.yaml")   # a repo-relative name from a published table
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePosixPath

__all__ = ["config_path", "published_dir", "shipped_path"]


def _package_path(package: str, *parts: str) -> Path:
    """``parts`` under ``package``'s folder, as a real filesystem path (the loaders and ``glob`` need one)."""
    target = resources.files(package).joinpath(*parts)
    if not isinstance(target, Path):  # e.g. a zipped install: the YAML readers need files on disk
        raise RuntimeError(f"{package}/{'/'.join(parts)} is not on the filesystem ({target!r}); install "
                           f"astbench as a regular (unzipped) package")
    return target


def config_path(*parts: str) -> Path:
    """``configs/<parts...>``, e.g. ``config_path("downstream")`` or ``config_path("pretrain", "x.yaml")``."""
    return _package_path("configs", *parts)


def published_dir() -> Path:
    """The folder of the published paper tables, ``benchmark/published/``."""
    return _package_path("benchmark", "published")


def shipped_path(path: str | Path, prefer_shipped: bool = False) -> Path:
    """A path as a user or a published table writes it, resolved.

    A repo-relative ``configs/...`` name means the shipped config, so a wheel run outside the checkout finds
    ``configs/pretrain/x.yaml``; but a file of that name in the current folder comes first (a user's ``-c``),
    unless ``prefer_shipped`` (the published tables name the shipped recipes). Absolute paths and other names
    are returned as given.
    """
    p = Path(path).expanduser()
    parts = PurePosixPath(p.as_posix()).parts
    shipped = config_path(*parts[1:]) if not p.is_absolute() and parts[:1] == ("configs",) else None
    if shipped is not None and (prefer_shipped or not p.exists()):
        return shipped
    return p
