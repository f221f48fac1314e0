"""Learning on real data: a short seeded pretraining on a Fashion-MNIST subset beats the random encoder
under the same probe."""
from sharpshift.config import load_config
from sharpshift.data.registry import load_dataset
from sharpshift.evaluation.run import evaluate_backbone
from sharpshift.export import load_backbone
from sharpshift.models import build_backbone
from sharpshift.train import pretrain


def test_pretraining_beats_random_encoder_on_fashion_mnist(tmp_path, fashion_available):
    cfg = load_config("simclr", ["data.subset=6000", "data.test_subset=2000", "data.batch_size=128",
                                 "trainer.max_epochs=3", "trainer.progress_bar=false", "eval.knn_every_n_epochs=0",
                                 "eval.after_training=false", "model.width=16", f"out_dir={tmp_path}", "seed=0",
                                 "trainer.precision=32"])  # pinned: the margin below was measured in fp32
    run = pretrain(cfg)
    train = load_dataset("fashion-mnist", "train").subset(6000, seed=0)
    test = load_dataset("fashion-mnist", "test").subset(2000, seed=0)
    trained = evaluate_backbone(load_backbone(run), cfg, train, test)
    import torch

    torch.manual_seed(0)
    random = build_backbone("convnet", 1, width=16)
    random.arch = load_backbone(run).arch  # same normalisation
    floor = evaluate_backbone(random, cfg, train, test)
    # measured: see docs/results.md; the margin asked here is far below the measured gap
    assert trained["knn_top1"] > floor["knn_top1"] + 0.02
    assert trained["linear_top1"] > floor["linear_top1"]
