"""Models and errors of the export-records job: table snapshots written to files.

The engine-neutral writer is ``activities.export_core.export_table``; this module holds
what crosses the wire (formats, the per-file result) and the errors it raises.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from spinner_jobs.core.errors import SpinnerError


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExportFormat(StrEnum):
    """File formats of an export.

    - ``csv``: RFC 4180 (UTF-8 without BOM, CRLF line ends), a header row, one row per
      record; meant for spreadsheets (cells are guarded against formula injection).
    - ``jsonl``: JSON Lines, one ``{"id": remote_id, "fields": {...}}`` object per
      record; lossless.

    Parquet is not offered: it would need pyarrow (or similar), which is not a
    dependency of the project.
    """

    CSV = "csv"
    JSONL = "jsonl"

    @property
    def suffix(self) -> str:
        """The file name extension, without the dot."""
        return self.value


class ExportedFile(_Model):
    """One file an export wrote, complete and in its final place."""

    table_id: str = Field(description="The table the file is a snapshot of.")
    path: str = Field(description="Absolute path of the file.")
    format: ExportFormat
    rows: int = Field(ge=0, description="Records written (CSV: not counting the header row).")
    bytes: int = Field(ge=0, description="Size of the file in bytes.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file's bytes, lowercase hex."
    )


class ExportPathError(SpinnerError):
    """An export's file would land outside its folder, or the folder is unusable."""

    def __init__(self, folder: str, detail: str) -> None:
        self.folder = folder
        super().__init__(
            f"cannot write the export under {folder!r} ({detail}); "
            "check SPINNER_DATA_DIR and the export folder's permissions"
        )


class ExportTableChangedError(SpinnerError):
    """A table kept gaining fields while it was exported to CSV; no file was written."""

    def __init__(self, table_id: str, fields: list[str]) -> None:
        self.table_id = table_id
        self.fields = fields
        super().__init__(
            f"table {table_id!r} gained fields {', '.join(map(repr, fields))} during every "
            "CSV export attempt; export it again once its download has finished"
        )
