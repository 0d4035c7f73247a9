"""The LoRA hooks of one expert on a toy module (no model): what `settle()` does so that compiled blocks
see the same structure from job to job, and where full weight deltas go.

Why it matters is shown on the compiled tiny model in test_compile.py (load tier): before `settle()`,
LoRAs covering different layers or of different ranks recompiled the shared block graph each job until
torch.compile's limit failed the ninth.
"""

import pytest
import torch

from wan_i2v.worker.lora import MIN_BUCKET, Adapter, ExpertLora, LowRank, rank_bucket


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(8, 8)
        self.up = torch.nn.Linear(8, 12)
        self.down = torch.nn.Linear(12, 8)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.q(x))))


class Toy(torch.nn.Module):
    _repeated_blocks = ["Block"]  # as diffusers' WanTransformer3DModel names its compiled blocks

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def pair(rank: int, out_features: int, in_features: int, seed: int) -> LowRank:
    g = torch.Generator().manual_seed(seed)
    return LowRank(torch.randn(rank, in_features, generator=g), torch.randn(out_features, rank, generator=g), 0.5)


def test_rank_buckets_are_powers_of_two_from_the_minimum():
    assert [rank_bucket(r) for r in (1, 2, MIN_BUCKET, MIN_BUCKET + 1, 64, 65, 96, 128)] == [
        MIN_BUCKET,
        MIN_BUCKET,
        MIN_BUCKET,
        2 * MIN_BUCKET,
        64,
        128,
        128,
        128,
    ]


def test_settle_gives_every_block_linear_one_rank_and_leaves_the_output_as_it_was():
    toy = Toy()
    adapter = Adapter(toy)
    x = torch.randn(3, 8)
    plain = toy(x)
    lora = ExpertLora("one layer of one block, rank 3", {"blocks.0.q": pair(3, 8, 8, 1), "head": pair(5, 4, 8, 2)})
    other = ExpertLora("another rank on another layer", {"blocks.1.up": pair(20, 12, 8, 3)})
    adapter.attach([(lora, 1.0), (other, 0.7)])
    before = toy(x)
    assert not torch.allclose(before, plain)
    adapter.settle()
    slots = adapter._slots
    block_linears = [f"blocks.{b}.{n}" for b in (0, 1) for n in ("q", "up", "down")]
    for name in block_linears:  # the largest stacked rank (20) padded to its bucket, zeros where none was
        assert slots[name].down.shape == (32, toy.get_submodule(name).in_features)
        assert slots[name].up.shape == (toy.get_submodule(name).out_features, 32)
    assert torch.count_nonzero(slots["blocks.1.q"].up) == 0 and torch.count_nonzero(slots["blocks.0.q"].up) > 0
    assert slots["head"].down.shape == (5, 8)  # outside the compiled blocks: as attached
    torch.testing.assert_close(toy(x), before, rtol=1e-5, atol=1e-6)
    adapter.detach()
    assert not adapter.attached and torch.equal(toy(x), plain)


def test_a_full_delta_on_a_float_weight_is_patched_in_and_restored_exactly():
    toy = Toy()
    adapter = Adapter(toy)
    x = torch.randn(3, 8)
    weight = toy.blocks[1].q.weight.detach().clone()
    delta = torch.randn(8, 8) * 0.1
    adapter.attach([(ExpertLora("full delta", diffs={"blocks.1.q.weight": delta}), 0.5)])
    assert adapter.uniform and adapter._slots["blocks.1.q"].full is None  # no slot: the graph stays the same
    adapter.patch_params()
    torch.testing.assert_close(toy.blocks[1].q.weight, weight + 0.5 * delta)
    reference = Toy()
    with torch.no_grad():
        reference.blocks[1].q.weight += 0.5 * delta
    torch.testing.assert_close(toy(x), reference(x))
    adapter.detach()
    assert torch.equal(toy.blocks[1].q.weight, weight)


def test_a_full_delta_on_a_quantised_weight_stays_in_its_slot_and_the_job_is_marked_for_eager():
    pytest.importorskip("torchao")
    from wan_i2v.worker.quantize import quantize_expert

    toy = Toy()
    quantize_expert(toy, "int8")
    adapter = Adapter(toy)
    adapter.attach([(ExpertLora("full delta", diffs={"blocks.0.up.weight": torch.randn(12, 8)}), 1.0)])
    assert adapter._slots["blocks.0.up"].full is not None and not adapter.uniform
    adapter.detach()
    assert adapter.uniform and not adapter.attached
