import torch

from fastwam.nn.rope import apply_rope, rope_angles, rope_rotations, video_positions, wan_axis_split


def test_apply_rope_equals_complex_rotation_of_channel_pairs():
    torch.manual_seed(0)
    angles = rope_angles(video_positions(2, 3, 4), wan_axis_split(16))  # (24, 8)
    x = torch.randn(2, 3, 24, 16)
    pairs = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)))
    expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    torch.testing.assert_close(apply_rope(x, rope_rotations(angles)).double(), expected, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    rot = rope_rotations(rope_angles(torch.arange(12)[:, None], (8,)))  # (2, 12, 16)

    def score(i, j):
        return (apply_rope(q.expand(1, 1, 12, 16), rot)[0, 0, i] @ apply_rope(k.expand(1, 1, 12, 16), rot)[0, 0, j])

    torch.testing.assert_close(score(3, 1), score(9, 7), atol=1e-5, rtol=1e-5)
    assert not torch.isclose(score(3, 1), score(3, 2), atol=1e-3)


def test_apply_rope_keeps_dtype_and_norm():
    x = torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)
    out = apply_rope(x, rope_rotations(rope_angles(torch.arange(5)[:, None], (4,))))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().norm(dim=-1), x.float().norm(dim=-1), atol=0.05, rtol=0.02)
