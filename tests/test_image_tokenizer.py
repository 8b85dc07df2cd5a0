"""Image VQ-GAN tokenizer: shapes, modes, quantizers, save/load, errors, training CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from native_mm.apps.digits import images as digits
from native_mm.cli import main as cli_main
from native_mm.tokenizers.base import MediaError
from native_mm.tokenizers.image import ImageConfig, ImageTokenizer, target_size, to_rgb
from native_mm.tokenizers.image_metrics import PerceptualLoss, codebook_stats, psnr, ssim
from native_mm.tokenizers.image_train import ImageTrainSpec, VQGANModule

SPEC = str(Path(__file__).resolve().parents[1] / "tokenizers" / "image" / "digits.yaml")
TINY = dict(
    factor=4, channels=8, channel_mult=(1, 1, 2), z_channels=8, codebook_size=32,
    codebook_dim=4, min_size=8, max_size=64, batch_size=4,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convs gain nothing from a second thread, and on a shared 2-core machine
    # intra-op threads spinning against other processes make them 10x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(ImageConfig(**{**TINY, **kw}))


def rand_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


@pytest.fixture(scope="module")
def tok() -> ImageTokenizer:
    return tiny()


@pytest.mark.parametrize("size", [(37, 50), (5, 3), (64, 64), (200, 30), (9, 9)])
def test_round_trip_shapes_any_size(tok: ImageTokenizer, size: tuple[int, int]) -> None:
    w, h = size
    codes = tok.encode(rand_image(w, h))
    tw, th = target_size(w, h, tok.config)
    assert codes.shape == (th // 4, tw // 4) and codes.dtype == np.int64
    assert tw % 4 == 0 and th % 4 == 0 and max(tw, th) <= 64 + 2
    img = tok.decode(codes)
    assert img.mode == "RGB" and img.size == (tw, th)


def test_resize_policy() -> None:
    cfg = ImageConfig(**TINY)
    assert target_size(640, 480, cfg) == (64, 48)  # shrunk, aspect kept
    assert target_size(2, 4, cfg) == (4, 8)  # enlarged to min_size
    assert target_size(30, 30, cfg) == (32, 32)  # snapped to the nearest multiple of f
    assert target_size(1, 100, cfg) == (4, 64)  # never below one factor


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "F", "I", "YCbCr"])
def test_any_mode_encodes(tok: ImageTokenizer, mode: str) -> None:
    img = rand_image(20, 12).convert(mode)
    assert to_rgb(img).mode == "RGB"
    assert tok.encode(img).shape == (3, 5)


def test_mode_conversions_follow_policy(tmp_path) -> None:
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    la = Image.new("LA", (4, 4), (0, 255))
    assert to_rgb(la).getpixel((0, 0)) == (0, 0, 0)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 100, 50] * 256)
    assert to_rgb(pal).getpixel((1, 1)) == (200, 100, 50)
    pal.info["transparency"] = 0
    assert to_rgb(pal).getpixel((1, 1)) == (255, 255, 255)
    path = tmp_path / "deep.png"
    arr16 = np.full((6, 10), 65535, np.uint16)
    arr16[0, 0] = 0
    Image.fromarray(arr16).save(path)  # a real 16-bit grayscale PNG
    rgb = to_rgb(Image.open(path))
    assert rgb.getpixel((5, 3)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (0, 0, 0)
    assert tiny().encode(path).shape == (2, 2)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 255, 255)


def test_batch_encode_matches_single(tok: ImageTokenizer) -> None:
    imgs = [rand_image(16, 16, s) for s in range(5)] + [rand_image(24, 8, 9)]
    batch = tok.encode_batch(imgs)
    assert [c.shape for c in batch] == [(4, 4)] * 5 + [(2, 6)]
    for img, codes in zip(imgs, batch, strict=True):
        np.testing.assert_array_equal(codes, tok.encode(img))
    decoded = tok.decode_batch(batch)
    assert [d.size for d in decoded] == [(16, 16)] * 5 + [(24, 8)]


@pytest.mark.parametrize(
    "kw",
    [
        dict(quantizer="vq", codebook_size=32),
        dict(quantizer="fsq", codebook_size=60, fsq_levels=(5, 4, 3)),
        dict(quantizer="lfq", codebook_size=64),
    ],
)
def test_each_quantizer_encodes_in_range(kw: dict) -> None:
    t = tiny(**kw)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    t.model.train()
    _, q = t.model(x)  # one training forward (k-means init / EMA for vq)
    assert q.indices.shape == (8, 16) and torch.isfinite(q.loss)
    t.model.eval()
    codes = t.encode(rand_image(16, 12))
    assert codes.shape == (3, 4)
    assert codes.min() >= 0 and codes.max() < t.codebook_size
    all_codes = np.arange(t.codebook_size)[:12].reshape(3, 4)
    assert t.decode(all_codes).size == (16, 12)
    # the adapter's decode path gives back exactly the latents the encoder's codes stand for
    z = torch.randn(2, 12, 8)
    q = t.model.quantizer(z)
    assert torch.allclose(t.model.quantizer.decode_indices(q.indices), q.latents, atol=1e-5)


def test_encode_does_not_change_an_untrained_tokenizer() -> None:
    t = tiny()
    fp = t.fingerprint()
    t.encode(rand_image(16, 16))
    assert t.fingerprint() == fp


def test_bad_codes_and_config() -> None:
    t = tiny()
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        t.decode(np.full((2, 2), 32))
    with pytest.raises(ValueError, match="grid"):
        t.decode(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="channel_mult"):
        ImageConfig(factor=8, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="factor"):
        ImageConfig(factor=2)
    with pytest.raises(ValueError, match="prod"):
        ImageConfig(quantizer="fsq", codebook_size=100, fsq_levels=(8, 8))


def test_loss_decreases_on_real_digits() -> None:
    torch.manual_seed(0)
    spec = ImageTrainSpec(model=ImageConfig(**{**TINY, "min_size": 16}), resolution=16)
    module = VQGANModule(spec)
    imgs = [digits.to_pil(x, size=16) for x in digits.load("train")[0][:32]]
    x = torch.stack([torch.from_numpy(np.asarray(i.convert("RGB"), np.float32)) for i in imgs])
    x = x.permute(0, 3, 1, 2) / 127.5 - 1
    opt = torch.optim.Adam(module.vqgan.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        xrec, q = module.vqgan(x)
        loss = module.reconstruction_loss(x, xrec) + q.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_save_load_keeps_fingerprint_and_codes(tmp_path) -> None:
    t = tiny()
    t.model.train()
    t.model(torch.rand(8, 3, 16, 16) * 2 - 1)  # k-means init so codes differ per position
    t.model.eval()
    img = rand_image(30, 22)
    t.save(tmp_path / "tok")
    loaded = ImageTokenizer.load(tmp_path / "tok")
    assert loaded.fingerprint() == t.fingerprint()
    np.testing.assert_array_equal(loaded.encode(img), t.encode(img))
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["modality"] == "image" and meta["fingerprint"] == t.fingerprint()


def test_load_errors(tmp_path) -> None:
    tiny().save(tmp_path / "a")
    tiny(channels=16).save(tmp_path / "b")
    # b's weights under a's config: do not fit
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    from native_mm.io import sha256_file

    meta["weights_sha256"] = sha256_file(tmp_path / "b" / "weights.pt")
    (tmp_path / "b" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MediaError, match="do not fit"):
        ImageTokenizer.load(tmp_path / "b")
    with open(tmp_path / "a" / "weights.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="checksum"):
        ImageTokenizer.load(tmp_path / "a")


def test_bad_files_name_the_file(tmp_path, tok: ImageTokenizer) -> None:
    good = tmp_path / "good.png"
    rand_image(40, 40).save(good)
    data = good.read_bytes()
    cases = {
        "zero.png": b"",
        "text.png": b"this is not an image\n",
        "truncated.png": data[: len(data) // 2],
        "garbage.jpg": b"\xff\xd8\xff" + bytes(range(256)) * 4,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(MediaError, match=name):
            tok.encode(path)
    with pytest.raises(MediaError, match="missing.png"):
        tok.encode(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="good.png.*max_pixels"):
        tiny(max_pixels=1000).encode(good)
    with pytest.raises(MediaError):
        tok.encode(123)  # type: ignore[arg-type]


def test_anyres_tiles_and_global_view(tok: ImageTokenizer) -> None:
    img = rand_image(150, 100)
    res = tok.encode_anyres(img, tile=64)
    assert (res.rows, res.cols) == (2, 3) and len(res.spans()) == 7
    assert res.global_view.shape == (11, 16)  # 150x100 shrunk to max_size 64 -> 64x44
    assert res.tiles[0].shape == (16, 16) and res.tiles[-1].shape == (9, 6)
    assert tok.decode_anyres(res).size == (152, 100)


def test_metrics() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-4)
    assert psnr(x, x + 0.02).min() > 30 and ssim(x, -x).max() < 0.5
    stats = codebook_stats([np.array([[0, 1], [1, 1]])], 4)
    assert stats["codebook_usage"] == 0.5 and 1.0 < stats["perplexity"] < 2.0


def test_perceptual_loss_from_local_weights(tmp_path) -> None:
    from native_mm.tokenizers.image_metrics import _VGG16

    torch.manual_seed(0)
    state, cin, i = {}, 3, 0
    for v in _VGG16:  # torchvision vgg16 layout: features.<index>.weight
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(int(v), cin, 3, 3) * 0.1
        state[f"features.{i}.bias"] = torch.zeros(int(v))
        cin, i = int(v), i + 2
    torch.save(state, tmp_path / "vgg.pt")
    loss = PerceptualLoss(tmp_path / "vgg.pt", depth=2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.flip(x, dims=[-1])).item() > 0
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        PerceptualLoss(tmp_path / "bad.pt")


def test_digits_split_is_fixed() -> None:
    (xt, yt), (xh, yh) = digits.load("train"), digits.load("heldout")
    assert len(xt) == len(yt) == 1437 and len(xh) == 360 and xt.shape[1:] == (8, 8)
    xa, ya = digits.load("all")
    np.testing.assert_array_equal(xa[1437:], xh)
    np.testing.assert_array_equal(ya[:1437], yt)
    np.testing.assert_array_equal(ya[1437:], yh)
    back = digits.to_8x8(digits.to_pil(xh[0], size=16))
    assert np.abs(back - xh[0]).mean() < 1.5


def test_train_cli_resume_and_eval(tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        "tokenizer", "train", "image", "--config", SPEC,
        "--out", str(out), "model.channels=8", "model.channel_mult=[1,1,1]",
        "model.z_channels=8", "model.codebook_size=32", "batch_size=16",
        "disc_start=2", "sample_every=2", "trainer.log_every=1", "trainer.checkpoint_every=2",
    ]  # fmt: skip
    assert cli_main([*args, "trainer.max_steps=3"]) == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "reconstructions.png").is_file() and (
        out / "samples" / "step_000002.png"
    ).is_file()
    first = ImageTokenizer.load(out).fingerprint()
    assert cli_main([*args, "trainer.max_steps=5"]) == 0  # resumes from last.ckpt (step 3)
    rows = (out / "train_log.csv").read_text().split("\n")
    header = rows[0].split(",")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5  # the end of a run is always checkpointed
    assert ckpt["hyper_parameters"]["spec"]["model"]["codebook_size"] == 32
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:] if r]
    assert sorted(set(steps)) == [0, 1, 2, 3, 4]  # both runs' logs are kept
    assert ImageTokenizer.load(out).fingerprint() != first
    metrics_path = tmp_path / "m.json"
    rc = cli_main(
        ["tokenizer", "eval", "image", "--tokenizer", str(out),
         "--data", "native_mm.apps.digits.sources:digit_images",
         "--out", str(metrics_path), "--limit", "40"]
    )  # fmt: skip
    assert rc == 0
    m = json.loads(metrics_path.read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "accuracy_retention"):
        assert np.isfinite(m[key])
    assert m["n_images"] == 40 and m["tokens_per_image"] == 16


def test_train_cli_rejects_bad_spec(tmp_path, capsys) -> None:
    rc = cli_main(
        ["tokenizer", "train", "image", "--config", SPEC,
         "--out", str(tmp_path), "bogus_key=1"]
    )  # fmt: skip
    assert rc == 1 and "bogus_key" in capsys.readouterr().err


def test_folder_and_jsonl_training_data(tmp_path) -> None:
    from native_mm.tokenizers.image_train import CropDataset, build_dataset, image_paths
    from native_mm.tokenizers.trainer import DataReport

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rand_image(40, 24, 1).convert("RGBA").save(folder / "a.png")
    rand_image(20, 30, 2).convert("P").save(folder / "sub" / "b.gif")
    rand_image(50, 50, 3).save(folder / "c.jpg")
    (folder / "notes.txt").write_text("not an image")
    spec = ImageTrainSpec(model=ImageConfig(**TINY), resolution=16)
    ds = build_dataset(spec, str(folder), train=True)
    assert len(ds) == 3 and all(ds[i].shape == (3, 16, 16) for i in range(3))
    val = build_dataset(spec, str(folder), train=False)
    assert torch.equal(val[0], val[0])  # centre crops are deterministic
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        json.dumps({"id": "d1", "segments": [{"text": "a"}, {"image": "imgs/a.png"}]})
        + "\n"
        + json.dumps({"id": "d2", "segments": [{"image": "imgs/c.jpg"}]})
        + "\n"
    )
    assert [p.name for p in image_paths(docs)] == ["a.png", "c.jpg"]
    assert build_dataset(spec, str(docs), train=True)[1].shape == (3, 16, 16)
    (folder / "bad.png").write_bytes(b"")
    report = DataReport(folder)
    val = build_dataset(spec, str(folder), train=False, report=report)  # decodes each once
    assert len(val) == 3 and (report.used, dict(report.counts)) == (3, {"MediaError": 1})
    assert "bad.png: empty (zero-byte) image file" in report.records[0]["message"]
    with pytest.raises(MediaError, match="bad.png"):  # a file that breaks later still names it
        CropDataset([folder / "bad.png"], 16, train=False)[0]
    with pytest.raises(ValueError, match="not an image folder"):
        build_dataset(spec, str(tmp_path / "missing"), train=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        build_dataset(spec, str(tmp_path / "empty"), train=True)


@pytest.mark.parametrize("factor,mult", [(8, (1, 1, 2, 2)), (16, (1, 1, 1, 2, 2))])
def test_factors_and_attention(factor: int, mult: tuple[int, ...]) -> None:
    t = tiny(factor=factor, channel_mult=mult, attention=True, min_size=16, max_size=96)
    codes = t.encode(rand_image(70, 40))
    th, tw = target_size(70, 40, t.config)[::-1]
    assert codes.shape == (th // factor, tw // factor)
    assert t.decode(codes).size == (tw, th)


def test_layer_norm_codes_do_not_depend_on_image_size(tmp_path) -> None:
    t = tiny(norm="layer", min_size=8, max_size=256)
    t.model.train()
    t.model(torch.rand(8, 3, 32, 32) * 2 - 1)  # k-means init
    t.model.eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    big = t.encode_tensor(x)[0]
    crop = t.encode_tensor(x[..., :32, :32])[0]
    # away from the crop border (receptive field) the codes agree exactly
    np.testing.assert_array_equal(big[:4, :4], crop[:4, :4])
    t.save(tmp_path / "ln")
    meta = json.loads((tmp_path / "ln" / "config.json").read_text())
    meta["config"]["norm"] = "group"  # same shapes, different modules: must not load
    (tmp_path / "ln" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MediaError, match="do not fit"):
        ImageTokenizer.load(tmp_path / "ln")


@pytest.mark.slow
def test_shipped_digits_tokenizer_meets_acceptance() -> None:
    from native_mm.apps.digits.sources import digit_images
    from native_mm.tokenizers.image_eval import evaluate

    tok = ImageTokenizer.load(Path(SPEC).parent / "digits")
    m = evaluate(tok, digit_images("heldout"))
    assert m["tokens_per_image"] == 16
    assert m["accuracy_retention"] >= 0.95
    assert m["codebook_usage"] >= 0.8 and m["psnr"] > 24
