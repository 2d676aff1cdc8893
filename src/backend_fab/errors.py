"""One exception family for everything backend-fab raises on purpose.

Every message names the thing at fault (file and byte offset, table and column, recipe key) and,
where there is one, what to do about it.
"""

from __future__ import annotations


class BackendFabError(Exception):
    """Root of every error backend-fab raises deliberately."""


class SchemaError(BackendFabError, ValueError):
    """A frame does not match a canonical table: wrong column, type, nulls in a key, duplicates."""

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None):
        super().__init__(message)
        self.table = table
        self.column = column


class LakeError(BackendFabError):
    """The lake cannot be read or written as asked (wrong version, missing table, conflict)."""


class StdfError(BackendFabError):
    """An STDF file cannot be decoded. Carries the file, byte offset and record index at fault."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        record_index: int | None = None,
    ):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        if record_index is not None:
            where.append(f"record #{record_index}")
        full = f"{message} ({', '.join(where)})" if where else message
        super().__init__(full)
        self.path = path
        self.offset = offset
        self.record_index = record_index
        self.reason = message


class IngestError(BackendFabError):
    """An input file cannot be ingested: unreadable, corrupt or truncated compression, expands past
    the limit, or not a recognised format. Carries the file and, where known, the byte offset."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.path = path
        self.offset = offset
        self.reason = message


class MapFormatError(BackendFabError):
    """A wafer/strip map file (SEMI E142, G85, SINF) is malformed or unsafe."""


class AssemblyDataError(BackendFabError):
    """Assembly step records or final-test unit files break their documented layout."""


class GenealogyError(BackendFabError):
    """Genealogy edges are inconsistent (missing die, duplicate unit ids, cycles)."""


class RecipeError(BackendFabError):
    """A PAT / nightly recipe is invalid; the message names the key."""


class LimitsError(BackendFabError):
    """SYL/SBL or static PAT limits cannot be computed (too few lots or points in the window)."""


class ScenarioError(BackendFabError, ValueError):
    """A synthetic-fab scenario (TOML or dict) is invalid; the message names the file and key."""


class KernelInputError(BackendFabError, ValueError):
    """Arrays handed to a kernel wrapper have the wrong shape, dtype or offsets."""


class NightlyError(BackendFabError):
    """The nightly batch cannot run (lock held, lake missing, bad options)."""


class PatternModelError(BackendFabError):
    """A wafer-pattern model file cannot be loaded or does not fit the features."""
