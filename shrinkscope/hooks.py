"""The objects ``watch`` puts on a user's modules: forward hooks and per-instance method wrappers.

Why they are objects rather than closures: training code copies and pickles models. ``copy.deepcopy``
(an EMA copy) and ``torch.save(model)`` must give the copy inert hooks, never the monitor's (a copy's forwards
must not be counted by the original monitor, and the monitor's open JSONL file must not be copied or
pickled); every hook also checks that it was called by the module it was put on (a shallow copy shares the
hook dict). A family that quantizes outside ``forward`` (``Family.hook_method``) gets a per-instance wrapper
of that method, which returns the library's own return value untouched and is restored on ``remove()``; every
copy of the module (deep, shallow or unpickled) gets the plain method, bound to itself (``_UntappedState``),
and so does every ``nn.DataParallel`` replica (``_UntappedReplica``).
"""
from __future__ import annotations

import copy
import logging
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["Hook", "hook_method"]

logger = logging.getLogger("shrinkscope")


class _Inert:
    """What a copied or unpickled model gets in place of a monitor's hook: does nothing."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        pass


_GRAPH_TASK_ID = getattr(torch._C, "_current_graph_task_id", None)  # private, present since torch 1.13


def _in_backward() -> bool:
    """True while autograd runs a backward pass: a forward seen then is gradient checkpointing recomputing
    one already counted (``torch.utils.checkpoint``; the reentrant variant re-runs the whole forward)."""
    return _GRAPH_TASK_ID is not None and _GRAPH_TASK_ID() != -1


def _compiler_disable(fn: Callable[..., Any]) -> Callable[..., Any]:
    # torch.compile would trace the hook (and a report it runs) into the user's graph: graph breaks, one
    # recompilation per report shape, dynamo warnings; run it eagerly between the compiled parts instead
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


_WARNED_REPLICAS: weakref.WeakSet = weakref.WeakSet()  # watched modules whose DataParallel replicas were reported


class Hook:
    """A monitor's forward hook: runs only for the module it was put on, with inference mode off, never
    during a backward pass, and never traced by ``torch.compile``.

    ``copy.deepcopy`` and pickling turn it into ``_Inert`` so a model copy neither feeds the monitor nor
    drags the monitor (and its open files) along. ``nn.DataParallel`` replicas share the hook dict of the
    module they copy; they are not counted (their ids live on other GPUs and run in threads), and the first
    one met logs one warning pointing at DistributedDataParallel.
    """

    def __init__(self, fn: Callable[..., None], module: nn.Module):
        self.fn = fn
        self.owner = weakref.ref(module)

    def _call(self, mod: nn.Module, *args: Any) -> None:
        if self.owner() is not mod:  # a shallow copy or a DataParallel replica shares our hook dict
            owner = self.owner()
            if getattr(mod, "_is_replica", False) and owner is not None and owner not in _WARNED_REPLICAS:
                _WARNED_REPLICAS.add(owner)
                logger.warning("shrinkscope: %s runs as an nn.DataParallel replica, which is not monitored "
                               "(training is not affected); use DistributedDataParallel, which watch() "
                               "supports", type(mod).__name__)
            return
        if _in_backward():
            return
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                self.fn(mod, *args)
        else:
            self.fn(mod, *args)

    __call__ = _compiler_disable(_call)

    def __deepcopy__(self, memo: dict) -> _Inert:
        return _Inert()

    def __reduce__(self) -> tuple:
        return (_Inert, ())


class _MethodTap:
    """A per-instance wrapper of ``module.<name>`` that calls the class's method, then the hooks with
    ``(module, args, kwargs, output)``; the output is returned as the library made it.

    Put in the instance ``__dict__`` (an instance attribute shadows the class method). A deep copy or an
    unpickled copy gets the class method bound to the copy, so copies run exactly as before, unwatched.
    """

    def __init__(self, module: nn.Module, name: str):
        self.owner = weakref.ref(module)
        self.name = name
        self.func = getattr(type(module), name)
        self.hooks: list[Callable[..., None]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mod = self.owner()
        out = self.func(mod, *args, **kwargs)
        for h in list(self.hooks):
            try:
                h(mod, args, kwargs, out)
            except Exception as e:  # noqa: BLE001 - must never raise into training
                logger.warning("shrinkscope: a %s() hook failed (training is not affected): %r", self.name, e)
        return out

    def __deepcopy__(self, memo: dict) -> types.MethodType:
        mod = self.owner()
        twin = memo.get(id(mod)) if mod is not None else None
        return types.MethodType(self.func, twin if twin is not None else copy.deepcopy(mod, memo))

    def __reduce__(self) -> tuple:
        return (getattr, (self.owner(), self.name))  # unpickles to the class method bound to the copy


class _UntappedState:
    """An instance-level ``__getstate__`` of a tapped module: its state without the taps.

    ``copy.copy``, ``copy.deepcopy`` and pickling all build the copy from ``__getstate__``, which Python
    looks up on the instance first. Leaving the taps out gives every copy, shallow ones included, the
    class's plain methods bound to itself: a shallow copy runs unwatched on its own attributes instead
    of calling the original through a shared wrapper.
    """

    def __init__(self, module: nn.Module):
        self.owner = weakref.ref(module)

    def __call__(self) -> dict:
        mod = self.owner()
        state = type(mod).__getstate__(mod)
        return {k: v for k, v in state.items() if not isinstance(v, (_MethodTap, _UntappedState, _UntappedReplica))}


class _UntappedReplica:
    """An instance-level ``_replicate_for_data_parallel`` of a tapped module: the replica without the taps.

    ``nn.DataParallel`` builds its replicas from a shallow copy of ``__dict__`` (not ``__getstate__``), so
    without this every replica would share the original's ``_MethodTap`` and run the original's method, on
    the original's device and weights. Replicas get the class's plain methods instead and run unwatched.
    """

    def __init__(self, module: nn.Module):
        self.owner = weakref.ref(module)

    def __call__(self) -> nn.Module:
        mod = self.owner()
        replica = type(mod)._replicate_for_data_parallel(mod)
        for k, v in list(replica.__dict__.items()):
            if isinstance(v, (_MethodTap, _UntappedState, _UntappedReplica)):
                del replica.__dict__[k]
        return replica


_INSTANCE_GUARDS = ("__getstate__", "_replicate_for_data_parallel")


class _TapHandle:
    """``remove()`` takes one hook off a ``_MethodTap``; the last one restores the class method."""

    def __init__(self, tap: _MethodTap, hook: Callable[..., None]):
        self.tap, self.hook = tap, hook

    def remove(self) -> None:
        if self.hook in self.tap.hooks:
            self.tap.hooks.remove(self.hook)
        mod = self.tap.owner()
        if not self.tap.hooks and mod is not None and mod.__dict__.get(self.tap.name) is self.tap:
            del mod.__dict__[self.tap.name]
            if not any(isinstance(v, _MethodTap) for v in mod.__dict__.values()):
                for guard in _INSTANCE_GUARDS:
                    if isinstance(mod.__dict__.get(guard), (_UntappedState, _UntappedReplica)):
                        del mod.__dict__[guard]


def hook_method(module: nn.Module, method: str, hook: Callable[..., None]) -> Any:
    """Call ``hook(module, args, kwargs, output)`` after every call of ``module.<method>``; returns a handle."""
    if method == "forward":
        return module.register_forward_hook(hook, with_kwargs=True)
    tap = module.__dict__.get(method)
    if not isinstance(tap, _MethodTap):
        if method in module.__dict__:
            raise ValueError(f"watch: {type(module).__name__}.{method} is already replaced on the instance")
        tap = _MethodTap(module, method)
        module.__dict__[method] = tap
        if "__getstate__" not in module.__dict__:
            module.__dict__["__getstate__"] = _UntappedState(module)
        if "_replicate_for_data_parallel" not in module.__dict__:
            module.__dict__["_replicate_for_data_parallel"] = _UntappedReplica(module)
    tap.hooks.append(hook)
    return _TapHandle(tap, hook)
