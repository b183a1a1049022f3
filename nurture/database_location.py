"""Which database a command-line command works on, said plainly, and never a new one by accident.

With the default settings the database is ``data/nurture.db`` relative to the current
directory: run from anywhere but the project directory (where ``make run`` starts the stack),
a command would silently create an empty database there, and a key written to it is one the
running API has never heard of.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from nurture.settings import Settings


class DatabaseMissing(Exception):
    """The configured SQLite file does not exist and creating one was not asked for."""


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file the settings point at, made absolute; None for a server database."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


def describe_database(settings: Settings) -> str:
    """The database as a person can find it again: an absolute file, or the URL without its password."""
    path = sqlite_file(settings)
    if path is not None:
        return str(path)
    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def project_data_dir() -> Path | None:
    """The data directory of the checkout this package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[1]
    return root / "data" if (root / "pyproject.toml").is_file() else None


def require_existing_database(settings: Settings, *, create: bool = False) -> None:
    """Refuse to work on a SQLite file that does not exist yet, unless ``create`` says so."""
    path = sqlite_file(settings)
    if path is None or path.exists() or create:
        return
    message = f"no database at {path}"
    project = project_data_dir()
    if project is not None and (project / "nurture.db").exists() and (project / "nurture.db").resolve() != path:
        message += (
            f". The project's database (the one `make run` uses) is {project.resolve() / 'nurture.db'}: "
            f"run this from {project.resolve().parent}, or set NURTURE_DATA_DIR={project.resolve()}"
        )
    else:
        message += ": run this from the directory the stack runs in, or set NURTURE_DATA_DIR or NURTURE_DATABASE_URL"
    raise DatabaseMissing(message)
