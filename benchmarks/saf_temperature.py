"""SAF's normalised form at the paper's tau 5 against its own tau 0.1: the term and its gradient share.

    .venv/bin/python benchmarks/saf_temperature.py

Two 4-epoch SimCLR + SAF runs on the bundled digits (width 8, E = 1, the term on from epoch 1, fp32, seed 0);
prints each run's `mechanisms.json` summary (docs/sharpness.md quotes it).
"""
import json
import tempfile

from sharpshift.config import load_config
from sharpshift.train import pretrain

for tau in ("null", "5.0"):  # null: the normalised form's default, 0.1
    cfg = load_config("saf-simclr", [
        "data.dataset=digits", "data.batch_size=64", "model.width=8", "trainer.max_epochs=4", "saf.epochs_ago=1",
        "saf.start_epoch=1", f"saf.temperature={tau}", "trainer.log_every_n_steps=2", "trainer.progress_bar=false",
        "report.after_training=false", "trainer.precision=32-true", f"out_dir={tempfile.mkdtemp()}", "seed=0"])
    saf = json.loads((pretrain(cfg) / "mechanisms.json").read_text())["saf"]
    print(f"saf.temperature={tau}: {saf['summary']} {saf['warnings']}")
