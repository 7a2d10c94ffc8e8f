"""What an import skipped or flagged, so that nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Skip:
    source: str
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{self.source}: {where}: {self.reason}"


@dataclass
class ImportReport:
    """Skipped rows (with file and line) and notes per source, printed in the prepare summary."""

    skips: list[Skip] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, source: str, file: str, line: int | None, reason: str) -> None:
        self.skips.append(Skip(source, file, line, reason))

    def note(self, source: str, message: str) -> None:
        self.notes.setdefault(source, []).append(message)

    def skip_counts(self, source: str) -> Counter[str]:
        return Counter(s.reason.split(":")[0] for s in self.skips if s.source == source)

    def skips_of(self, source: str) -> list[Skip]:
        return [s for s in self.skips if s.source == source]

    def write_skips(self, path: Path) -> None:
        """Every skipped row, one per line: source, file, line, reason (TSV)."""
        with path.open("w", encoding="utf-8") as out:
            out.write("source\tfile\tline\treason\n")
            for s in self.skips:
                reason = s.reason.replace("\t", " ").replace("\n", " ")
                out.write(f"{s.source}\t{s.file}\t{'' if s.line is None else s.line}\t{reason}\n")
