"""`trauma-node evaluate` on a generated dataset in the RSNA 2023 layout: the embedded
baseline and the tiny random-weight models, so that a site can set its own run beside them.

    .venv/bin/python bench/evaluation_dataset.py [--out DIR] [--skip-tiny]

The dataset (written once under OUT/dataset) is made of phantoms (tests/support/phantom.py,
256 x 256 at 1.5625 mm, 2.5 mm slices over 300 mm) with labels set by design: the
organ a lesion is in or beside is injured (low; high when contrast leaks from it, AAST
IV-V); blood between bowel loops is a bowel injury; traps (positive oral contrast,
calcified granulomas) and clean studies are healthy. Hemoperitoneum beside the liver or a
kidney with no visible lesion is labelled as that organ's low-grade injury, as RSNA's
readers would have, though the image shows no laceration: the baseline cannot see it
and is expected to miss it. Masks (1 blood, 2 blush) go to the site layout's masks/ so
Dice is measured; the RSNA layout's segmentations/ are organ masks, which the phantom
does not have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.datasets_support import write_site  # noqa: E402
from evaluation.evaluate import Options, evaluate  # noqa: E402
from support.phantom import PhantomSpec, write_series  # noqa: E402
from pipeline.settings import PipelineSettings  # noqa: E402

GEOMETRY = dict(slices=120, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=2.5)
# patient: (phantom, labels)
CASES: dict[str, tuple[dict, dict[str, int]]] = {
    "clean-average": ({}, {}),
    "clean-thin": ({"habitus": "thin", "seed": 1}, {}),
    "clean-obese": ({"habitus": "obese", "seed": 2}, {}),
    "oral-contrast": ({"oral_contrast_hu": 350.0, "seed": 3}, {}),
    "granuloma": ({"granuloma": True, "seed": 4}, {}),
    "splenic-injury": ({"blood": "splenic_injury", "seed": 5}, {"spleen_low": 1}),
    "splenic-injury-blush": ({"blood": "splenic_injury", "blush": True, "blush_site": "intrasplenic",
                              "seed": 6}, {"spleen_high": 1, "extravasation_injury": 1}),
    "perisplenic-blush": ({"blood": "perisplenic", "blush": True, "blush_site": "perisplenic",
                           "seed": 7}, {"spleen_high": 1, "extravasation_injury": 1}),
    "intrahepatic-blush": ({"blush": True, "blush_site": "intrahepatic", "seed": 8},
                           {"liver_high": 1, "extravasation_injury": 1}),
    "perihepatic-blood": ({"blood": "wall_right", "seed": 9}, {"liver_low": 1}),
    "perirenal-blood": ({"blood": "perirenal", "seed": 10}, {"kidney_low": 1}),
    "intrarenal-blush": ({"blush": True, "blush_site": "intrarenal", "seed": 11},
                         {"kidney_high": 1, "extravasation_injury": 1}),
    "peribowel-blood": ({"blood": "peribowel", "seed": 12}, {"bowel_injury": 1}),
    "large-hemoperitoneum": ({"blood": "large", "seed": 13}, {"spleen_low": 1, "liver_low": 1}),
}


def make_dataset(root: Path) -> Path:
    site = root / "dataset"
    if (site / "labels.csv").is_file():
        return site
    cases = {}
    for patient, (phantom, injuries) in CASES.items():
        truth = write_series(PhantomSpec(**GEOMETRY, **phantom), root / "phantoms" / patient)
        cases[patient] = (truth, injuries)
    write_site(site, cases)
    return site


def tiny_model_settings() -> PipelineSettings:
    from support.tiny_models import model_settings

    return model_settings(triage="medsiglip", reading="medgemma", segmentation="unet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/trauma-bench-evaluation")
    parser.add_argument("--skip-tiny", action="store_true", help="the embedded baseline only")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    dataset = make_dataset(out)
    print(f"dataset: {dataset} ({len(CASES)} patients, {time.perf_counter() - started:.0f} s)")
    runs = [("embedded baseline", PipelineSettings())]
    if not args.skip_tiny:
        runs.append(("tiny random-weight models", tiny_model_settings()))
    for name, settings in runs:
        run_out = out / name.split()[0]
        started = time.perf_counter()
        figures = evaluate(dataset, settings, Options(run_out, progress=False))
        seconds = time.perf_counter() - started
        print(f"\n## {name}: {seconds:.0f} s, {run_out / 'summary.md'}\n")
        print((run_out / "summary.md").read_text())
        print("Per patient (probability of injury per target, from predictions):")
        for patient, targets in figures["predictions"].items():
            print(f"- {patient}: " + ", ".join(f"{t} {1 - levels['healthy']:.2f}"
                                              for t, levels in targets.items()))
        (run_out / "bench.json").write_text(json.dumps({"seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
