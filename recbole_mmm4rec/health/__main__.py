"""``python -m recbole_mmm4rec.health CHECKPOINT [--against OTHER]``: per-component weight statistics of a saved
checkpoint, tensors that data never moved (CONSTANT, SHRUNK), and the change against a fresh initialisation or
another checkpoint. The per-epoch monitor is ``recbole_mmm4rec.health.HealthMonitor``."""

import argparse
import math
import sys
from collections import defaultdict

import torch

from recbole_mmm4rec import checkpoints
from recbole_mmm4rec.checkpoints import read_checkpoint
from recbole_mmm4rec.health import (CONSTANT_TOL, SHRUNK_STD, TINY, ZEROED_ABS, ZEROED_SHARE, _change_norms, _ratio,
                                    component)


class CheckpointError(Exception):
    """A file that is no readable checkpoint; the message is one line naming the file."""


def _model_name(state):
    config = state.get("config")
    return state.get("model", "MMM4Rec") if "encoder" in state else config["model"] if config is not None else "?"


def load_checkpoint(path):
    """-> (description, {name: float tensor}, state). RecBole's model file: names as in the model
    (``encoder.*``, ``items.*``); a pre-training checkpoint: ``encoder.*`` and ``items.<domain>.*``.
    Read as data (``checkpoints.read_checkpoint``): a checkpoint of any model, nothing built from its config."""
    try:
        checkpoint = read_checkpoint(path, any_model=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except checkpoints.CheckpointError as error:  # empty, truncated, not a torch file, refused objects, ...
        raise CheckpointError(str(error).splitlines()[0]) from None
    state = checkpoint.state
    if checkpoint.kind == checkpoints.RECBOLE_FORMAT:
        weights, description = dict(state["state_dict"]), f"RecBole model file of {_model_name(state)}"
    else:
        weights = {f"encoder.{k}": v for k, v in state["encoder"].items()}
        for domain, table in (state.get("item_tables") or {}).items():
            weights.update({f"items.{domain}.{k}": v for k, v in table.items()})
        description = f"pre-training checkpoint of {_model_name(state)}, datasets {state.get('datasets')}"
    weights = {k: v.float() for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()}
    if not weights:
        raise CheckpointError(f"{path}: the checkpoint holds no floating-point weights")
    return f"{description}, epoch {state.get('epoch')}", weights, state


def fresh_weights(state, weights):
    """({name: tensor} of a freshly initialised MMM4Rec encoder (seed 0) shaped like the checkpoint's, note)
    or (None, reason). Config: properties/model/MMM4Rec.yaml under the checkpoint's own settings."""
    import yaml

    from recbole_mmm4rec.data.dataset import MODALITIES
    from recbole_mmm4rec.models.mmm4rec import MMM4RecEncoder
    from recbole_mmm4rec.quick_start import PROPERTIES

    if _model_name(state) != "MMM4Rec":
        return None, f"none for {_model_name(state)} (only MMM4Rec's encoder can be built without its dataset)"
    try:
        config = yaml.safe_load((PROPERTIES / "model" / "MMM4Rec.yaml").read_text())
        own = state["model_config"] if "encoder" in state else getattr(state["config"], "final_config_dict", {})
        config.update({k: v for k, v in own.items() if v is not None})
        dims = state.get("feature_dims") or {m: weights[f"encoder.adapters.{m}.linear.weight"].shape[1]
                                             for m in MODALITIES}
        torch.manual_seed(0)
        encoder = MMM4RecEncoder(config, dims)
    except Exception as error:
        return None, f"could not build MMM4Rec's encoder ({type(error).__name__}: {error})"
    fresh = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    fresh = {k: v for k, v in fresh.items() if k in weights and v.shape == weights[k].shape}  # comparable ones only
    unstored = ", ".join(f"{k}: {config[k]}" for k in sorted(config) if k.startswith("time_") and k not in own)
    return fresh, ("MMM4RecEncoder (seed 0) with the checkpoint's settings over MMM4Rec.yaml's defaults"
                   + (f" (not in the checkpoint, from the yaml: {unstored})" if unstored else ""))


def _zeroed_share(t):
    return float((t.abs() < ZEROED_ABS).float().mean())


def tensor_flags(t, fresh=None):
    """["CONSTANT (= v)"]: all entries equal within CONSTANT_TOL; ["ZEROED (p %)"]: a share p >= ZEROED_SHARE of
    the entries below ZEROED_ABS, and the fresh tensor's were not (weight decay drove them to zero, README
    "A transfer study from one spec file"); ["SHRUNK"]: std < SHRUNK_STD (["SMALL"] if the fresh tensor's std
    was below SHRUNK_STD too: it never grew); [] otherwise."""
    if t.numel() < 2:
        return []
    fresh_std = float(fresh.std()) if fresh is not None else None
    if float(t.max() - t.min()) <= CONSTANT_TOL * max(1.0, float(t.abs().mean())):
        was = f"; fresh {float(fresh.mean()):.5g}" if fresh_std is not None and fresh_std <= CONSTANT_TOL else ""
        return [f"CONSTANT (= {float(t.mean()):.5g}{was})"]
    zeroed = _zeroed_share(t)
    if zeroed >= ZEROED_SHARE and (fresh is None or _zeroed_share(fresh) < ZEROED_SHARE):
        return [f"ZEROED ({zeroed:.0%})"]
    if float(t.std()) >= SHRUNK_STD:
        return []
    return ["SMALL"] if fresh_std is not None and fresh_std < SHRUNK_STD else ["SHRUNK"]


def _fmt(x):
    return "-" if x is None else f"{x:.2e}"


def report(weights, fresh):
    """The table of one checkpoint: per component (sorted) its norm against a fresh init, then its tensors."""
    fresh, groups, width = fresh or {}, defaultdict(list), max(map(len, weights))
    for name in weights:
        groups[component(name)].append(name)
    lines = [f"{'component':<18}{'tensors':>8}{'weights':>10}{'norm':>11}{'fresh norm':>12}{'ratio':>11}  flagged"]
    details, flagged, dead = [], [], []
    for label in sorted(groups):
        names = groups[label]
        now = math.sqrt(sum(float(weights[n].norm()) ** 2 for n in names))
        base = math.sqrt(sum(float(fresh[n].norm()) ** 2 for n in names)) if all(n in fresh for n in names) else None
        flags = {n: tensor_flags(weights[n], fresh.get(n)) for n in names}
        count = sum(bool(f) for f in flags.values())
        lines.append(f"{label:<18}{len(names):>8}{sum(weights[n].numel() for n in names):>10,}{_fmt(now):>11}"
                     f"{_fmt(base):>12}{_fmt(now / base if base else None):>11}  {count}/{len(names)}")
        details.append(f"[{label}]")
        for n in names:
            t, f0 = weights[n], fresh.get(n)
            stds = [float(x.std()) if x is not None and x.numel() > 1 else None for x in (t, f0)]
            details.append(f"  {n:<{width}} {str(tuple(t.shape)):>11}  norm {_fmt(float(t.norm()))}  "
                           f"std {_fmt(stds[0])}  fresh std {_fmt(stds[1])}  {' '.join(flags[n])}".rstrip())
        if count:
            kinds = "+".join(sorted({f.split()[0] for fs in flags.values() for f in fs}))
            flagged.append(f"{label} {count}/{len(names)} tensors {kinds}")
            dead += [label] * (count == len(names))
    return lines + [""] + details + ["", "flagged: " + ("; ".join(flagged) or "nothing"),
                                     "every tensor flagged (likely dead): " + (", ".join(dead) or "none")]


def compare(a, b):
    """Per component ||A - B|| / ||B|| over the tensors both hold with the same shape, and what does not match."""
    common = {n: b[n] for n in a if n in b and a[n].shape == b[n].shape}
    lines = [f"{'component':<18}{'tensors':>8}{'||A-B||/||B||':>15}"]
    for label, (change, base) in _change_norms(common, ((n, a[n]) for n in common)).items():
        tensors = sum(component(n) == label for n in common)
        lines.append(f"{label:<18}{tensors:>8}{_fmt(_ratio(change, base)):>15}"
                     + "  (absolute: ||B|| = 0)" * (base <= TINY))
    for what, names in (("only in A", [n for n in a if n not in b]), ("only in B", [n for n in b if n not in a]),
                        ("shapes differ", [n for n in a if n in b and a[n].shape != b[n].shape])):
        if names:
            lines.append(f"{what}: {len(names)} tensors: " + ", ".join(names[:10]) + " ..." * (len(names) > 10))
    return lines


def main(argv=None):
    """The command; returns the exit code (0, or 2 with a one-line error on a bad file)."""
    parser = argparse.ArgumentParser(prog="python -m recbole_mmm4rec.health", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="RecBole's saved model file or a --stage=pretrain checkpoint")
    parser.add_argument("--against", help="another checkpoint B: print per component ||A - B|| / ||B||")
    args = parser.parse_args(argv)
    try:
        description, weights, state = load_checkpoint(args.checkpoint)
        other = load_checkpoint(args.against) if args.against else None
    except CheckpointError as error:
        print(f"health: error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint: {args.checkpoint} ({description})")
    if other is not None:
        print(f"against:    {args.against} ({other[0]})\n")
        print("\n".join(compare(weights, other[1])))
        return 0
    fresh, note = fresh_weights(state, weights)
    print(f"fresh initialisation: {note}\nflags: CONSTANT = all entries equal within {CONSTANT_TOL:g} (no data "
          f"gradient reached it: only weight decay moved it); ZEROED (p) = a share p >= {ZEROED_SHARE:.0%} of the "
          f"entries below {ZEROED_ABS:g} (decayed to zero); SHRUNK = std < {SHRUNK_STD:g}; SMALL = std < "
          f"{SHRUNK_STD:g} and it started below that too\n")
    print("\n".join(report(weights, fresh)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
