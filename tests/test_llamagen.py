"""LlamaGen's pretrained VQ from a local file (issue 18): weights the test writes under the
names and shapes of LlamaGen's published checkpoints load strictly, the sizes are read from
them, each layer does its part, and the tokenizer joins a set through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from native_mm.cli import main as cli
from native_mm.tokenizers.base import MediaError, TokenizerSet
from native_mm.tokenizers.image import ImageTokenizer

CH, MULT, N_RES, Z, K, D = 32, (1, 1, 2), 1, 16, 64, 8  # a factor-4 model, tiny


def _conv(sd: dict, name: str, cout: int, cin: int, k: int) -> None:
    sd[f"{name}.weight"], sd[f"{name}.bias"] = (
        torch.randn(cout, cin, k, k) * 0.05,
        torch.zeros(cout),
    )


def _norm(sd: dict, name: str, c: int) -> None:
    sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.ones(c), torch.zeros(c)


def _res(sd: dict, name: str, cin: int, cout: int) -> None:
    _norm(sd, f"{name}.norm1", cin)
    _conv(sd, f"{name}.conv1", cout, cin, 3)
    _norm(sd, f"{name}.norm2", cout)
    _conv(sd, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(sd, f"{name}.nin_shortcut", cout, cin, 1)


def _attn(sd: dict, name: str, c: int) -> None:
    _norm(sd, f"{name}.norm", c)
    for part in ("q", "k", "v", "proj_out"):
        _conv(sd, f"{name}.{part}", c, c, 1)


def _mid(sd: dict, name: str, c: int) -> None:
    _res(sd, f"{name}.mid.0", c, c)
    _attn(sd, f"{name}.mid.1", c)
    _res(sd, f"{name}.mid.2", c, c)


def llamagen_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes LlamaGen's VQModel saves (its
    tokenizer_image/vq_model.py), for the sizes above."""
    torch.manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    last = len(MULT) - 1
    _conv(sd, "encoder.conv_in", CH, 3, 3)
    cin = CH
    for i, m in enumerate(MULT):
        for j in range(N_RES):
            _res(sd, f"encoder.conv_blocks.{i}.res.{j}", cin, CH * m)
            cin = CH * m
            if i == last:
                _attn(sd, f"encoder.conv_blocks.{i}.attn.{j}", cin)
        if i != last:
            _conv(sd, f"encoder.conv_blocks.{i}.downsample.conv", cin, cin, 3)
    _mid(sd, "encoder", cin)
    _norm(sd, "encoder.norm_out", cin)
    _conv(sd, "encoder.conv_out", Z, cin, 3)
    _conv(sd, "decoder.conv_in", cin, Z, 3)
    _mid(sd, "decoder", cin)
    for n, i in enumerate(reversed(range(len(MULT)))):
        for j in range(N_RES + 1):
            _res(sd, f"decoder.conv_blocks.{n}.res.{j}", cin, CH * MULT[i])
            cin = CH * MULT[i]
            if i == last:
                _attn(sd, f"decoder.conv_blocks.{n}.attn.{j}", cin)
        if i != 0:
            _conv(sd, f"decoder.conv_blocks.{n}.upsample.conv", cin, cin, 3)
    _norm(sd, "decoder.norm_out", cin)
    _conv(sd, "decoder.conv_out", 3, cin, 3)
    sd["quantize.embedding.weight"] = torch.randn(K, D)
    sd["quantize.codebook_used"] = torch.zeros(65536)  # a training statistic they keep
    _conv(sd, "quant_conv", D, Z, 1)
    _conv(sd, "post_quant_conv", Z, D, 1)
    return sd


def _file(tmp_path: Path, sd: dict) -> Path:
    path = tmp_path / "vq_ds4_c2i.pt"
    torch.save({"model": sd}, path)  # LlamaGen saves {"model": state_dict}
    return path


def _photo(side: int = 32) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8))


def test_loads_strictly_and_reads_the_sizes(tmp_path):
    tok = ImageTokenizer.from_pretrained("llamagen", _file(tmp_path, llamagen_state_dict()))
    c = tok.config
    assert (c.arch, c.factor, c.channels, c.channel_mult, c.num_res_blocks) == (
        "llamagen", 4, CH, MULT, N_RES)  # fmt: skip
    assert (c.z_channels, c.codebook_size, c.codebook_dim) == (Z, K, D)
    codes = tok.encode(_photo())
    assert codes.shape == (8, 8) and codes.min() >= 0 and codes.max() < K
    assert tok.decode(codes).size == (32, 32)
    vectors = tok.code_vectors()[0]  # the l2-normalised codebook rows
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_each_layer_does_its_part(tmp_path):
    """quant_conv feeds the cosine lookup; post_quant_conv -> decoder -> conv_out paints."""
    sd = llamagen_state_dict()
    sd["quant_conv.weight"].zero_()
    sd["quant_conv.bias"] = 3.0 * sd["quantize.embedding.weight"][17]  # every position -> 17
    sd["decoder.conv_out.weight"].zero_()
    sd["decoder.conv_out.bias"] = torch.tensor([0.5, -0.5, 1.0])  # a flat colour
    tok = ImageTokenizer.from_pretrained("llamagen", _file(tmp_path, sd))
    codes = tok.encode(_photo())
    assert (codes == 17).all()
    pixels = np.asarray(tok.decode(codes)).reshape(-1, 3)
    np.testing.assert_allclose(pixels, [[191, 64, 255]] * len(pixels), atol=1)


def test_joins_a_set_and_survives_save_and_load(tmp_path, tiny_tokenizers):
    tiny_tokenizers.text.save(tmp_path / "text")
    weights = _file(tmp_path, llamagen_state_dict())
    out = tmp_path / "set"
    args = ["--text", str(tmp_path / "text"), "--image", f"llamagen:{weights}"]
    assert cli(["tokenizer", "set", *args, "--image-max-grid", "16", "--out", str(out)]) == 0
    tset = TokenizerSet.load(out)
    direct = ImageTokenizer.from_pretrained("llamagen", weights)
    assert tset.vocab.image_codes == K and tset.image.fingerprint() == direct.fingerprint()
    np.testing.assert_array_equal(tset.image.encode(_photo()), direct.encode(_photo()))


def test_clear_errors(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        ImageTokenizer.from_pretrained("llamagen", tmp_path / "missing.pt")
    with pytest.raises(MediaError, match="unknown pretrained image VQ layout"):
        ImageTokenizer.from_pretrained("taming", tmp_path / "x.pt")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(MediaError, match="not a llamagen VQ state dict"):
        ImageTokenizer.from_pretrained("llamagen", tmp_path / "other.pt")
    sd = llamagen_state_dict()
    del sd["decoder.conv_out.bias"]
    with pytest.raises(MediaError, match="do not fit the llamagen layout.*conv_out.bias"):
        ImageTokenizer.from_pretrained("llamagen", _file(tmp_path, sd))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MediaError, match="cannot read the checkpoint"):
        ImageTokenizer.from_pretrained("llamagen", tmp_path / "junk.pt")
