"""Prefix caching: time of an interchange forward+backward pass with and without the cache.

A 6-layer GPT-2 (d_model 128, 16 tokens, built from a config) is intervened on at the
residual stream of layer 0, a middle layer and the last layer, with a trainable
low-rank subspace as in DAS training. Uncached, every step runs the whole network on
the base (the source activations are precomputed in both cases). Cached, the base
activations at the intervened layer are computed once and each step runs only the
layers after it. The expected speed-up is roughly layers / layers-after-the-cut.

    python benchmarks/prefix_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config

from abstraction.alignment.prefix_cache import PrefixCache, cut_layer, run_suffix
from abstraction.interventions import LowRankPatch
from abstraction.locations import Location, resolve
from abstraction.network import Batch, Network, readout_logits
from abstraction.runtime import Applied, collect, hooked, site_edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    layers, width, length, rows, batch = 6, 128, 16, 512, 64
    steps = 10 if args.quick else 40
    config = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=4,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    network = Network.from_config(config, seed=0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (rows, length), generator=gen)
    data = Batch({"input_ids": ids}, readout=torch.full((rows,), length - 1))
    source = Batch(
        {"input_ids": torch.randint(0, 64, (rows, length), generator=gen)},
        readout=torch.full((rows,), length - 1),
    )
    print(
        f"GPT-2: {layers} layers, d_model {width}, {length} tokens, batch {batch}, "
        f"{steps} forward+backward steps per setting"
    )
    print(
        f"{'layer':>6s}{'mode':>7s}{'uncached s':>12s}{'cached s':>10s}{'speed-up':>10s}"
        f"{'expected':>10s}{'cache MiB':>11s}"
    )
    for layer in (0, layers // 2, layers - 1):
        measure(network, data, source, layer, layers, width, batch, rows, steps, gen)
    print(
        "cached times include filling the cache once. expected: eval (L + h) / (s + h); "
        "train (L + h + 2(s + h)) / 3(s + h), with L layers, s layers after the cut and the "
        "head h = 0.5 layer"
    )


def measure(
    network: Network,
    data: Batch,
    source: Batch,
    layer: int,
    layers: int,
    width: int,
    batch: int,
    rows: int,
    steps: int,
    gen: torch.Generator,
) -> None:
    """Time training and evaluation steps at one layer, with and without the cache."""
    loc = Location(layer=layer, position=-1)
    site = resolve(network, loc)
    sources = collect(network, source, [loc])[0]
    basis = torch.nn.Parameter(torch.linalg.qr(torch.randn(width, 4, generator=gen))[0])

    def apply(act: torch.Tensor, rows: slice, chunk: Batch) -> torch.Tensor:
        applied = [Applied(LowRankPatch(loc, basis), sources[rows])]
        return site_edit(site, chunk, applied)(act)

    def uncached(rows: slice) -> torch.Tensor:
        chunk = data.select(rows)
        with hooked(network, [(site, lambda act: apply(act, rows, chunk))]):
            return readout_logits(network.call(chunk.inputs), chunk)

    start = time.perf_counter()
    cache = PrefixCache(network, data, cut_layer(site) or 0)
    prepare = time.perf_counter() - start

    def cached(rows: slice) -> torch.Tensor:
        chunk = data.select(rows)
        hidden = apply(cache.get(rows), rows, chunk)
        return run_suffix(network, chunk, cache.cut, hidden, tuple_len=cache.tuple_len)

    # the two paths compute the same logits
    assert torch.allclose(uncached(slice(0, batch)), cached(slice(0, batch)), atol=1e-5)
    after = layers - layer - 1
    head = 0.5  # the final layer norm and unembedding cost about half a block here
    for mode in ("train", "eval"):
        timings = {}
        for name, fn in (("uncached", uncached), ("cached", cached)):
            start = time.perf_counter()
            for step in range(steps):
                s = (step * batch) % rows
                if mode == "train":
                    fn(slice(s, s + batch)).sum().backward()
                else:
                    with torch.no_grad():
                        fn(slice(s, s + batch))
            timings[name] = time.perf_counter() - start
        timings["cached"] += prepare
        # forward runs every layer uncached, only the suffix cached; backward (about
        # twice a forward) only ever runs through the suffix
        if mode == "train":
            expected = (layers + head + 2 * (after + head)) / (3 * (after + head))
        else:
            expected = (layers + head) / (after + head)
        print(
            f"{layer:6d}{mode:>7s}{timings['uncached']:12.2f}{timings['cached']:10.2f}"
            f"{timings['uncached'] / timings['cached']:9.1f}x{expected:9.1f}x"
            f"{cache.nbytes / 2**20:11.1f}"
        )
    cache.close()


if __name__ == "__main__":
    main()
