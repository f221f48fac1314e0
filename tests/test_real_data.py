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
    # Measured (this test's settings, seeds 0-4 for the subsets, the pretraining and the random encoder; AMD EPYC
    # with AVX512-BF16, docs/benchmarks.md): kNN gain over the random encoder 0.0275/0.026/0.033/0.052/0.038 in
    # fp32 and 0.032/0.037/0.0215/0.0465/0.036 in bf16-mixed; linear gain 0.011/0.0195/0.0375/0.018/0.017 in fp32
    # and 0.0125/0.0195/0.026/0.008/0.013 in bf16. Pinned to fp32 above; the margins sit below every one of the
    # ten measured gaps, so a CPU whose fp32 kernels round differently still passes.
    assert trained["knn_top1"] > floor["knn_top1"] + 0.01
    assert trained["linear_top1"] > floor["linear_top1"]
