"""Flags whose meaning depends on the method: TLlib's ``--trade-off`` and flags a method would ignore.

- ``--trade-off`` is the weight of a method's regulariser, as in TLlib: ``co_tuning``'s soft-label
  loss (default 2.3, TLlib's), and for ``jtln`` the OT weight ``ot_weight`` (alpha). Giving both
  ``--trade-off`` and ``--ot-weight`` with different values to ``jtln`` is an error.
- A flag the chosen method would ignore is an error naming the method that uses it, when the user
  gave it on the command line (defaults and shared suite/YAML settings never trigger it):
  ``--trade-off`` with ``erm``/``joint``/``consecutive``, ``--source-stage`` with anything but
  ``jtln`` with source data.
- ``--trade-off`` with ``bss`` is TLlib's BSS weight ``bss_trade_off``.
- ``--with`` (``regularizers``) and the regularisers' knobs: :func:`apply_regularizer_flags`.

:func:`apply_method_flags` is one stage (rules) of the settings pass, :func:`tllib_jtln.settings.resolve_settings`.
"""
from __future__ import annotations

from .errors import UserError

#: methods with a regulariser weighted by --trade-off
TRADE_OFF_METHODS = ("co_tuning", "jtln", "bss")


def has_source_data(cfg) -> bool:
    """True when the run has source images: ``--source-data`` (not ``none``), or the embedded task's own."""
    if cfg.source_data is not None:
        return str(cfg.source_data).lower() != "none"
    from .data.task import is_embedded

    return is_embedded(cfg)


def apply_method_flags(cfg, explicit: set, command_line: set):
    """Map ``--trade-off`` onto ``jtln``'s OT weight and refuse flags the method ignores.

    Args:
        cfg: the resolved :class:`~tllib_jtln.config.Config` (changed in place and returned).
        explicit: field names set by ``--config`` or on the command line.
        command_line: field names given on the command line.
    """
    method = cfg.method
    if method == "jtln" and "trade_off" in explicit:
        if "ot_weight" in explicit and cfg.ot_weight != cfg.trade_off:
            raise UserError(f"--trade-off {cfg.trade_off} and --ot-weight {cfg.ot_weight} both set jtln's OT "
                            f"weight; give one of them")
        cfg.ot_weight = cfg.trade_off
    if method == "bss" and "trade_off" in explicit:
        if "bss_trade_off" in explicit and cfg.bss_trade_off != cfg.trade_off:
            raise UserError(f"--trade-off {cfg.trade_off} and --bss-trade-off {cfg.bss_trade_off} both set bss's "
                            f"weight; give one of them")
        cfg.bss_trade_off = cfg.trade_off
    if "trade_off" in command_line and method not in TRADE_OFF_METHODS:
        raise UserError(f"--trade-off weighs the regulariser of co_tuning, jtln or bss; --method {method} has none "
                        f"(drop --trade-off, or use --method co_tuning/jtln/bss)")
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
