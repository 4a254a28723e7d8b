"""Cost of subnormal weights on the CPU, and what ``flush_denormals`` (called when recbole_mmm4rec is imported)
saves: forward and backward passes, on a batch of 1024 x 20 positions, of one FFN whose weights coupled L2
decay drove to ~1e-40: ``benchmarks/data/subnormal_ffn.pt`` is ``layers.0.fused_ffn`` of reports/transfer.yaml's
MMM4Rec-noid encoder after 6 of its 10 pre-training epochs (its last.pth, which is not committed). Each variant
runs in a fresh process (the setting must precede torch's thread pool), interleaved A/B over rounds.

    python benchmarks/subnormal_weights.py [FFN_WEIGHTS] [--rounds 5]

Prints ms per step of each variant per round and the ratio (median, min) of flush off / on."""

import argparse
import statistics
import subprocess
import sys

DEFAULT = "benchmarks/data/subnormal_ffn.pt"

CHILD = """
import sys, time, torch
torch.set_flush_denormal(sys.argv[2] == "on")  # before the first parallel op starts torch's threads
ffn = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Dropout(0.4), torch.nn.Linear(64, 64))
ffn.load_state_dict(torch.load(sys.argv[1], map_location="cpu"))
tiny = torch.finfo(torch.float32).tiny
weights = torch.cat([p.detach().flatten() for p in ffn.parameters()])
subnormal = float(((weights != 0) & (weights.abs() < tiny)).float().mean())
x = torch.randn(1024 * 20, 64)  # one batch: 1024 sequences of 20 items

def step():  # no optimiser step: one would move the weights out of the subnormal range at once
    ffn.zero_grad()
    ffn(x).sum().backward()

for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(20):
    step()
print((time.perf_counter() - start) / 20 * 1e3, subnormal)
"""


def run(weights, flush):
    out = subprocess.run([sys.executable, "-c", CHILD, weights, flush], capture_output=True, text=True, check=True)
    ms, share = map(float, out.stdout.split())
    return ms, share


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="?", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ratios = []
    for r in range(args.rounds):
        (off, share), (on, _) = run(args.weights, "off"), run(args.weights, "on")
        ratios.append(off / on)
        print(f"round {r}: flush off {off:.2f} ms/step, on {on:.2f} ms/step ({share:.0%} of the weights subnormal)")
    print(f"off / on: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x over {args.rounds} rounds")


if __name__ == "__main__":
    main()
