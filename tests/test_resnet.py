import pytest
import torch

from sharpshift.errors import UserError
from sharpshift.models.resnet import ResNet


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth,feat_dim", [(18, 512), (34, 512), (50, 2048)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("cifar_stem,size", [(True, 32), (False, 64)])
def test_output_shape(depth, feat_dim, channels, cifar_stem, size):
    torch.manual_seed(0)
    m = ResNet(depth, in_channels=channels, cifar_stem=cifar_stem).eval()
    with torch.no_grad():
        out = m(torch.randn(2, channels, size, size))
    assert m.feat_dim == feat_dim
    assert out.shape == (2, feat_dim)
    assert torch.isfinite(out).all()


def test_param_counts_match_torchvision_without_fc():
    # torchvision totals minus the 1000-class fc (512*1000+1000, 2048*1000+1000).
    assert n_params(ResNet(18)) == 11_689_512 - 513_000
    assert n_params(ResNet(34)) == 21_797_672 - 513_000
    assert n_params(ResNet(50)) == 25_557_032 - 2_049_000


def test_cifar_stem_and_grey_input_change_only_the_stem():
    base = n_params(ResNet(18))
    # 7x7x3x64 stem -> 3x3x3x64 stem; 3 input channels -> 1.
    assert n_params(ResNet(18, cifar_stem=True)) == base - 64 * 3 * (49 - 9)
    assert n_params(ResNet(18, in_channels=1)) == base - 64 * 2 * 49
    assert isinstance(ResNet(18, cifar_stem=True).maxpool, torch.nn.Identity)


def test_zero_init_residual_makes_blocks_identity_branches():
    for depth in (18, 50):
        m = ResNet(depth, zero_init_residual=True)
        for block in [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]:
            assert torch.all(block.last_bn().weight == 0)
        assert torch.all(m.bn1.weight == 1)
    assert torch.all(ResNet(18).layer1[0].bn2.weight == 1)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        ResNet(101)
    with pytest.raises(UserError):
        ResNet(18, in_channels=4)


def test_backward_runs_in_train_mode():
    m = ResNet(18, in_channels=1, cifar_stem=True)
    m(torch.randn(4, 1, 16, 16)).pow(2).mean().backward()
    assert m.conv1.weight.grad is not None and m.conv1.weight.grad.abs().sum() > 0
