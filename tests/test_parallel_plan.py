"""Tensor-parallel plans without processes: which heads, KV heads, MLP columns and vocabulary rows each rank
holds (Qwen2.5 shapes), and the clear errors for degrees a model cannot be split by."""

import pytest
from tiny_train import write_model_dir

from zenlm.config import preset
from zenlm.parallel.plan import check, plan


def test_half_a_billion_splits_its_two_kv_heads_over_two_ranks():
    c = preset("zen-0.5b")  # 14 heads, 2 KV heads, MLP 4864
    ranks = [plan(c, 2, r) for r in range(2)]
    assert [list(p.head_range) for p in ranks] == [list(range(0, 7)), list(range(7, 14))]
    assert [list(p.kv_range) for p in ranks] == [[0], [1]]
    assert [p.inter_range for p in ranks] == [range(0, 2432), range(2432, 4864)]
    assert [p.vocab_range for p in ranks] == [range(0, 75968), range(75968, 151936)]
    local = ranks[1].local_config(c)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size, local.hidden_size) == (7, 1, 2432, 896)


def test_kv_heads_are_replicated_when_there_are_fewer_than_ranks():
    c = preset("zen-1.5b")  # 12 heads, 2 KV heads: at tp=4 each KV head serves two ranks
    ranks = [plan(c, 4, r) for r in range(4)]
    assert [p.heads for p in ranks] == [3] * 4
    assert [list(p.kv_range) for p in ranks] == [[0], [0], [1], [1]]  # the KV head each rank's queries read


def test_an_uneven_vocabulary_leaves_the_last_rank_fewer_rows():
    c = preset("zen-tiny").replace(vocab_size=300)  # 3 heads, 1 KV head
    assert [plan(c, 3, r).vocab_range for r in range(3)] == [range(0, 100), range(100, 200), range(200, 300)]
    c = c.replace(vocab_size=301)
    assert [len(plan(c, 3, r).vocab_range) for r in range(3)] == [101, 101, 99]


@pytest.mark.parametrize("name, tp, message", [
    ("zen-0.5b", 4, "tp=4 does not divide the 14 attention heads"),
    ("zen-tiny", 2, "tp=2 does not divide the 3 attention heads"),
    ("zen-7b", 0, "tp must be a whole number >= 1"),
    ("qwen1.5-moe-a2.7b", 2, "tensor parallelism covers dense models"),
])
def test_invalid_degrees_are_one_clear_error(name, tp, message):
    with pytest.raises(ValueError, match=message):
        check(preset(name), tp)


def test_kv_heads_neither_divided_nor_replicable():
    c = preset("zen-7b").replace(num_heads=24, num_kv_heads=4)  # tp=6: 4 % 6 and 6 % 4 are both non-zero
    with pytest.raises(ValueError, match="tp=6 neither divides nor is a multiple of the 4 KV heads"):
        check(c, 6)


def test_llm_refuses_an_invalid_degree_before_starting_any_process(tmp_path):
    from zenlm.engine.llm import LLM

    path = write_model_dir(tmp_path / "m", num_heads=3, num_kv_heads=1)
    with pytest.raises(ValueError, match="tp=2 does not divide the 3 attention heads"):
        LLM(str(path), progress=False, tp=2)
    with pytest.raises(ValueError, match="tp must be a whole number"):
        LLM(str(path), progress=False, tp=0)


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_quantized_linears_shard_in_code_space_exactly(bits):
    import torch

    from zenlm.parallel.shard import keep_cols, keep_rows
    from zenlm.quant.linear import QLinear

    torch.manual_seed(0)
    q = QLinear.from_float(torch.randn(40, 128), torch.randn(40), bits)  # 40 rows: tiles of 16 plus a partial one
    full = q.dequantize()
    rows = keep_rows(q, [range(0, 8), range(24, 40)])  # q's rows 0..7 then 24..39, as a fused q|k|v shard keeps
    assert torch.equal(rows.dequantize(), torch.cat([full[:8], full[24:]]))
    assert torch.equal(rows.bias, torch.cat([q.bias[:8], q.bias[24:]]))
    cols = keep_cols(q, range(64, 128), keep_bias=False)  # a row-parallel shard: groups 2 and 3 of 32 inputs
    assert torch.equal(cols.dequantize(), full[:, 64:]) and cols.bias is None
    x = torch.randn(3, 128)
    whole = torch.nn.functional.linear(x, full)
    halves = [keep_cols(q, range(a, a + 64), keep_bias=False) for a in (0, 64)]
    summed = sum(torch.nn.functional.linear(x[:, h.in_features * i:h.in_features * (i + 1)], h.dequantize())
                 for i, h in enumerate(halves))
    torch.testing.assert_close(summed, whole)  # what the all-reduce adds up
    with pytest.raises(ValueError, match="do not fall on group boundaries"):
        keep_cols(q, range(0, 48), keep_bias=True)


def test_a_quantized_shard_that_would_split_a_group_fails_before_any_process_starts(tmp_path):
    import multiprocessing

    from zenlm.engine.llm import LLM

    path = write_model_dir(tmp_path / "m", num_heads=4, num_kv_heads=2, head_dim=8)  # o_proj: 16 inputs per rank
    with pytest.raises(ValueError, match="columns 0..16 of 32 do not fall on group boundaries"):
        LLM(str(path), dtype="int8", progress=False, tp=2)
    assert multiprocessing.active_children() == []
