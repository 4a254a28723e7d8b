"""Fine-tuning from a pre-trained encoder (DESIGN.md §6): read a ``--stage=pretrain`` checkpoint (or a RecBole
model file of the same model) as data and load its domain-independent weights into a new model."""

from logging import getLogger

from recbole.utils import set_color

from recbole_mmm4rec.checkpoints import RECBOLE_FORMAT, CheckpointError, WrongModel, read_checkpoint


def _layer_index(key):
    """The layer number of an encoder state-dict key ``layers.<i>.…``, -1 for keys outside the layers."""
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit() else -1


_WHAT_TRANSFERS = ("--pretrained takes a --stage=pretrain checkpoint of {name} "
                   "or a checkpoint of {name} saved by run_recbole.py")


def read_pretrained(path, name):
    """The encoder of model ``name`` in checkpoint ``path``, read as data (``checkpoints.read_checkpoint``):
    a pre-training state dict, or one made from a RecBole model file of ``name`` (its ``encoder.*`` weights).
    Raises FileNotFoundError or ValueError, the message naming the file (and the model it holds)."""
    try:
        checkpoint = read_checkpoint(path, expect_model=name)
    except FileNotFoundError:
        raise FileNotFoundError(f"pretrained: no checkpoint at {path}") from None
    except WrongModel as error:
        raise ValueError(f"pretrained: {_wrong_encoder(path, name, error.found, error.kind)}") from None
    except CheckpointError as error:
        raise ValueError(f"pretrained: {error}") from None
    state = checkpoint.state
    if checkpoint.kind == RECBOLE_FORMAT:
        # a RecBole checkpoint of the model trained on another domain: its encoder transfers the same way
        encoder = {k[len("encoder."):]: v for k, v in state["state_dict"].items() if k.startswith("encoder.")}
        state = {"model": name, "encoder": encoder, "datasets": [state["config"]["dataset"]],
                 "epoch": state.get("epoch", 0) + 1}
    if not state["encoder"]:
        raise ValueError(f"pretrained: {path} holds no {name} encoder weights ({_WHAT_TRANSFERS.format(name=name)})")
    return state


def _wrong_encoder(path, name, found, kind):
    """The message for a checkpoint ``path`` of model ``found`` (format ``kind``) given to model ``name``."""
    if kind == RECBOLE_FORMAT:
        return f"{path} is a {found} checkpoint (a {kind}); this model is {name}: {_WHAT_TRANSFERS.format(name=name)}"
    return f"{path} holds an encoder of {found}; this model is {name} ({_WHAT_TRANSFERS.format(name=name)})"


def load_pretrained(model, path, logger=None):
    """Fine-tuning start (DESIGN.md §6): load a pre-trained encoder into ``model`` (a pre-trainable model,
    see ``Pretrainer``: MMM4Rec or UniSRec).

    ``path``: a ``--stage=pretrain`` checkpoint (``best.pth``/``last.pth``) or a checkpoint of the same
    model that ``run_recbole.py`` saved after training on another domain.

    Every domain-independent weight (``model.encoder``: adapters, layers, norms) comes from the checkpoint;
    an encoder with more layers than ``model`` gives its first ``num_layers`` layers (the paper pre-trains
    2 layers and fine-tunes 1; which layers were left out is logged), one with fewer layers is refused;
    the item tables (``model.items``: features, item ID / item-modality embeddings) stay the new domain's
    own, freshly initialised. A checkpoint of another model, or whose tensors do not fit, fails with the
    model's name or the names and shapes of those tensors.
    """
    logger = logger or getLogger()
    name = type(model).__name__
    state = read_pretrained(path, name)
    expected, given = model.encoder.state_dict(), dict(state["encoder"])
    depth = 1 + max((_layer_index(k) for k in expected), default=-1)  # MMM4Rec's num_layers (0: no such layers)
    left_out = [k for k in given if depth and _layer_index(k) >= depth]
    deeper = sorted({_layer_index(k) for k in left_out})
    for key in left_out:
        del given[key]  # the paper pre-trains 2 layers and fine-tunes 1: the first num_layers layers transfer
    problems = [f"{k}: missing from the checkpoint" for k in expected if k not in given]
    problems += [f"{k}: in the checkpoint but not in this model" for k in given if k not in expected]
    problems += [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in given and given[k].shape != v.shape
    ]
    if problems:
        raise ValueError(
            f"pretrained: {path} does not fit this model (pre-trained with {state.get('model_config')}):\n  "
            + "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        )
    model.encoder.load_state_dict(given)
    if deeper:
        logger.info(set_color("pretrained", "blue") + f": the checkpoint's encoder has {deeper[-1] + 1} layers; "
                    f"layers 0-{depth - 1} loaded, layers {', '.join(map(str, deeper))} "
                    f"left out (this model has num_layers = {depth})")
    fresh = [key for key, _ in model.items.named_parameters()]
    fixed = [key for key, p in model.encoder.named_parameters() if not p.requires_grad]
    logger.info(
        set_color("pretrained", "blue") + f": {len(given)} encoder tensors loaded from {path} "
        f"(pre-trained on {state.get('datasets')} for {state.get('epoch')} epochs); "
        f"fresh, domain-specific: {', '.join('items.' + k for k in fresh) or 'none (without-ID variant)'}"
        + (f"; kept fixed while fine-tuning: {len(fixed)} encoder tensors" if fixed else "")
    )
