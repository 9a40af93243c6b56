"""The titans-pytorch peer rows of the ops benchmark (DESIGN §9): built at our Titans
layer's sizes, timed on the same shapes, printed with our speed-up; skipped with the reason
when the package is missing. titans-pytorch is in the ``dev`` extra (via ``peers``)."""

from __future__ import annotations

import builtins

import torch

from atlas_search.bench import ops_speed, titans_peer


def test_the_peer_is_built_at_our_layers_sizes_and_maps_the_same_shapes():
    ours = ops_speed.memory_layer("titans", 16)
    for setting in titans_peer.SETTINGS:
        peer = titans_peer.peer_layer(ours.d_model, ours.n_heads, ours.head_dim,
                                      ours.mem.depth, ours.mem.expansion, 16, setting)
        x = torch.randn(2, 40, ours.d_model)
        out = peer(x)
        assert out.shape == ours(x).shape == x.shape
        out.square().mean().backward()
        assert torch.isfinite(peer.memory.to_queries.weight.grad).all()
        # per head, the memory MLP has our widths: head_dim -> expansion * head_dim -> head_dim
        shapes = [tuple(p.shape) for n, p in peer.named_parameters()
                  if n.startswith("memory.memory_model_parameters") and p.dim() == 3]
        d, e = ours.head_dim, int(ours.mem.expansion * ours.head_dim)
        assert shapes == [(ours.n_heads, d, e), (ours.n_heads, e, d)], shapes


def test_the_table_has_both_peer_settings_and_our_speed_up(tmp_path):
    table = ops_speed.main(["--presets", "titans", "--T", "32", "64", "--repeats", "1",
                            "--max-ref-T", "0", "--out", str(tmp_path / "o.txt")])
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("peer: titans-pytorch"))
    assert "tok/s c=16" in lines[at + 1] and "x vs default" in lines[at + 1]
    for t, line in zip((32, 64), lines[at + 2:at + 4], strict=True):
        cols = line.split()
        assert int(cols[0]) == t and len(cols) == 6
        assert all(float(c) > 0 for c in cols[1:])  # every cell was timed


def test_without_the_package_the_peer_rows_are_skipped_with_the_reason(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_titans(name, *args, **kwargs):
        if name.startswith("titans_pytorch"):
            raise ModuleNotFoundError("No module named 'titans_pytorch'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_titans)
    assert "pip install -e '.[peers]'" in titans_peer.missing()
    table = ops_speed.main(["--presets", "titans", "--T", "32", "--repeats", "1",
                            "--max-ref-T", "0", "--out", str(tmp_path / "o.txt")])
    assert "peer rows skipped: titans-pytorch is not importable" in table
    assert "titans-pytorch c=16" not in table
    table = ops_speed.main(["--presets", "titans", "--T", "32", "--repeats", "1",
                            "--max-ref-T", "0", "--no-peer", "--out", str(tmp_path / "p.txt")])
    assert "peer" not in table
