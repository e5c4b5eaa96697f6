"""Flags whose meaning depends on the method: TLlib's ``--trade-off`` and flags a method would ignore.

- ``--trade-off`` is the weight of a method's regulariser, as in TLlib: the ``Config`` field the
  method names in ``Method.trade_off_field`` (``co_tuning``: ``trade_off`` itself, default 2.3, TLlib's;
  ``jtln``: the OT weight ``ot_weight``, alpha; ``bss``: ``bss_trade_off``; ``lwf``: ``lwf_trade_off``;
  ``bi_tuning``: ``bi_tuning_trade_off``). Giving both ``--trade-off`` and that field with
  different values is an error.
- A flag the chosen method would ignore is an error naming the method that uses it, when the user
  gave it on the command line (defaults and shared suite/YAML settings never trigger it):
  ``--trade-off`` with a method without a trade-off (``erm``, ``joint``, ``consecutive``, ...),
  ``--source-stage`` with anything but ``jtln`` with source data, a method's own knob
  (``Method.knobs``: ``--bi-tuning-k``, ...) with another method.
- ``--with`` (``regularizers``) and the regularisers' knobs: :func:`apply_regularizer_flags`.

:func:`apply_method_flags` is one stage (rules) of the settings pass, :func:`tllib_jtln.settings.resolve_settings`.
"""
from __future__ import annotations

from .errors import UserError


def has_source_data(cfg) -> bool:
    """True when the run has source images: ``--source-data`` (not ``none``), or the embedded task's own."""
    if cfg.source_data is not None:
        return str(cfg.source_data).lower() != "none"
    from .data.task import is_embedded

    return is_embedded(cfg)


def apply_method_flags(cfg, explicit: set, command_line: set):
    """Map ``--trade-off`` onto the method's ``trade_off_field`` and refuse flags the method ignores.

    Args:
        cfg: the resolved :class:`~tllib_jtln.config.Config` (changed in place and returned).
        explicit: field names set by ``--config`` or on the command line.
        command_line: field names given on the command line.
    """
    from .methods import METHODS

    method = cfg.method
    field = METHODS.get(method).trade_off_field
    if field not in (None, "trade_off") and "trade_off" in explicit:
        if field in explicit and getattr(cfg, field) != cfg.trade_off:
            raise UserError(f"--trade-off {cfg.trade_off} and --{field.replace('_', '-')} {getattr(cfg, field)} both "
                            f"set {method}'s weight; give one of them")
        setattr(cfg, field, cfg.trade_off)
    if "trade_off" in command_line and field is None:
        weighed = ", ".join(name for name in METHODS.names() if METHODS.get(name).trade_off_field)
        raise UserError(f"--trade-off weighs the regulariser of {weighed}; --method {method} has none "
                        f"(drop --trade-off, or use one of those methods)")
    for name in METHODS.names():
        given = sorted(set(METHODS.get(name).knobs) & command_line) if name != method else []
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is a knob of --method {name}, not of --method {method}; "
                            f"drop it, or use --method {name}")
    if "source_stage" in command_line and cfg.source_stage and (method != "jtln" or not has_source_data(cfg)):
        where = "without source data" if method == "jtln" else f"--method {method}"
        raise UserError(f"--source-stage is a jtln switch that needs source images; {where} has no source stage "
                        f"(drop it, or use --method jtln with source data)")
    return apply_regularizer_flags(cfg, explicit, command_line)


def apply_regularizer_flags(cfg, explicit: set, command_line: set):
    """Refuse a ``--with`` list the method does not take (unknown, repeated or clashing names
    included) and a regulariser's knob (``--bss-k``, ``--trade-off-backbone``, ...) given on the
    command line for a run without that regulariser; one line each. Returns ``cfg``."""
    from .methods import METHODS, REGULARIZERS
    from .methods.regularizer import check_combination

    method = METHODS.get(cfg.method)
    check_combination(cfg.method, method.takes_regularizers, method.built_in, list(cfg.regularizers))
    in_run = {*method.built_in, *cfg.regularizers}
    read = {knob for name in in_run for knob in REGULARIZERS.get(name).knobs}
    for name in REGULARIZERS.names():
        for knob in REGULARIZERS.get(name).knobs:
            if knob in command_line and knob not in read:
                raise UserError(f"--{knob.replace('_', '-')} is a knob of the {name} regulariser, which this run "
                                f"does not have (add --with {name}, or use --method {name})")
    return cfg
