"""Config checks shared by every model: a bad value fails before any data is loaded, naming the key.

Each model lists its keys with these helpers (``MMM4Rec.check_config``, ...); ``quick_start.build_config``
calls the model's check and ``check_training_config`` right after the yaml files and the command line are
read, so ``--hidden_size=0`` or ``--temperature=abc`` is one line naming the key instead of a
``ZeroDivisionError`` in a constructor or the first training batch.
"""

from numbers import Real


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def require_positive_int(config, name, *keys):
    """Each of ``keys`` is an integer >= 1."""
    for key in keys:
        if not _is_int(config[key]) or config[key] < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {config[key]!r}")


def require_positive_number(config, name, *keys):
    """Each of ``keys`` is a number > 0 (int or float, not a string)."""
    for key in keys:
        value = config[key]
        if not isinstance(value, Real) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name}: {key} must be a number > 0, got {value!r}")


def require_probability(config, name, *keys):
    """Each of ``keys`` is a dropout probability in [0, 1)."""
    for key in keys:
        value = config[key]
        if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value < 1:
            raise ValueError(f"{name}: {key} must be a number in [0, 1), got {value!r}")


def require_bool(config, name, *keys):
    for key in keys:
        if not isinstance(config[key], bool):
            raise ValueError(f"{name}: {key} must be True or False, got {config[key]!r}")


def require_choice(config, name, key, choices):
    if config[key] not in choices:
        raise ValueError(f"{name}: {key} must be one of {', '.join(map(str, choices))}, got {config[key]!r}")


def require_divides(config, name, divisor_key, total, what):
    """``config[divisor_key]`` divides ``total`` (described by ``what``, e.g. 'hidden_size = 64')."""
    if total % config[divisor_key]:
        raise ValueError(f"{name}: {divisor_key} = {config[divisor_key]} must divide {what}")


# Model sizes that RecBole's built-in models (SASRec, GRU4Rec, BERT4Rec, ...) read, checked where set.
SIZE_KEYS = ("hidden_size", "embedding_size", "inner_size", "n_layers", "n_heads", "num_layers")


def check_tissd_config(config, name):
    """The keys of the time-aware SSD block (``layers/tissd.py``: heads, groups, chunks, the time path),
    shared by MMM4Rec and TiM4Rec; ``hidden_size`` and ``expand`` are checked before."""
    from recbole_mmm4rec.layers.time import TIME_PATHS, TIME_SCALE_ACTIVATIONS

    require_positive_int(config, name, "head_dim", "n_groups", "chunk_size", "d_state", "d_conv")
    require_choice(config, name, "ssd_mode", ("auto", "quadratic", "chunked"))
    require_probability(config, name, "time_dropout_prob")
    require_bool(config, name, "time_aware", "p2p_residual")
    require_choice(config, name, "time_path", TIME_PATHS)
    require_choice(config, name, "time_scale_activation", TIME_SCALE_ACTIVATIONS)
    d_inner = config["hidden_size"] * config["expand"]
    require_divides(config, name, "head_dim", d_inner, f"hidden_size * expand = {d_inner}")
    n_heads = d_inner // config["head_dim"]
    require_divides(config, name, "n_groups", n_heads,
                    f"the number of heads hidden_size * expand / head_dim = {n_heads}")


def check_training_config(config):
    """The training and evaluation keys every model reads (ours and RecBole's), and the size keys set."""
    name = config["model"]
    require_positive_int(config, name, *(key for key in SIZE_KEYS if config[key] is not None))
    require_positive_int(config, name, "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH",
                         "accumulation_steps")
    if not _is_int(config["epochs"]) or config["epochs"] < 0:
        raise ValueError(f"{name}: epochs must be an integer >= 0 (0: evaluate without training), "
                         f"got {config['epochs']!r}")
    require_positive_number(config, name, "learning_rate", "ddp_timeout")
    require_bool(config, name, "build_text_features")
    if not _is_int(config["stopping_step"]) or config["stopping_step"] < 0:
        raise ValueError(f"{name}: stopping_step must be an integer >= 0, got {config['stopping_step']!r}")
    weight_decay = config["weight_decay"]
    if not isinstance(weight_decay, Real) or isinstance(weight_decay, bool) or weight_decay < 0:
        raise ValueError(f"{name}: weight_decay must be a number >= 0, got {weight_decay!r}")
