"""Pretrained weights in their native formats, written by the tests for tiny models: a detectron2 model-zoo Caffe2
``.pkl`` through ``detectron2://`` (cache, offline error), a torchvision ResNet state dict, a timm Swin checkpoint
and an OpenCLIP checkpoint; each load reports its missing and unexpected keys. Nothing is downloaded."""

import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from torch import nn

from unidet2.engine.checkpoint import Checkpointer
from unidet2.modeling.pretrained import detectron2_cache_path, load_pretrained_weights

R50_URL = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


class _Detector(nn.Module):
    """Holds a backbone where detectron2 detectors hold it (``backbone.bottom_up``) next to a head."""

    def __init__(self, bottom_up: nn.Module):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = bottom_up
        self.head = nn.Linear(4, 2)


def _tiny_bottleneck_resnet() -> ResNet:
    stem = BasicStem(3, 8, norm="FrozenBN")
    res2 = ResNet.make_stage(BottleneckBlock, 1, in_channels=8, bottleneck_channels=4, out_channels=16,
                             stride_per_block=[1], norm="FrozenBN")  # fmt: skip
    res3 = ResNet.make_stage(BottleneckBlock, 1, in_channels=16, bottleneck_channels=8, out_channels=32,
                             stride_per_block=[2], norm="FrozenBN")  # fmt: skip
    return ResNet(stem, [res2, res3], out_features=["res3"])


def _caffe2_name(d2_name: str) -> str | None:
    """detectron2 ResNet name -> the MSRA Caffe2 blob name (None for running stats, which those files lack)."""
    if d2_name.endswith(("running_mean", "running_var")):
        return None
    suffix = {"weight": "w", "bias": "b"}
    parts = d2_name.split(".")
    if parts[0] == "stem":  # stem.conv1.weight / stem.conv1.norm.{weight,bias}
        return "conv1_w" if parts[-2] == "conv1" else f"res_conv1_bn_{'s' if parts[-1] == 'weight' else 'b'}"
    stage, block, conv = parts[0], parts[1], parts[2]
    branch = "branch1" if conv == "shortcut" else "branch2" + "abc"[int(conv[-1]) - 1]
    if parts[3] == "norm":
        return f"{stage}_{block}_{branch}_bn_{'s' if parts[-1] == 'weight' else 'b'}"
    return f"{stage}_{block}_{branch}_{suffix[parts[-1]]}"


def test_detectron2_model_zoo_caffe2_pkl_through_the_cache_and_offline_error(tmp_path, monkeypatch):
    source = _tiny_bottleneck_resnet()
    generator = torch.Generator().manual_seed(0)
    blobs = {}
    for name, tensor in source.state_dict().items():
        c2 = _caffe2_name(name)
        if c2 is not None:
            blobs[c2] = torch.randn(tensor.shape, generator=generator).numpy()
    blobs["fc1000_w"], blobs["fc1000_b"] = np.zeros((10, 32), np.float32), np.zeros(10, np.float32)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNIDET2_OFFLINE", "1")

    model = _Detector(_tiny_bottleneck_resnet())
    with pytest.raises(FileNotFoundError, match=r"not cached and UNIDET2_OFFLINE is set.*put it at '.*cache/detectron2/"
                                                r"ImageNetPretrained/MSRA/R-50.pkl'"):  # fmt: skip
        load_pretrained_weights(model, R50_URL)

    cached = tmp_path / "cache/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert detectron2_cache_path(R50_URL) == str(cached)
    cached.parent.mkdir(parents=True)
    with open(cached, "wb") as f:
        pickle.dump({"blobs": {**blobs, "conv1_w_momentum": blobs["conv1_w"]}}, f)
    report = load_pretrained_weights(model, R50_URL)
    assert report.format == "detectron2" and report.prefix == "backbone.bottom_up."
    state = model.state_dict()
    assert torch.equal(state["backbone.bottom_up.res3.0.conv2.weight"], torch.from_numpy(blobs["res3_0_branch2b_w"]))
    assert torch.equal(state["backbone.bottom_up.res2.0.shortcut.norm.weight"],
                       torch.from_numpy(blobs["res2_0_branch1_bn_s"]))  # fmt: skip
    assert len(report.loaded) == len(blobs) - 2
    # the MSRA files carry no BN running stats (FrozenBN keeps 0 / 1) and a classifier the backbone lacks
    assert report.missing and all(k.endswith(("running_mean", "running_var")) for k in report.missing)
    assert sorted(report.unexpected) == ["fc1000.bias", "fc1000.weight"]

    # train.init_checkpoint takes the same path (the engine's Checkpointer)
    fresh = _Detector(_tiny_bottleneck_resnet())
    Checkpointer(fresh).load(R50_URL, checkpointables=[])
    assert torch.equal(fresh.state_dict()["backbone.bottom_up.res3.0.conv2.weight"],
                       state["backbone.bottom_up.res3.0.conv2.weight"])  # fmt: skip
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="UNIDET2_OFFLINE"):
        Checkpointer(fresh).load(R50_URL, checkpointables=[])


def test_torchvision_resnet_state_dict_gives_the_same_features(tmp_path):
    from torchvision.models.resnet import BasicBlock as TVBasicBlock
    from torchvision.models.resnet import ResNet as TVResNet

    torch.manual_seed(0)
    reference = TVResNet(TVBasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    for module in reference.modules():  # non-trivial BN statistics, so that a mix-up shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    path = tmp_path / "resnet_tiny-0123abcd.pth"
    torch.save(reference.state_dict(), path)  # what torchvision's model zoo files hold

    stages, channels = [], 64
    for index, width in enumerate((64, 128, 256, 512)):
        stages.append(ResNet.make_stage(BasicBlock, 1, in_channels=channels, out_channels=width,
                                        stride_per_block=[1 if index == 0 else 2], norm="FrozenBN"))  # fmt: skip
        channels = width
    model = _Detector(ResNet(BasicStem(3, 64, norm="FrozenBN"), stages, out_features=["res5"]))
    report = load_pretrained_weights(model, str(path))
    assert report.format == "torchvision_resnet" and report.prefix == "backbone.bottom_up."
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))  # fmt: skip
        actual = model.backbone.bottom_up(x)["res5"]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_timm_swin_checkpoint_in_timm_and_official_layouts(tmp_path):
    import timm

    kwargs = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4, "img_size": 64}
    torch.manual_seed(0)
    source = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, **kwargs)
    timm_file, official_file = tmp_path / "swin_timm.pth", tmp_path / "swin_official.pth"
    torch.save(source.state_dict(), timm_file)
    # the Swin release's layout: {"model": ...}, patch merging at the END of a stage, "head.*", index buffers
    official = {}
    for key, value in source.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        official[key.replace("head.fc.", "head.")] = value
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    assert "layers.0.downsample.reduction.weight" in official
    torch.save({"model": official, "epoch": 300}, official_file)

    for path in (timm_file, official_file):
        backbone = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                                     strict_img_size=False, **kwargs)  # fmt: skip
        backbone.prune_intermediate_layers([0, 1, 2, 3], prune_norm=True, prune_head=True)  # as the detector does
        model = _Detector(backbone)
        report = load_pretrained_weights(model, str(path))
        assert report.format == "timm" and report.prefix == "backbone.bottom_up."
        assert report.missing == []
        assert sorted(report.unexpected) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
        key = "layers.2.blocks.0.attn.qkv.weight"
        assert torch.equal(model.state_dict()["backbone.bottom_up." + key], source.state_dict()[key])


def test_openclip_checkpoint_raw_and_training_layouts(tmp_path):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    def tiny_clip():
        return open_clip.model.CLIP(
            embed_dim=8,
            vision_cfg=CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
            text_cfg=CLIPTextCfg(context_length=6, vocab_size=50, width=16, heads=2, layers=1),
        )

    torch.manual_seed(0)
    source = tiny_clip()
    raw, training = tmp_path / "open_clip_pytorch_model.bin", tmp_path / "epoch_32.pt"
    torch.save(source.state_dict(), raw)
    torch.save({"epoch": 32, "state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, training)
    for path in (raw, training):
        holder = nn.Module()
        holder.text_encoder = tiny_clip()
        report = load_pretrained_weights(holder, str(path))
        assert report.format == "openclip" and report.prefix == "text_encoder."
        assert report.missing == [] and report.unexpected == []
        assert torch.equal(holder.text_encoder.token_embedding.weight, source.token_embedding.weight)

    state = source.state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["ln_final.bias"]
    torch.save(state, raw)
    report = load_pretrained_weights(tiny_clip(), str(raw))
    assert report.missing == ["ln_final.bias"] and report.unexpected == ["extra.weight"]
