"""The corruption comparison's table in docs/robustness.md: each of our corruptions against Hendrycks'
reference code at 32x32 RGB with the reference's parameters (tests/corruption_reference.py).

    python benchmarks/corruption_oracle.py   # rewrites the corruption-oracle section of docs/robustness.md
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sharpshift.bench.grid_tables import replace_section  # noqa: E402
from tests.corruption_reference import NOT_COMPARED, REFERENCE_LEVELS, compare, sample_images  # noqa: E402


def main() -> None:
    images = sample_images()
    lines = ["`python benchmarks/corruption_oracle.py`: 32 seeded 32x32 RGB images; our function with the "
             "reference's parameter of each severity (imagecorruptions 1.1.2, ImageNet-C's levels).\n",
             "| corruption | compared by | severity 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|---|"]
    for name, levels in REFERENCE_LEVELS.items():
        cells, kind = [], ""
        for severity in range(1, len(levels) + 1):
            r = compare(name, severity, images)
            kind = r["kind"]
            cells.append(f"max {r['max_abs']:.0f}, mean {r['mean_abs']:.2f}" if "max_abs" in r else f"{r['ratio']:.3f}")
        cells += ["-"] * (5 - len(cells))
        lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Not compared:", *[f"- {name}: {why}." for name, why in NOT_COMPARED.items()]]
    replace_section(ROOT / "docs" / "robustness.md", "corruption-oracle", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
