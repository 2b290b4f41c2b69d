"""Every folder's map (its README.md) names each of its files, so a newcomer's map is never stale. Tool family
folders are mapped by tools/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lens_mcp"
TOOLS = PACKAGE / "tools"


def _mapped_folders() -> list[Path]:
    folders = [PACKAGE, ROOT / "tests", ROOT / "bench", ROOT / "scripts"]
    folders += [p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    folders += [p for p in TOOLS.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    return sorted(folders)


def _map_of(folder: Path) -> Path:
    return TOOLS / "README.md" if folder.parent == TOOLS else folder / "README.md"


def _unnamed(folder: Path) -> list[str]:
    text = _map_of(folder).read_text(encoding="utf-8")
    files = [p.name for p in folder.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
    return sorted(name for name in files if f"`{name}`" not in text)


@pytest.mark.parametrize("folder", _mapped_folders(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_folder_map_names_every_file(folder: Path) -> None:
    assert _map_of(folder).exists(), f"{folder.relative_to(ROOT)} has no README.md map"
    missing = _unnamed(folder)
    assert not missing, f"{_map_of(folder).relative_to(ROOT)} does not name {missing}"


def test_a_new_file_without_a_line_in_its_map_is_caught(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("| `kept.py` | named |\n", encoding="utf-8")
    (tmp_path / "kept.py").write_text("", encoding="utf-8")
    (tmp_path / "forgotten.py").write_text("", encoding="utf-8")
    assert _unnamed(tmp_path) == ["forgotten.py"]
